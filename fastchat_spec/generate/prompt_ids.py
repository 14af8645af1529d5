"""A prompt's token ids, tokenized once for FastChat's count and the answer that follows it.

FastChat's API server asks the worker to count a prompt's tokens
(``/count_token``) and then, a moment later, to answer that same prompt; a
slow (SentencePiece) tokenizer spends a few hundred microseconds per prompt,
under the GIL the engine loop shares. The ids of the last ``KEPT`` prompts
per tokenizer are kept, so the second tokenization is a look-up.
"""
from __future__ import annotations

import collections
import threading
import weakref

KEPT = 64  # prompts remembered per tokenizer
LONGEST = 65_536  # characters; a longer prompt is tokenized every time (its ids would be megabytes)

_kept: "weakref.WeakKeyDictionary[object, collections.OrderedDict[str, tuple[int, ...]]]" = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """``tokenizer(prompt).input_ids``, from the kept ids when this prompt was tokenized lately."""
    if not isinstance(prompt, str) or len(prompt) > LONGEST:
        return list(tokenizer(prompt).input_ids)
    try:
        with _lock:
            recent = _kept.setdefault(tokenizer, collections.OrderedDict())
            ids = recent.get(prompt)
            if ids is not None:
                recent.move_to_end(prompt)
                return list(ids)
    except TypeError:  # a tokenizer that cannot be weakly referenced: nothing is kept
        return list(tokenizer(prompt).input_ids)
    ids = tuple(tokenizer(prompt).input_ids)  # outside the lock: other requests go on meanwhile
    with _lock:
        recent[prompt] = ids
        while len(recent) > KEPT:
            recent.popitem(last=False)
    return list(ids)
