"""The benchmark CLI runs on CPU with small sizes and reports what a user compares."""
from __future__ import annotations

import json
import os

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.bench.__main__ import main as bench_main
from fastchat_spec.generate.tree import chain
from tests import tiny


def test_bench_reports_speedups_per_category(tmp_path, base_dir):
    ckpt = os.path.join(tmp_path, "medusa-oracle")
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir, tree=chain(3).to_list())
    prompts = os.path.join(tmp_path, "prompts.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        for i, category in enumerate(["writing", "writing", "code", "code"]):
            f.write(json.dumps({"turns": [" ".join(tiny.corpus(2, seed=i))], "category": category}) + "\n")
    out = os.path.join(tmp_path, "results.json")
    bench_main(["--model-path", ckpt, "--prompts", prompts, "--num-prompts", "4", "--max-new-tokens", "24",
                "--device", "cpu", "--profile-prompts", "1", "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    overall = result["summary"]["all"]
    assert overall["prompts"] == 4 and overall["tau"] > 1.0
    assert overall["speedup_vs_fastchat"] > 0 and overall["speedup_vs_ar"] > 0
    assert overall["same_text_as_ar_rate"] == 1.0  # float32: the speculative text is the AR text
    assert set(overall["ms_per_step"]) == {"draft", "verify", "accept"}
    assert set(result["summary"]["by_category"]) == {"writing", "code"}
    assert os.path.getsize(os.path.join(tmp_path, "results.png")) > 1000
    assert result["command"].startswith("python -m fastchat_spec.bench")
