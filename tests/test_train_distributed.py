"""torchrun with 2 CPU processes (gloo) trains Medusa-1 heads exactly like 1 process with the same global batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.test_train_medusa import lines_until_steps_logged, write_conversations

STEPS = 4
REL_TOL = 1e-4


def run_training(cmd: list[str], out: str, env: dict) -> dict:
    env = {**env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, "train_report.json"), encoding="utf-8") as f:
        return json.load(f)


def medusa_args(base_dir: str, data: tuple, out: str, per_device_batch: int) -> list[str]:
    train, heldout = data
    return ["-m", "fastchat_spec.train.medusa", "--model_name_or_path", base_dir, "--data_path", train,
            "--eval_data_path", heldout, "--output_dir", out, "--medusa_num_heads", "2",
            "--max_steps", str(STEPS), "--learning_rate", "1e-2", "--model_max_length", "512",
            "--per_device_train_batch_size", str(per_device_batch), "--per_device_eval_batch_size", "2",
            "--logging_steps", "1", "--dataloader_drop_last", "True", "--seed", "0", "--disable_tqdm", "True",
            "--tree_nodes", "4"]


def head_tensors(out: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "medusa_lm_head.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_processes_match_one(tmp_path, base_dir, subprocess_env):
    data = write_conversations(str(tmp_path))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    single = run_training([sys.executable] + medusa_args(base_dir, data, one, 4), one, subprocess_env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = run_training(torchrun + medusa_args(base_dir, data, two, 2), two, subprocess_env)

    assert single["world_size"] == 1 and double["world_size"] == 2
    losses = [[h["loss"] for h in r["log_history"] if "loss" in h] for r in (single, double)]
    assert len(losses[0]) == len(losses[1]) == STEPS
    for a, b in zip(*losses):
        assert abs(a - b) <= REL_TOL * abs(a) + 1e-4, losses  # logged losses are rounded to 4 decimals
    ref, got = head_tensors(one), head_tensors(two)
    assert ref.keys() == got.keys()
    for key in ref:
        scale = ref[key].abs().max().clamp_min(1e-3)
        assert (ref[key] - got[key]).abs().max() <= REL_TOL * scale, key
    # Held-out accuracy is summed over both processes' shards: the same tokens are counted.
    assert [h["tokens"] for h in single["heads"].values()] == [h["tokens"] for h in double["heads"].values()]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_sigterm_to_one_process_stops_both_at_the_same_step_and_saves(tmp_path, base_dir, subprocess_env):
    """A SIGTERM that reaches only one rank (a node's scheduler) stops every rank after the same step, so the
    run neither hangs in a collective nor loses its heads."""
    data = write_conversations(str(tmp_path))
    out = str(tmp_path / "stopped")
    args = medusa_args(base_dir, data, out, 2)
    args[args.index("--max_steps") + 1] = "100000"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**subprocess_env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(torchrun + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = lines_until_steps_logged(proc, 3)  # rank 0 logs every step
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            workers = [int(pid) for pid in f.read().split()]
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGTERM)  # one rank only
        lines += proc.stdout.readlines()
        assert proc.wait(timeout=300) == 0, "".join(lines[-40:])
    finally:
        proc.kill()
    with open(os.path.join(out, "train_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert report["world_size"] == 2 and 3 <= report["stopped_by_sigterm_at_step"] < 100000
    steps = [h["step"] for h in report["log_history"] if "loss" in h]
    assert steps[-1] == report["stopped_by_sigterm_at_step"]
    assert head_tensors(out)  # the heads were written
