"""Why does one batched speculative step of 16 rows cost more than a step of 1 row? Time it, then profile it.

Usage (from the repository root; on the lent GPU after `source scripts/device_setup.sh`, which puts this
checkout on PYTHONPATH; elsewhere prefix PYTHONPATH=$PWD):
  python scripts/step_profile.py [CKPT] --out step_profile.json
  ROWS=1,4 python scripts/step_profile.py --device cpu --out /tmp/sp.json     # smoke test without a GPU

CKPT (default: the bundled fastchat_spec/models/medusa-vicuna-nano) is loaded through FastChat's
load_model and served by the engine loop the worker builds (generate/loop.py: engine_for, then warm_up,
which captures every batched step shape as a CUDA graph). Slots 0..R-1 (R: the largest row count) are
prefilled with a real prompt prefix of --cached tokens by the loop's own slot prefill. What it prints:

  {"section": "setup", ...}    the device, versions, slots, the tree's nodes per row, and the length bucket
      the loop picks for --cached tokens (every step below attends to that many positions).
  {"section": "replay", ...}   one line per row count in ROWS (default 1,2,4,8,16): the step over that many
      rows as the loop runs it. "ms" is the median (with min and p90) of --replays replays of its CUDA graph,
      each timed by CUDA events around the replay alone; "graphed": false means the loop had no graph for
      that shape and ran it eagerly. On CPU: perf_counter around an eager step.
  {"section": "profile", ...}  for the smallest and the largest row count, the same step run eagerly (a fresh
      BatchStep, no graph) --profile-steps times under torch.profiler. Per step: "kernels" device activities
      (kernels, memcpys, memsets), "device_ms" their summed device time, "eager_wall_ms" the host's wall time
      of an eager step (measured outside the profiler), "graph_ms" the replay time above, and
      "graph_minus_device_ms" what the graph costs beyond its kernels (gaps between kernels inside the
      graph, or other kernel choices than the eager run's). On CPU, "kernels" are aten op calls (nested
      ones included) and "device_ms" their summed self CPU time.
  {"section": "ratio", ...}    the largest over the smallest row count: graph replay, device time, eager
      wall time and kernels per step (the ~1.7x in question is "graph").
  Then, per profiled row count, a table of the top 25 device kernels by total time (calls, total us,
  us per step), and one table "growth" of device us per step by the aten op that launched the kernels,
  at the smallest and the largest row count: the ops at its top are what grows with rows (attention under
  the 4D tree mask, logits and argmax over every node, the commit's gathers, the Medusa heads, ...).

A step advances each row's cache by its accepted path, so before every step the rows are put back at
their prompt length (SlotState.starts): a few hundred steps never run past the length bucket. That rewind
is a copy outside the timed window; in the profile it is a host-to-device memcpy, left out of every sum.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

DEFAULT_ROWS = "1,2,4,8,16"
TOP_KERNELS = 25
TOP_GROWTH = 20
REWIND = "step_profile.rewind"  # profiler range around the rewind, whose ops are left out of the sums
# The rewind's copy from host memory: the step itself has none (it is captured as a CUDA graph, where
# pageable host copies are not allowed), so device activities of this name are the rewind's.
REWIND_ACTIVITY = "Memcpy HtoD"
FILLER = ("I am planning a two-week trip through Japan in the spring with my parents, who are in their "
          "seventies and do not walk long distances. We land in Tokyo and fly home from Osaka. Please suggest "
          "a day-by-day itinerary with short train rides, quiet hotels near the stations, places to see the "
          "cherry blossoms without big crowds, restaurants that can handle a vegetarian diet, and what to book "
          "in advance. Explain how the rail passes work and whether they are worth it for this route. ")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a speculative checkpoint with a batched device step (Medusa, Hydra, ...); "
                        "default: the bundled medusa-vicuna-nano")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (graphs, CUDA events, kernel profile) or cpu (a smoke test: eager, perf_counter)")
    p.add_argument("--rows", default=os.environ.get("ROWS", DEFAULT_ROWS),
                   help="row counts to time, comma-separated powers of two (env ROWS; default %(default)s); "
                        "the smallest and the largest are also profiled")
    p.add_argument("--cached", type=int, default=300,
                   help="prompt tokens cached per row; picks the step's length bucket (default %(default)s)")
    p.add_argument("--replays", type=int, default=None,
                   help="timed steps per row count (default 200 on cuda, 20 on cpu)")
    p.add_argument("--profile-steps", type=int, default=20, help="eager steps under the profiler (default 20)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="weights dtype (default: FastChat's choice, float16 on cuda)")
    p.add_argument("--out", help="also write everything printed as one JSON file")
    return p.parse_args()


def parse_rows(text: str) -> list[int]:
    try:
        rows = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--rows / ROWS: expected comma-separated integers like {DEFAULT_ROWS}, got {text!r}")
    if not rows or rows[0] < 1:
        raise SystemExit(f"--rows / ROWS: row counts must be >= 1, got {text!r}")
    return rows


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def note(message: str) -> None:
    print(f"[step_profile] {message}", file=sys.stderr, flush=True)


# -- the engine loop, as the worker builds it ------------------------------------------------------------------
def load_engine(checkpoint: str, device: str, dtype: str | None, slots: int):
    """The model through FastChat's load_model, and its engine loop with at least ``slots`` slots."""
    import fastchat_spec

    fastchat_spec.register()
    from fastchat.model.model_adapter import load_model
    from fastchat.utils import get_context_length

    from fastchat_spec.generate import loop as engine_loop
    from fastchat_spec.spec_model import is_speculative

    model, tokenizer = load_model(checkpoint, device=device, dtype=getattr(torch, dtype) if dtype else None)
    if not is_speculative(model):
        raise SystemExit(f"{checkpoint}: FastChat loaded it as a plain model; pass a speculative checkpoint "
                         "(one with Medusa/Hydra/Chimera heads)")
    engine_loop.configure(slots=slots)  # as the worker's --limit-worker-concurrency; FASTCHAT_SPEC_MAX_BATCH wins
    loop = engine_loop.engine_for(model, get_context_length(model.config))
    if not loop.batched:
        raise SystemExit(f"{checkpoint}: method {loop.method!r} has no batched device step; nothing to profile")
    return model, tokenizer, loop


def prompt_ids(tokenizer, checkpoint: str, cached: int, row: int) -> list[int]:
    """The first ``cached`` ids of a long first turn in the model's template (a different opening per row)."""
    from fastchat_spec.conversation import conversation_template

    text = f"Question {row + 1}. {FILLER}"
    while True:
        conv = conversation_template(checkpoint)
        conv.append_message(conv.roles[0], text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer(conv.get_prompt()).input_ids
        if len(ids) >= cached:
            return ids[:cached]
        text += " " + FILLER


def occupy(loop, tokenizer, checkpoint: str, rows: int, cached: int) -> None:
    """Slots 0..rows-1 hold a prefilled prompt, as admission leaves them (without a request's ticket)."""
    for slot in range(rows):
        loop.occupy_slot(slot, prompt_ids(tokenizer, checkpoint, cached, slot))


class Rewind:
    """Puts rows 0..rows-1 back at their prompt length, so that repeated steps stay inside the length bucket."""

    def __init__(self, state, rows: int):
        self.starts = state.starts[:rows]  # a view: the graphs read the same storage
        self.on_device = self.starts.clone()
        self.on_host = self.starts.to("cpu", copy=True)  # copy: on CPU, .cpu() would alias the live tensor

    def queued(self) -> None:
        """A device-to-device copy queued before the next step (nothing waits for it)."""
        self.starts.copy_(self.on_device)

    def from_host(self) -> None:
        """A host-to-device copy: tells itself apart from the step's own device work in the profile."""
        self.starts.copy_(self.on_host)


# -- timing ---------------------------------------------------------------------------------------------------
def synchronizer(cuda: bool):
    return torch.cuda.synchronize if cuda else (lambda: None)


def event_times_ms(step, rewind: Rewind, n: int) -> list[float]:
    """CUDA-event time of each of ``n`` steps, the rewind queued outside each start/end pair."""
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in pairs:
        rewind.queued()
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def wall_times_ms(step, rewind: Rewind, n: int, sync) -> list[float]:
    """Host wall time of each of ``n`` steps, from launch to the device being done."""
    times = []
    for _ in range(n):
        rewind.from_host()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary_ms(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"ms": round(statistics.median(ordered), 4), "min_ms": round(ordered[0], 4),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 4)}


def time_replays(loop, count: int, length: int, rewind: Rewind, replays: int, cuda: bool) -> dict:
    """The loop's own step for rows 0..count-1 (its graph on CUDA), warmed up, then timed ``replays`` times."""
    step = loop._step_for(0, count, length)
    graphed = cuda and isinstance(getattr(step, "__self__", None), torch.cuda.CUDAGraph)
    wall_times_ms(step, rewind, 10, synchronizer(cuda))  # warm-up: the first runs allocate and pick kernels
    times = event_times_ms(step, rewind, replays) if cuda else wall_times_ms(step, rewind, replays, lambda: None)
    return {"section": "replay", "rows": count, "length": length, "nodes": loop._nodes_per_row(count),
            "graphed": graphed, "replays": replays, **summary_ms(times)}


# -- profile --------------------------------------------------------------------------------------------------
def under_rewind(event) -> bool:
    while event is not None:
        if event.name == REWIND:
            return True
        event = event.cpu_parent
    return False


def host_ops(events) -> list:
    """The step's own CPU-side op events (the rewind's and user ranges left out)."""
    from torch.autograd import DeviceType

    return [e for e in events if e.device_type == DeviceType.CPU and not e.is_async
            and not getattr(e, "is_user_annotation", False) and e.name != REWIND and not under_rewind(e)]


def device_activities(events) -> tuple[list, int]:
    """The step's device activities (kernels, memcpys, memsets), and how many rewind copies were left out."""
    from torch.autograd import DeviceType

    device = [e for e in events if e.device_type == DeviceType.CUDA
              and not getattr(e, "is_user_annotation", False) and e.name != REWIND]
    kept = [e for e in device if not e.name.startswith(REWIND_ACTIVITY)]
    return kept, len(device) - len(kept)


def table(totals: dict[str, list], steps: int, top: int) -> list[dict]:
    """name -> [calls, total us] as rows sorted by total time."""
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"name": name, "count": calls, "total_us": round(us, 1), "us_per_step": round(us / steps, 2)}
            for name, (calls, us) in ranked]


def add(totals: dict[str, list], name: str, us: float, calls: int = 1) -> None:
    entry = totals.setdefault(name, [0, 0.0])
    entry[0] += calls
    entry[1] += us


def kernel_totals(events, cuda: bool) -> tuple[dict, int]:
    """name -> [calls, total us] of device kernels (CUDA), or of aten ops by self CPU time (CPU)."""
    totals: dict[str, list] = {}
    if cuda:
        activities, left_out = device_activities(events)
        for e in activities:
            add(totals, e.name, e.time_range.elapsed_us())
        return totals, left_out
    for e in host_ops(events):
        add(totals, e.name, e.self_cpu_time_total)
    return totals, 0


def op_totals(events, cuda: bool) -> dict:
    """aten op -> [calls, device us of the kernels it launched] (CUDA), or [calls, self CPU us] (CPU)."""
    totals: dict[str, list] = {}
    for e in host_ops(events):
        us = sum(k.duration for k in e.kernels) if cuda else e.self_cpu_time_total
        if us > 0:
            add(totals, e.name, us)
    return totals


def profile_step(loop, count: int, length: int, rewind: Rewind, steps: int, cuda: bool,
                 graph_ms: float | None) -> dict:
    """A fresh eager step (no graph) for rows 0..count-1: its wall time, then ``steps`` of it under the profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function

    step = loop._batch_step(0, count, length).run
    sync = synchronizer(cuda)
    wall_times_ms(step, rewind, 3, sync)  # warm-up: the eager path's first runs allocate and pick kernels
    walls = wall_times_ms(step, rewind, steps, sync)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function(REWIND):
                rewind.from_host()
            step()
        sync()
    events = prof.events()
    kernels, left_out = kernel_totals(events, cuda)
    calls = sum(c for c, _ in kernels.values())
    device_us = sum(us for _, us in kernels.values())
    device_ms = device_us / steps / 1e3
    return {
        "section": "profile", "rows": count, "length": length, "steps": steps,
        "unit": "cuda kernel" if cuda else "cpu op (self time)",
        "kernels": round(calls / steps, 1), "device_ms": round(device_ms, 4),
        "eager_wall_ms": round(statistics.median(walls), 4),
        "graph_ms": graph_ms,
        "graph_minus_device_ms": None if graph_ms is None else round(graph_ms - device_ms, 4),
        "rewind_copies_left_out": left_out,
        "top_kernels": table(kernels, steps, TOP_KERNELS),
        "ops": table(op_totals(events, cuda), steps, 10**6),
    }


def ratios(small: dict, large: dict) -> dict:
    """How much the larger step costs over the smaller one: as a graph, in device time, in eager wall time."""
    def ratio(key):
        a, b = small[key], large[key]
        return round(b / a, 3) if a and b else None

    return {"section": "ratio", "rows": [small["rows"], large["rows"]], "graph": ratio("graph_ms"),
            "device": ratio("device_ms"), "eager_wall": ratio("eager_wall_ms"), "kernels": ratio("kernels")}


def growth(small: dict, large: dict) -> list[dict]:
    """Per aten op, device us per step at both row counts, sorted by how much it grows."""
    before = {o["name"]: o["us_per_step"] for o in small["ops"]}
    after = {o["name"]: o["us_per_step"] for o in large["ops"]}
    rows = []
    for name in set(before) | set(after):
        a, b = before.get(name, 0.0), after.get(name, 0.0)
        rows.append({"op": name, f"us_rows{small['rows']}": a, f"us_rows{large['rows']}": b,
                     "delta_us": round(b - a, 2), "ratio": round(b / a, 2) if a > 0 else None})
    return sorted(rows, key=lambda r: -r["delta_us"])


# -- report ---------------------------------------------------------------------------------------------------
def print_kernels(result: dict) -> None:
    print(f"\n# top {TOP_KERNELS} by total time ({result['unit']}), rows {result['rows']}, length "
          f"{result['length']}, {result['steps']} eager steps")
    print(f"{'calls':>7} {'total_us':>11} {'us/step':>9}  name")
    for k in result["top_kernels"]:
        print(f"{k['count']:>7} {k['total_us']:>11.1f} {k['us_per_step']:>9.2f}  {k['name'][:110]}")


def print_growth(rows: list[dict], small: int, large: int) -> None:
    print(f"\n# growth: device us per step by launching aten op, rows {small} -> {large} (top {TOP_GROWTH})")
    print(f"{'rows' + str(small):>10} {'rows' + str(large):>10} {'delta':>9} {'ratio':>7}  op")
    for r in rows[:TOP_GROWTH]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r[f'us_rows{small}']:>10.2f} {r[f'us_rows{large}']:>10.2f} {r['delta_us']:>9.2f} {ratio:>7}  "
              f"{r['op'][:80]}")


def setup_record(checkpoint: str, loop, cuda: bool, length: int, cached: int, warm_up_s: float) -> dict:
    import transformers

    return {"section": "setup", "checkpoint": checkpoint,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "method": loop.method,
            "dtype": str(loop.dtype).replace("torch.", ""), "slots": loop.slots, "capacity": loop.capacity,
            "graphs": loop.graphs, "nodes": loop.tree.num_nodes, "max_depth": loop.tree.max_depth,
            "cached": cached, "length": length, "warm_up_s": round(warm_up_s, 2)}


def main() -> None:
    args = parse_args()
    rows = parse_rows(args.rows)
    if (args.replays is not None and args.replays < 1) or args.profile_steps < 1 or args.cached < 1:
        raise SystemExit("--replays, --profile-steps and --cached must be >= 1")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; run on the GPU or pass --device cpu")
    import fastchat_spec

    checkpoint = args.checkpoint or fastchat_spec.default_model_path()
    replays = args.replays or (200 if cuda else 20)
    t0 = time.perf_counter()
    # ``_model`` is kept, unused: the loop holds the model only weakly (its registry is keyed by it).
    _model, tokenizer, loop = load_engine(checkpoint, args.device, args.dtype, max(rows))
    note(f"loaded {checkpoint} in {time.perf_counter() - t0:.1f} s; {loop.slots} slots")
    if max(rows) > loop.slots:
        note(f"only {loop.slots} slots (FASTCHAT_SPEC_MAX_BATCH or device memory): dropping rows > {loop.slots}")
        rows = [r for r in rows if r <= loop.slots] or [loop.slots]
    report: dict = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        loop.warm_up()  # every step shape captured, while no slot holds a request (its warm-up runs step them)
        warm_up_s = time.perf_counter() - t0
        note(f"warm-up (graph capture) {warm_up_s:.1f} s")
        occupy(loop, tokenizer, checkpoint, max(rows), args.cached)
        length = loop._length_bucket(args.cached)
        report["setup"] = emit(setup_record(checkpoint, loop, cuda, length, args.cached, warm_up_s))
        rewind = Rewind(loop.state, max(rows))
        report["replay"] = [emit(time_replays(loop, r, length, rewind, replays, cuda)) for r in rows]
        graph_ms = {r["rows"]: r["ms"] for r in report["replay"] if r["graphed"]}
        profiled = sorted({rows[0], rows[-1]})
        report["profile"] = []
        for r in profiled:
            result = profile_step(loop, r, length, rewind, args.profile_steps, cuda, graph_ms.get(r))
            emit({k: v for k, v in result.items() if k not in ("top_kernels", "ops")})  # the tables follow
            report["profile"].append(result)
    if len(profiled) == 2:
        report["ratio"] = emit(ratios(*report["profile"]))
    for result in report["profile"]:
        print_kernels(result)
    if len(profiled) == 2:
        report["growth"] = growth(*report["profile"])
        print_growth(report["growth"], *profiled)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        note(f"wrote {args.out}")


if __name__ == "__main__":
    main()
