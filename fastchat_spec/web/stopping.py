"""Stopping the web UI and the launcher on Ctrl-C, SIGTERM or SIGHUP, whatever the process inherited.

Two things made Ctrl-C unreliable (issue #16):

* A process started in the background by a non-interactive shell (a CI
  script, ``cmd &``) inherits SIGINT as *ignored*, and Python then never
  raises KeyboardInterrupt: ``kill -INT`` did nothing at all. So the handler
  is installed explicitly, for SIGINT too.
* Gradio runs handlers in non-daemon worker threads; one still blocked on an
  abandoned stream can keep the interpreter from exiting after everything was
  stopped. ``exit_after`` ends the process once ``main`` has returned.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived. Raised in the main thread wherever it is (a startup wait, a request, the
    serving loop); a KeyboardInterrupt, so code that cleans up on Ctrl-C does so for SIGTERM too."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


def stop_on_signals() -> None:
    """Raise ``StopRequested`` on the first stop signal; from then on, ignore them (with a note)."""
    def on_signal(signum, frame):
        ignore_stop_signals()
        raise StopRequested(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


def ignore_stop_signals() -> None:
    """For the clean-up: a second Ctrl-C raising again would abort it halfway and leave servers
    running. The clean-up is bounded anyway (every wait in it has a timeout)."""
    def on_repeat(signum, frame):
        # os.write, not print: the main thread may be inside print, and print is not reentrant.
        note = f"{signal.Signals(signum).name} received: already stopping (this takes a few seconds)\n"
        os.write(sys.stderr.fileno(), note.encode())

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_repeat)


def wait_for_stop() -> None:
    """Block the main thread until a stop signal raises ``StopRequested``."""
    while True:
        time.sleep(3600)


def exit_after(main: Callable[[], None]) -> None:
    """Run ``main`` and end the process with its exit status, without waiting for leftover library threads."""
    try:
        main()
        code = 0
    except KeyboardInterrupt:  # a stop signal before ``main`` could handle it: a requested stop, not a crash
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - report anything, then exit, as the interpreter would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
