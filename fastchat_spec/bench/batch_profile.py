"""Where the time of one batched speculative step goes, phase by phase.

  python -m fastchat_spec.bench.batch_profile --model-path CKPT [CKPT ...] --rows 1,8 --prompt-len 256 \\
      --length 512 --steps 20 --dtype bfloat16 --device cuda --out batch_profile.json

Why: on an H200 with the ``small`` base and 8 Hydra++ heads, the engine loop's
graphed step took 2.68 ms for one row with a 64-node tree, but 8.78 ms for
about 6 active rows of an 8-row step (Chimera: 3.77 and 17.0 ms), while our
batched AR step went from 1.5 to 1.8 ms. This says which part of the step grows.

For each checkpoint and each --rows count R it builds the engine loop's own
pieces for R slots (``generate.loop.EngineLoop``, its thread never started: KV
slots, per-slot state and proposers), fills every slot through the loop's
admission (``occupy_slot``) with a prompt of --prompt-len random tokens, and
runs the loop's batched step (``BatchStep.run``) over all R rows, attending to
--length positions, eagerly under torch.profiler. The step marks its parts as
profiler ranges (``batch_step.PHASES``):

  propose  the proposers draft every row's tree; the tree's tokens are assembled;
  mask     the rows' KV write positions and the additive attention mask;
  verify   the base's forward over every row's tree;
  accept   the base's argmax, each row's deepest accepted path, the report for the host (with
           --temperature, the sampled rows' rejection-sampling walk down the tree too);
  commit   the accepted path's KV entries moved into place;
  observe  the proposers learn the step, and the rows move on to their bonus tokens.

Per phase: the time per step (on CUDA the device time of the kernels launched
inside the range; on the CPU the self time of the ops inside it) and its top 8
kernels (ops); the whole step's time; and, on CUDA, the step captured as a
CUDA graph the way the loop serves it, its replays timed with CUDA events, to
compare the eager split with what serving pays (the eager kernels can run a
little longer than the graph's: they may wait on the host between launches).

Every step starts where the prompts ended (the rows' start positions are put
back between steps): a step's shapes are static, so its cost does not depend on
what it accepts, and --length need only hold a prompt, a tree and a few paths.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from fastchat_spec.bench.run import _sync, result_header, write_result
from fastchat_spec.bench.steps import cuda_seconds
from fastchat_spec.generate.batch_step import PHASE_PREFIX, PHASES, SlotState
from fastchat_spec.generate.loop import EngineLoop
from fastchat_spec.generate.sampling import SamplingParams

STEP_RANGE = "batch_profile.step"  # the tool's own range around each profiled step
OUTSIDE = "outside"  # ops of a step that no phase range holds
WARMUP_STEPS = 3  # eager steps (and graph replays) before the measured ones
CAPTURE_WARMUPS = 3  # cuda_graphs.capture runs the step this often before capturing it, without our rewinds
TOP = 8  # kernels (ops) listed per phase
FIRST_ORDINARY_ID = 3  # prompt tokens are drawn above the unk, bos and eos ids


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastchat_spec.bench.batch_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, nargs="+",
                   help="speculative checkpoint(s) with a batched device step (Medusa, Hydra, Chimera)")
    p.add_argument("--rows", default="1,8", help="comma list of rows per step, every row holding a request")
    p.add_argument("--prompt-len", type=int, default=256, help="tokens of each row's prompt (random ids)")
    p.add_argument("--length", type=int, default=512,
                   help="positions the step attends to (the loop's length bucket: 256, 512, 1024, ...); must hold "
                        "the prompt, the tree and a few accepted paths, within the slots' capacity")
    p.add_argument("--steps", type=int, default=20, help="profiled steps per checkpoint and rows count")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="> 0: every row samples at this temperature (with --top-p), so the step runs its sampled "
                        "variant (the rejection-sampling walk in 'accept'); 0: greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="the sampled rows' top-p (1: no cut)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "float16", "bfloat16"],
                   help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        args.rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        p.error(f"--rows must be a comma list of integers, e.g. 1,8; got {args.rows!r}")
    if min(args.rows) < 1 or args.steps < 1 or args.prompt_len < 1:
        p.error("--rows, --steps and --prompt-len must be positive")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        p.error("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible here; pass --device cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def checkpoint_names(paths: list[str]) -> list[str]:
    names = [os.path.basename(os.path.normpath(path)) for path in paths]
    if len(set(names)) < len(names):
        sys.exit(f"--model-path: two checkpoints share a folder name ({names}); rename or copy one")
    return names


def load_checkpoint(path: str, device: str, dtype: torch.dtype):
    """A SpecModel loaded as FastChat's worker loads it."""
    from fastchat.model.model_adapter import load_model

    from fastchat_spec.spec_model import is_speculative

    model, _ = load_model(path, device=device, dtype=dtype)
    if not is_speculative(model):
        sys.exit(f"{path} is not a speculative checkpoint (no Medusa/Hydra/Chimera config found)")
    return model


def prompt_ids(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_ORDINARY_ID, vocab_size, (length,), generator=generator).tolist()


def occupied_loop(model, path: str, rows: int, prompt_len: int, length: int, sampling=None) -> EngineLoop:
    """The engine loop's pieces for ``rows`` slots at the model's served context, every slot holding a prompt."""
    from fastchat.utils import get_context_length

    loop = EngineLoop(model, get_context_length(model.config), rows)
    if not loop.batched:
        sys.exit(f"{path}: method {loop.method} has no batched device step (it steps from the host); "
                 "profile a Medusa, Hydra or Chimera checkpoint")
    if loop.slots < rows:
        sys.exit(f"--rows {rows}: only {loop.slots} KV slots fit the device memory; ask for fewer rows")
    check_length(loop, path, prompt_len, length)
    for slot in range(rows):
        loop.occupy_slot(slot, prompt_ids(model.base.config.vocab_size, prompt_len, seed=slot), sampling)
    return loop


def check_length(loop: EngineLoop, path: str, prompt_len: int, length: int) -> None:
    """--length must hold the prompt, the tree written past it, and the paths of the steps run between rewinds."""
    tree = loop.tree
    need = prompt_len + tree.num_nodes + (CAPTURE_WARMUPS + 1) * (tree.max_depth + 1)
    if length < need:
        sys.exit(f"--length {length} is too short for --prompt-len {prompt_len} and {path}'s tree "
                 f"({tree.num_nodes} nodes, depth {tree.max_depth}): give --length {need} or more")
    if length > loop.capacity:
        sys.exit(f"--length {length}: the engine loop holds {loop.capacity} positions per slot for this model's "
                 f"context of {loop.context_len} tokens; give --length {loop.capacity} or less")


def rewinder(state: SlotState):
    """Puts every row's start back where its prompt ended, so that each step runs at the same positions."""
    starts = state.starts.clone()
    return lambda: state.starts.copy_(starts)


def profile_steps(step, rewind, steps: int, device: torch.device):
    """torch.profiler over ``steps`` eager steps (after warm-up), each inside ``STEP_RANGE``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    # CPU activity on CUDA too: the ops and ranges, to which the profiler ties each kernel.
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(WARMUP_STEPS):
        rewind()
        step()
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            rewind()
            with record_function(STEP_RANGE):
                step()
        _sync(device)
    return prof


def _with_phase(step_event):
    """Every event inside one profiled step, with the phase whose range holds it (``OUTSIDE`` if none)."""
    todo = [(step_event, OUTSIDE)]
    while todo:
        event, phase = todo.pop()
        if event.name.startswith(PHASE_PREFIX):
            phase = event.name[len(PHASE_PREFIX):]
        yield event, phase
        todo.extend((child, phase) for child in event.cpu_children)


def _costs(event, cuda: bool) -> list[tuple[str, float]]:
    """(name, microseconds) that ``event`` itself accounts for: on CUDA the kernels it launched (a range's
    own GPU-side span, which bears the range's name, is left out), on the CPU its self time if it is an op."""
    if cuda:
        return [(k.name, k.duration) for k in event.kernels if k.name != event.name]
    if _is_range(event):
        return []
    return [(event.name, event.self_cpu_time_total)]


def _is_range(event) -> bool:
    """A profiler range (ours, or another's record_function), not an op; its GPU-side span bears its name."""
    return (getattr(event, "is_user_annotation", False) or event.name.startswith(PHASE_PREFIX)
            or event.name == STEP_RANGE)


def split_by_phase(prof, steps: int, cuda: bool) -> dict:
    """Milliseconds per step by phase and in all, and each phase's top kernels (ops)."""
    cpu = torch.autograd.DeviceType.CPU
    by_name: dict[str, dict[str, list]] = {phase: {} for phase in PHASES + (OUTSIDE,)}
    found = 0
    for step_event in (e for e in prof.events() if e.name == STEP_RANGE and e.device_type == cpu):
        found += 1
        for event, phase in _with_phase(step_event):
            for name, us in _costs(event, cuda):
                entry = by_name[phase].setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += us
    if found != steps:
        raise RuntimeError(f"the profiler recorded {found} steps of the {steps} run")
    ms = {phase: sum(us for _, us in names.values()) / steps / 1000 for phase, names in by_name.items()}
    result = {"total_ms": sum(ms.values()), "phases_ms": {phase: ms[phase] for phase in PHASES},
              "outside_phases_ms": ms[OUTSIDE], "top": {phase: _top(by_name[phase], steps) for phase in PHASES}}
    if cuda:
        result["all_kernels_ms"] = _all_kernels_ms(prof, steps)
    return result


def _top(names: dict[str, list], steps: int) -> list[dict]:
    ranked = sorted(names.items(), key=lambda kv: -kv[1][1])[:TOP]
    return [{"name": name[:120], "calls_per_step": calls / steps, "ms_per_step": us / steps / 1000}
            for name, (calls, us) in ranked]


def _all_kernels_ms(prof, steps: int) -> float:
    """Every kernel the profiler saw, per step (the rewinds' copies too): checks that the phases got them all."""
    device_events = (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and not _is_range(e))
    return sum(e.time_range.elapsed_us() for e in device_events) / steps / 1000


def time_graph(loop: EngineLoop, rows: int, length: int, sampled: bool, rewind, steps: int) -> float:
    """Median milliseconds of the step's CUDA graph replay, captured as the loop captures its steps."""
    rewind()
    replay = loop._capture(0, rows, length, sampled)
    return 1000 * cuda_seconds(replay, repeat=steps, warmup=WARMUP_STEPS, before=rewind)


@torch.inference_mode()
def measure(model, path: str, rows: int, args, device: torch.device) -> dict:
    """One checkpoint at ``rows`` rows: the eager step's phases under the profiler, then its graph's replays."""
    sampling = SamplingParams(args.temperature, args.top_p, -1, 1.0)
    sampled = not sampling.greedy  # FastChat's rule (a temperature below 1e-5 is greedy)
    loop = occupied_loop(model, path, rows, args.prompt_len, args.length, sampling)
    step = loop._batch_step(0, rows, args.length, sampled)
    rewind = rewinder(loop.state)
    prof = profile_steps(step.run, rewind, args.steps, device)
    result = {"rows": rows, "nodes_per_row": step.tree.num_nodes, "sampled": sampled,
              **split_by_phase(prof, args.steps, device.type == "cuda")}
    result["graph_ms"] = time_graph(loop, rows, args.length, sampled, rewind, args.steps) if loop.graphs else None
    return result


def summary_line(name: str, m: dict) -> str:
    unit = "of kernels" if "all_kernels_ms" in m else "of CPU ops"
    phases = " | ".join(f"{phase} {ms:.2f}" for phase, ms in m["phases_ms"].items())
    graph = f" (graph {m['graph_ms']:.2f} ms)" if m["graph_ms"] is not None else ""
    return (f"{name} x{m['rows']} ({m['nodes_per_row']} nodes/row): {m['total_ms']:.2f} ms/step {unit} | "
            f"{phases}{graph}")


def main(argv=None):
    args = parse_args(argv)
    import fastchat_spec

    fastchat_spec.register()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    result = {
        **result_header("fastchat_spec.bench.batch_profile", args.device, argv),
        "dtype": args.dtype, "prompt_len": args.prompt_len, "length": args.length, "steps": args.steps,
        "temperature": args.temperature, "top_p": args.top_p,
        "time": "device time of the kernels in each range" if device.type == "cuda"
                else "CPU self time of the ops in each range",
        "checkpoints": {},
    }
    for name, path in zip(checkpoint_names(args.model_path), args.model_path):
        model = load_checkpoint(path, args.device, dtype)
        entry = result["checkpoints"][name] = {"model_path": path, "method": model.spec.method, "rows": {}}
        for rows in args.rows:
            m = entry["rows"][str(rows)] = measure(model, path, rows, args, device)
            print(summary_line(name, m), flush=True)
            if "all_kernels_ms" in m and m["total_ms"] < 0.9 * m["all_kernels_ms"]:
                print(f"  only {m['total_ms']:.2f} of the {m['all_kernels_ms']:.2f} ms of kernels per step were "
                      "tied to the step's ranges: read the phases with care", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the loop's slots and graphs are gone with measure's frame
        del model
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
