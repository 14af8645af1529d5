"""The batched-step profiler runs on CPU and splits every step into its phases.

``python -m fastchat_spec.bench.batch_profile`` fills every slot of an engine
loop with a prompt and profiles the loop's batched step; what a user reads is
one line per checkpoint and rows count and a JSON of the phases' times. (That
the phase ranges leave the step's greedy text alone is what
``tests/test_batching.py`` and ``tests/test_exactness.py`` check.)
"""
from __future__ import annotations

import json
import os

import pytest

from fastchat_spec.bench.batch_profile import main as batch_profile
from fastchat_spec.generate.batch_step import PHASES
from fastchat_spec.methods import METHODS
from tests.tiny import TINY_CHECKPOINTS

NANO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "fastchat_spec", "models", "medusa-vicuna-nano")
# The nano Medusa tree has 128 nodes: --length holds the 16-token prompt, the tree and a few accepted paths.
SMALL = ["--rows", "1,2", "--steps", "2", "--prompt-len", "16", "--length", "256", "--device", "cpu",
         "--dtype", "float32"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hydra_pp_dir(tmp_path_factory, base_dir, base_model):
    """A tiny Hydra++ checkpoint (prefix layer: its proposers keep a cache of their own per slot)."""
    method = METHODS["hydra"]
    checkpoint = next(c for c in TINY_CHECKPOINTS["hydra"] if c.name == "prefix-mlp-4-heads")
    out = str(tmp_path_factory.mktemp("profile") / "hydra-pp-vicuna-tiny")
    return checkpoint.write(method.write_checkpoint, out, base_dir, base_model)


def test_every_rows_count_gets_every_phase_within_the_step(tmp_path, capsys, hydra_pp_dir):
    out = str(tmp_path / "batch_profile.json")
    batch_profile(["--model-path", NANO, hydra_pp_dir, *SMALL, "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    assert result["command"].startswith("python -m fastchat_spec.bench.batch_profile --model-path")
    assert result["device"].startswith("cpu") and result["date"]
    assert set(result["checkpoints"]) == {"medusa-vicuna-nano", "hydra-pp-vicuna-tiny"}
    for name, entry in result["checkpoints"].items():
        assert set(entry["rows"]) == {"1", "2"}, name
        for rows, m in entry["rows"].items():
            phases = m["phases_ms"]
            assert list(phases) == list(PHASES), (name, rows)
            assert all(ms >= 0 for ms in phases.values()), (name, rows, phases)
            assert phases["verify"] > 0 and phases["propose"] > 0, (name, rows, phases)
            assert sum(phases.values()) <= m["total_ms"] + 1e-9, (name, rows)
            assert set(m["top"]) == set(PHASES)
            assert all(len(top) <= 8 for top in m["top"].values())
            assert any("mm" in op["name"] for op in m["top"]["verify"])  # the base's matmuls
            assert m["graph_ms"] is None  # graphs are CUDA's
    printed = capsys.readouterr().out
    for name in result["checkpoints"]:
        for rows in (1, 2):
            line = next(line for line in printed.splitlines() if line.startswith(f"{name} x{rows} "))
            assert "ms/step" in line and all(f"| {phase} " in line for phase in PHASES), line


def test_sampled_rows_profile_the_sampled_step(tmp_path):
    """--temperature profiles the variant that sampled requests run: its walk down the tree is in 'accept'."""
    out = str(tmp_path / "sampled.json")
    batch_profile(["--model-path", NANO, *SMALL, "--temperature", "0.7", "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    assert result["temperature"] == 0.7
    for m in result["checkpoints"]["medusa-vicuna-nano"]["rows"].values():
        assert m["sampled"] is True
        assert any("sort" in op["name"] for op in m["top"]["accept"])  # each row's top-p order


def test_a_length_too_short_for_the_tree_names_the_flag_and_the_fix():
    with pytest.raises(SystemExit) as exit_:
        batch_profile(["--model-path", NANO, *SMALL[:6], "--length", "64", *SMALL[8:]])
    message = str(exit_.value)
    assert "--length 64 is too short" in message and "128 nodes" in message and "or more" in message
