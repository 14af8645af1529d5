"""The benchmark CLI runs on CPU with small sizes and reports what a user compares."""
from __future__ import annotations

import json
import os

import pytest

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
                "--device", "cpu", "--profile-prompts", "1", "--concurrency", "1,4", "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    overall = result["summary"]["all"]
    assert overall["prompts"] == 4 and overall["tau"] > 1.0
    assert overall["speedup_vs_fastchat"] > 0 and overall["speedup_vs_ar"] > 0
    assert overall["same_text_as_ar_rate"] == 1.0  # float32: the speculative text is the AR text
    assert set(overall["ms_per_step"]) == {"step", "other"}
    # time to the first token, for the method and our AR, within each prompt's whole time
    assert 0 < overall["first_token_ms"] and 0 < overall["ar_first_token_ms"]
    for row in result["prompts"]:
        assert 0 < row["medusa"]["first_token_s"] <= row["medusa"]["seconds"]
    assert set(result["summary"]["by_category"]) == {"writing", "code"}
    loops = result["summary"]["by_repetition"]  # tau on answers that loop (easy to draft) apart from the rest
    assert loops["varied"]["prompts"] + loops["repetitive"]["prompts"] == 4
    assert os.path.getsize(os.path.join(tmp_path, "results.png")) > 1000
    assert result["command"].startswith("python -m fastchat_spec.bench")
    # --concurrency: the same prompts from 1 and 4 clients through one engine loop, same texts
    for name in ("medusa", "ar"):
        levels = result["serving"][name]
        assert set(levels) == {"1", "4"}
        assert levels["4"]["requests"] == 4 and levels["4"]["aggregate_tok_s"] > 0
        assert levels["4"]["rows_per_step"] > 1.0  # requests shared batched steps
        assert levels["4"]["same_text_as_first_level"] == 1.0  # float32: load does not change the text


def test_an_answer_that_loops_counts_as_repetitive_and_a_varied_one_does_not():
    from fastchat_spec.bench.__main__ import REPETITIVE, repeated_share

    assert repeated_share(list(range(40))) == 0.0
    assert repeated_share([1, 2, 3, 4, 5] * 8) >= REPETITIVE  # one five-token loop
    assert repeated_share([7, 8]) == 0.0  # shorter than an n-gram


def test_bench_compares_several_checkpoints_of_one_base_side_by_side(tmp_path, base_dir):
    paths = []
    for heads in (2, 3):
        ckpt = os.path.join(tmp_path, f"medusa-{heads}")
        write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, heads), base_dir,
                                tree=chain(heads).to_list())
        paths.append(ckpt)
    out = os.path.join(tmp_path, "both.json")
    bench_main(["--model-path", *paths, "--num-prompts", "2", "--max-new-tokens", "16", "--device", "cpu",
                "--prompts", _prompt_file(tmp_path), "--profile-prompts", "0", "--baselines", "ar", "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    assert list(result["methods"]) == ["medusa-2", "medusa-3"]
    for m in result["methods"].values():
        assert m["summary"]["all"]["same_text_as_ar_rate"] == 1.0
    # deeper oracle chains accept more tokens per step
    assert result["methods"]["medusa-3"]["summary"]["all"]["tau"] > result["methods"]["medusa-2"]["summary"]["all"]["tau"]


def test_bench_refuses_checkpoints_of_different_bases(tmp_path, base_dir, tokenizer_dir):
    other_base_dir = tiny.build_llama(os.path.join(tmp_path, "vicuna-other"), tokenizer_dir, seed=7)
    paths = []
    for base in (base_dir, other_base_dir):
        ckpt = os.path.join(tmp_path, os.path.basename(base) + "-medusa")
        write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base, 2), base, tree=chain(2).to_list())
        paths.append(ckpt)
    with pytest.raises(SystemExit, match="another base"):
        bench_main(["--model-path", *paths, "--num-prompts", "1", "--max-new-tokens", "4", "--device", "cpu",
                    "--prompts", _prompt_file(tmp_path), "--baselines", "", "--out", str(tmp_path / "x.json")])


def _prompt_file(tmp_path) -> str:
    path = os.path.join(tmp_path, "p.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(2):
            f.write(json.dumps({"turns": [" ".join(tiny.corpus(2, seed=i))], "category": "c"}) + "\n")
    return path


def test_step_profile_counts_matmuls_fused_into_triton_kernels_as_matmuls():
    """`bench.steps --profile` reports the bandwidth its matmuls reach on the weights. Under
    max-autotune the projections run inside fused Triton reductions: counted as "triton", the table
    showed matmuls at 4,888% of the copy bandwidth (H100, 2026-12-06). Names from that profile."""
    from fastchat_spec.bench.steps import kernel_kind

    assert kernel_kind("nvjet_sm90_tst_256x8_64x6_2x1_v_bz_TNT") == "matmul"
    assert kernel_kind("triton_red_fused__unsafe_view_mm_mul_silu_t_view_6") == "matmul"
    assert kernel_kind("triton_red_fused_mm_t_view_5") == "matmul"
    assert kernel_kind("triton_tem_fused_mm_0") == "matmul"
    rope = "triton_poi_fused__to_copy__unsafe_view_add_bmm_cat_cos_expand_index_copy_mm_mul_neg_sin_slice_2"
    assert kernel_kind(rope) == "triton"
    assert kernel_kind("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_7") == "triton"
    sdpa = "cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16_knob_35_16x128x128_1x4x1_cga1x1x1_kernel0_0"
    assert kernel_kind(sdpa) == "attention"


def test_freezing_combines_with_a_compile_mode_and_says_when_it_does_nothing(monkeypatch, caplog):
    """FASTCHAT_SPEC_COMPILE_FREEZE=1 next to FASTCHAT_SPEC_COMPILE_MODE: torch.compile refuses a
    mode and options together, so the worker would die at its first step; the mode's settings are
    merged into the options instead. Nothing is compiled here (that happens at the first call)."""
    import logging

    import torch

    from fastchat_spec.generate import cuda_graphs

    monkeypatch.setenv(cuda_graphs.COMPILE_ENV, "1")
    monkeypatch.setenv(cuda_graphs.COMPILE_MODE_ENV, "max-autotune-no-cudagraphs")
    monkeypatch.setenv(cuda_graphs.COMPILE_FREEZE_ENV, "1")
    settings = cuda_graphs.compile_settings()
    assert settings["options"]["freezing"] and settings["options"]["max_autotune"]
    torch.compile(torch.nn.Linear(2, 2), **settings)  # accepted
    monkeypatch.setenv(cuda_graphs.COMPILE_FREEZE_ENV, "0")
    assert cuda_graphs.compile_settings() == {"mode": "max-autotune-no-cudagraphs"}

    # Freezing alone does not compile: the worker's log says so instead of silently running uncompiled.
    monkeypatch.setenv(cuda_graphs.COMPILE_ENV, "0")
    monkeypatch.setenv(cuda_graphs.COMPILE_FREEZE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="fastchat_spec.cuda_graphs"):
        assert cuda_graphs.compiled_decoder(torch.nn.Linear(2, 2)) is None
    assert "FASTCHAT_SPEC_COMPILE_FREEZE=1 does nothing without FASTCHAT_SPEC_COMPILE=1" in caplog.text


def test_an_exported_revision_is_what_servers_with_server_code_import(tmp_path):
    """scripts/export_code.sh writes a revision's serving code (no bundled models) for an A/B run in
    one GPU call; a process with that folder first on its path, as serving_bench.sh's servers get it
    with SERVER_CODE, imports that code, not the checkout's."""
    import subprocess
    import sys

    import pytest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    out = tmp_path / "code_head"
    subprocess.run(["bash", os.path.join(root, "scripts", "export_code.sh"), "HEAD", str(out)], check=True,
                   capture_output=True)
    assert (out / "REVISION").read_text().strip() == head.stdout.strip()
    assert (out / "fastchat_spec_hook.py").is_file() and not (out / "fastchat_spec" / "models").exists()
    env = {**os.environ, "PYTHONPATH": f"{out}{os.pathsep}{root}", "PYTHONSAFEPATH": "1"}  # as start_server sets
    imported = subprocess.run([sys.executable, "-c", "import fastchat_spec; print(fastchat_spec.__file__)"],
                              env=env, cwd=root, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == str(out / "fastchat_spec" / "__init__.py")


def test_the_tau_script_trains_heads_on_the_bases_own_answers_and_reports_tau_per_category(tmp_path):
    """scripts/small_tau.sh at SIZE=tiny, every stage in one go, as the GPU runs it in consecutive calls:
    a base, its own answers, Hydra++ and Chimera heads (HEADS of them) with searched trees, trained on those
    answers and MIX human-answered conversations, one benchmark of both with tau per category next to our AR
    decoder alone (BASELINES)."""
    import subprocess
    import sys

    from fastchat_spec.train import data

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train, heldout = data.split_train_heldout(data.load_sharegpt(limit=600))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data.write_fastchat_json(train[:40], str(data_dir / "train.json"))
    data.write_fastchat_json(heldout[:6], str(data_dir / "heldout.json"))
    prompts = tmp_path / "prompts.jsonl"
    questions = ["Write a Python function that reverses a list.", "What is 12 * 7 + 3?", "Tell me about tea."]
    prompts.write_text("".join(json.dumps({"turns": [q]}) + "\n" for q in questions))
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": root, "SIZE": "tiny", "BASE_ARGS": "--max_steps 2",
           "DISTILL": "6", "SHARDS": "2", "DISTILL_BATCH": "3", "METHODS": "hydra-pp chimera", "HEAD_STEPS": "2",
           "HEADS": "5", "MIX": "10", "HEAD_BATCH": "2", "TREE_NODES": "7", "BENCH_PROMPTS": "3", "BASELINES": "ar",
           "BENCH_ARGS": "--dtype float32 --device cpu --max-new-tokens 16"}
    run, out = tmp_path / "run", tmp_path / "out"
    done = subprocess.run(["bash", os.path.join(root, "scripts", "small_tau.sh"), str(data_dir), str(prompts),
                           str(run), str(out)], env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + (run / "stages.log").read_text()

    assert len(json.loads((run / "distilled-tiny.json").read_text())) == 6  # the base's own answers
    for method in ("hydra-pp", "chimera"):
        report = json.loads((out / f"train_{method}.json").read_text())
        tree = report[method.split("-")[0] + "_choices"]  # searched from the acceptance measured on held-out
        assert tree and report["expected_tokens_per_step"] >= 1.0, method
        assert report["train_conversations"] == 6 + 10, method  # its own answers and MIX of ShareGPT's
        config = json.loads((run / f"{method}-vicuna-tiny" / "config.json").read_text())
        assert config[method.split("-")[0] + "_num_heads"] == 5  # HEADS: a draft five tokens deep
    tau = json.loads((out / "tau.json").read_text())
    assert sorted(tau["methods"]) == ["chimera-vicuna-tiny", "hydra-pp-vicuna-tiny"]
    for name, result in tau["methods"].items():
        assert result["summary"]["all"]["tau"] >= 1.0, name
        assert set(result["summary"]["by_category"]) <= {"code", "math", "general"}, name
    categories = [json.loads(line)["category"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert categories[0] == "code" and categories[2] == "general"


def test_gemm_and_attention_tools_time_the_products_they_claim_and_say_they_need_a_gpu(monkeypatch, capsys, tmp_path):
    """`bench.gemms` times split-K forms of each projection next to the plain GEMM: they must be the
    same product, whether the parts are copied out or read as a strided view of the weight. The tree
    `bench.attention` masks with must be a tree (each node sees itself and the root). Without a GPU both
    tools stop with a message, not a CUDA traceback."""
    import torch

    from fastchat_spec.bench import attention, gemms

    weight, x = torch.randn(96, 64), torch.randn(5, 64)
    for copy in (True, False):
        parts = gemms.split_k_weight(weight, 4, copy)
        assert parts.shape == (4, 96, 16) and (copy or parts.data_ptr() == weight.data_ptr())
        torch.testing.assert_close(gemms.split_k_linear(x, parts), x @ weight.T)
    assert set(gemms.projections("llama7b")) == {"qkv", "o", "gate_up", "down"}

    # bench.first_use times a forward at lengths new to the process, once and again, under each attention
    # policy; no two policies share a length (a shape cached under one would look free under the next).
    from fastchat_spec.bench import first_use

    out = tmp_path / "first_use.json"
    first_use.main(["--device", "cpu", "--dtype", "float32", "--lengths", "2", "--first-length", "9",
                    "--out", str(out)])
    policies = json.loads(out.read_text())["policies"]
    assert set(policies) == {"default", "no-cudnn"}
    lengths = [row["length"] for p in policies.values() for row in p["lengths"]]
    assert len(lengths) == 4 == len(set(lengths))
    assert all(row["first_ms"] > 0 and row["again_ms"] > 0 for p in policies.values() for row in p["lengths"])
    assert gemms.projections("llama7b")["down"] == (4096, 11008)

    mask = attention.tree_mask(12, "cpu")
    assert mask.diagonal().all() and mask[:, 0].all() and not mask.triu(1).any()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for tool in (gemms, attention):
        with pytest.raises(SystemExit, match="no CUDA device"):
            tool.main([])
    # bench.steps times the step under each attention implementation asked for; a name Hugging Face
    # would not know is refused before any model is built.
    from fastchat_spec.bench import steps

    with pytest.raises(SystemExit) as refused:
        steps.main(["--attention", "sdpa,flex"])
    assert refused.value.code == 2 and "unknown ['flex']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        steps.main(["--attention", "sdpa,flex_attention"])
