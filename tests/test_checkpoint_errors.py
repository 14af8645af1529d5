"""Broken checkpoints fail at load time with an error that names the file, what is wrong and the fix.

Every case writes a checkpoint of one method from the tiny base, breaks one
thing in it (a truncated weight file, a config.json that does not fit the
weights, invalid JSON, a missing tokenizer or base) and loads it through
FastChat's own ``load_model``, the call FastChat's worker, CLI and web server
make. Checkpoints are written from raw tensors, the way the published ones
are laid out. A pickled head file whose unpickling would run code is refused,
and the code provably does not run. Two cases go through the unchanged
``python -m fastchat.serve.model_worker`` command, which must exit with the
error in its log rather than hang.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import torch
from fastchat.model.model_adapter import load_model
from safetensors.torch import load_file, save_file

from tests.servers import ManagedProcess, fastchat_module, free_port, server_env
from tests.tiny import published_medusa_tensors

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
WORKER_EXIT_TIMEOUT = 240.0  # seconds; a worker imports torch and FastChat on 2 shared cores

pytestmark = pytest.mark.usefixtures("no_base_override")


@dataclass
class Broken:
    """A broken checkpoint and what its load error must say."""

    path: str  # what the user passes as --model-path
    file: str  # the file (or folder) the error must name
    says: tuple[str, ...]  # what is wrong and how to fix it, as words the error must contain


# -- writing checkpoints ---------------------------------------------------------------------


def _read_json(file: str):
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _write_json(file: str, data) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _edit_config(folder: str, **changes) -> str:
    file = os.path.join(folder, "config.json")
    _write_json(file, {**_read_json(file), **changes})
    return file


def _truncate(file: str, keep: float = 0.5) -> str:
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return file


def _corrupt_json(file: str) -> str:
    with open(file, "w", encoding="utf-8") as f:
        f.write('{"hidden_size": 64,')
    return file


def medusa_v01(root: str, base: str, hidden: int, vocab: int, name: str = "medusa-v01") -> str:
    """Medusa-1 v0.1: config.json with the medusa keys + medusa_lm_head.pt."""
    out = os.path.join(root, name)
    os.makedirs(out)
    _write_json(os.path.join(out, "config.json"),
                {"base_model_name_or_path": base, "medusa_num_heads": 3, "medusa_num_layers": 1})
    torch.save(published_medusa_tensors(hidden, vocab), os.path.join(out, "medusa_lm_head.pt"))
    return out


def medusa_heads_only(root: str, base: str, hidden: int, vocab: int) -> str:
    """Heads-only safetensors without per-head lm_heads."""
    out = os.path.join(root, "medusa-heads-only")
    os.makedirs(out)
    _write_json(os.path.join(out, "config.json"),
                {"base_model_name_or_path": base, "medusa_num_heads": 3, "medusa_num_layers": 1})
    save_file(published_medusa_tensors(hidden, vocab, own_lm_head=False),
              os.path.join(out, "medusa_lm_head.safetensors"))
    return out


def copy_base(root: str, base_dir: str, name: str) -> str:
    out = os.path.join(root, name)
    shutil.copytree(base_dir, out)
    return out


def medusa_full(root: str, base_dir: str, hidden: int, vocab: int, shards: int = 1, pickled: bool = False) -> str:
    """Medusa-2 "1.0": the base's config and weights plus medusa keys and ``medusa_head.*`` tensors."""
    out = copy_base(root, base_dir, f"medusa-full-{shards}")
    _edit_config(out, medusa_num_heads=3, medusa_num_layers=1)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    os.remove(os.path.join(out, "model.safetensors"))
    tensors.update({f"medusa_head.{k}": v for k, v in published_medusa_tensors(hidden, vocab).items()})
    if pickled:
        torch.save(tensors, os.path.join(out, "pytorch_model.bin"))
        return out
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i::shards]}
        save_file(part, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    if shards > 1:
        _write_json(os.path.join(out, "model.safetensors.index.json"), {"metadata": {}, "weight_map": weight_map})
    return out


def hydra(root: str, base_dir: str, safetensors: bool = False, base_config=None) -> str:
    """Hydra (grounded mlp heads) in the published layout: config.json + hydra_lm_head.pt."""
    from transformers import AutoConfig

    from fastchat_spec.adapters.hydra import write_hydra_checkpoint
    from fastchat_spec.heads.hydra import HydraHeads

    out = os.path.join(root, "hydra-tiny")
    heads = HydraHeads(base_config or AutoConfig.from_pretrained(base_dir), 2, 1, arch="mlp", grounded=True)
    write_hydra_checkpoint(out, heads, base_dir, safetensors=safetensors)
    return out


def chimera_with_broken_parts(root: str, base_dir: str, write_part) -> str:
    """A Chimera folder whose part files are all broken the same way (whichever is read first fails)."""
    from fastchat_spec.adapters.chimera import part_files
    from fastchat_spec.heads.chimera import PARTS

    out = os.path.join(root, "chimera-tiny")
    os.makedirs(out)
    _write_json(os.path.join(out, "config.json"),
                {"base_model_name_or_path": base_dir, "chimera_num_heads": 2, "chimera_num_layers": 1})
    for name in PARTS:
        write_part(os.path.join(out, part_files(name)[-1]))
    return out


def cllm(root: str, base_dir: str) -> str:
    """A CLLM is a plain Llama folder; our trainer's config flag marks it."""
    out = copy_base(root, base_dir, "cllm-tiny")
    _edit_config(out, fastchat_spec_method="cllm")
    return out


def remove_tokenizer(folder: str) -> str:
    for name in TOKENIZER_FILES:
        os.remove(os.path.join(folder, name))
    return folder


# -- the cases ------------------------------------------------------------------------------

CORRUPT = ("corrupt or truncated", "download or train it again")
BAD_JSON = ("is not valid JSON", "restore it")
NO_TOKENIZER = ("no tokenizer", "tokenizer.model", "copy the tokenizer files")
NOT_A_FOLDER = ("is not a model folder", "base_model_name_or_path", "FASTCHAT_SPEC_BASE_MODEL")
CONFIG_MISFIT = ("does not fit the weights", "restore the model's original config.json")


def _v01(tmp, base, shape):
    return medusa_v01(tmp, base, *shape)


def _broken_base(tmp, base, shape, breaks):
    """A Medusa v0.1 checkpoint whose base folder has one thing broken by ``breaks(base_copy)``."""
    base_copy = copy_base(tmp, base, "vicuna-base-copy")
    file = breaks(base_copy)
    ckpt = medusa_v01(tmp, base_copy, *shape)
    return ckpt, file


def case_medusa_v01_truncated_heads(tmp, base, shape):
    ckpt = _v01(tmp, base, shape)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "medusa_lm_head.pt")), CORRUPT)


def case_medusa_v01_empty_heads(tmp, base, shape):
    ckpt = _v01(tmp, base, shape)
    file = _truncate(os.path.join(ckpt, "medusa_lm_head.pt"), keep=0)
    return Broken(ckpt, file, CORRUPT)


def case_medusa_v01_missing_heads(tmp, base, shape):
    ckpt = _v01(tmp, base, shape)
    os.remove(os.path.join(ckpt, "medusa_lm_head.pt"))
    return Broken(ckpt, ckpt, ("no Medusa head weights", "medusa_lm_head.pt"))


def case_medusa_v01_invalid_json(tmp, base, shape):
    ckpt = _v01(tmp, base, shape)
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "config.json")), BAD_JSON)


def case_medusa_v01_head_count_not_a_number(tmp, base, shape):
    ckpt = _v01(tmp, base, shape)
    file = _edit_config(ckpt, medusa_num_heads="three")
    return Broken(ckpt, file, ("medusa_num_heads must be an integer", "'three'"))


def case_medusa_v01_heads_of_another_hidden_size(tmp, base, shape):
    ckpt = medusa_v01(tmp, base, 32, shape[1])
    return Broken(ckpt, os.path.join(ckpt, "medusa_lm_head.pt"), ("hidden size 32", "base model has 64"))


def case_medusa_v01_missing_base(tmp, base, shape):
    ckpt = medusa_v01(tmp, os.path.join(tmp, "no-such-base"), *shape)
    return Broken(ckpt, os.path.join(ckpt, "config.json"), NOT_A_FOLDER + (os.path.join(tmp, "no-such-base"),))


def case_medusa_v01_missing_relative_base(tmp, base, shape):
    ckpt = medusa_v01(tmp, "../no-such-base", *shape)
    return Broken(ckpt, os.path.join(ckpt, "config.json"), NOT_A_FOLDER + ("../no-such-base",))


def case_medusa_v01_base_without_tokenizer(tmp, base, shape):
    ckpt, folder = _broken_base(tmp, base, shape, remove_tokenizer)
    return Broken(ckpt, folder, NO_TOKENIZER + (f"base model of {ckpt}",))


def case_medusa_v01_base_config_with_wrong_hidden_size(tmp, base, shape):
    ckpt, file = _broken_base(tmp, base, shape, lambda b: _edit_config(b, hidden_size=128))
    return Broken(ckpt, file, CONFIG_MISFIT + ("hidden_size=128", "model.safetensors"))


def case_medusa_v01_base_truncated_weights(tmp, base, shape):
    ckpt, file = _broken_base(tmp, base, shape, lambda b: _truncate(os.path.join(b, "model.safetensors")))
    return Broken(ckpt, file, CORRUPT + (f"base model of {ckpt}",))


def case_medusa_heads_only_truncated(tmp, base, shape):
    ckpt = medusa_heads_only(tmp, base, *shape)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "medusa_lm_head.safetensors")), CORRUPT)


def case_medusa_heads_only_header_cut(tmp, base, shape):
    ckpt = medusa_heads_only(tmp, base, *shape)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "medusa_lm_head.safetensors"), keep=0.001), CORRUPT)


def case_medusa_heads_only_heads_of_two_shapes(tmp, base, shape):
    ckpt = medusa_heads_only(tmp, base, *shape)
    file = os.path.join(ckpt, "medusa_lm_head.safetensors")
    state = load_file(file)
    state["1.0.linear.weight"] = torch.zeros(shape[0], shape[0] // 2)
    save_file(state, file)
    return Broken(ckpt, file, ("does not hold 3 heads of one shape", "size mismatch"))


def case_medusa_full_truncated_weights(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "model.safetensors")), CORRUPT)


def case_medusa_full_config_with_wrong_hidden_size(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape)
    return Broken(ckpt, _edit_config(ckpt, hidden_size=128), CONFIG_MISFIT + ("hidden_size=128",))


def case_medusa_full_config_with_wrong_head_count(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape)
    return Broken(ckpt, _edit_config(ckpt, num_attention_heads=2), CONFIG_MISFIT + ("num_attention_heads=2",))


def case_medusa_full_invalid_json(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape)
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "config.json")), BAD_JSON)


def case_medusa_full_invalid_tokenizer_json(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape)
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "tokenizer_config.json")), BAD_JSON)


def case_medusa_full_without_tokenizer(tmp, base, shape):
    ckpt = remove_tokenizer(medusa_full(tmp, base, *shape))
    return Broken(ckpt, ckpt, NO_TOKENIZER)


def case_medusa_full_sharded_invalid_index(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape, shards=2)
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "model.safetensors.index.json")), BAD_JSON)


def case_medusa_full_sharded_missing_shard(tmp, base, shape):
    ckpt = medusa_full(tmp, base, *shape, shards=2)
    file = os.path.join(ckpt, "model-00002-of-00002.safetensors")
    os.remove(file)
    return Broken(ckpt, file, ("is missing", "copy it from the checkpoint"))


def case_hydra_truncated_heads(tmp, base, shape):
    ckpt = hydra(tmp, base)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "hydra_lm_head.pt")), CORRUPT)


def case_hydra_truncated_safetensors(tmp, base, shape):
    ckpt = hydra(tmp, base, safetensors=True)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "hydra_lm_head.safetensors")), CORRUPT)


def case_hydra_invalid_json(tmp, base, shape):
    ckpt = hydra(tmp, base)
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "config.json")), BAD_JSON)


def case_hydra_head_count_not_a_number(tmp, base, shape):
    ckpt = hydra(tmp, base)
    return Broken(ckpt, _edit_config(ckpt, hydra_num_heads="2x"), ("hydra_num_heads must be an integer",))


def case_hydra_heads_of_another_hidden_size(tmp, base, shape):
    from transformers import LlamaConfig

    other = LlamaConfig(vocab_size=shape[1], hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    ckpt = hydra(tmp, base, base_config=other)
    return Broken(ckpt, os.path.join(ckpt, "hydra_lm_head.pt"), ("hidden size 32", "base model has 64"))


def case_hydra_missing_base(tmp, base, shape):
    ckpt = hydra(tmp, base)
    file = _edit_config(ckpt, base_model_name_or_path=os.path.join(tmp, "gone"))
    return Broken(ckpt, file, NOT_A_FOLDER)


def case_chimera_truncated_parts(tmp, base, shape):
    def truncated(file):
        torch.save({"1.weight": torch.zeros(shape[0], 3 * shape[0])}, file)
        _truncate(file)

    ckpt = chimera_with_broken_parts(tmp, base, truncated)
    return Broken(ckpt, ckpt, CORRUPT + (".pt could not be read",))


def case_cllm_truncated_weights(tmp, base, shape):
    ckpt = cllm(tmp, base)
    return Broken(ckpt, _truncate(os.path.join(ckpt, "model.safetensors")), CORRUPT)


def case_cllm_config_with_wrong_hidden_size(tmp, base, shape):
    ckpt = cllm(tmp, base)
    return Broken(ckpt, _edit_config(ckpt, hidden_size=96), CONFIG_MISFIT + ("hidden_size=96",))


def case_cllm_config_with_wrong_head_count(tmp, base, shape):
    ckpt = cllm(tmp, base)
    return Broken(ckpt, _edit_config(ckpt, num_attention_heads=2), CONFIG_MISFIT + ("num_attention_heads=2",))


def case_cllm_invalid_json(tmp, base, shape):
    ckpt = copy_base(tmp, base, "consistency-llm-tiny")  # a CLLM by its name, as FastChat main matches it
    return Broken(ckpt, _corrupt_json(os.path.join(ckpt, "config.json")), BAD_JSON)


def case_cllm_without_tokenizer(tmp, base, shape):
    ckpt = remove_tokenizer(cllm(tmp, base))
    return Broken(ckpt, ckpt, NO_TOKENIZER)


def case_cllm_without_weights(tmp, base, shape):
    ckpt = cllm(tmp, base)
    os.remove(os.path.join(ckpt, "model.safetensors"))
    return Broken(ckpt, ckpt, ("no model weights", "model.safetensors"))


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_checkpoint_names_the_file(tmp_path, base_dir, base_shape, case):
    broken = CASES[case](str(tmp_path), base_dir, base_shape)
    with pytest.raises((ValueError, OSError)) as info:
        load_model(broken.path, device="cpu")
    message = str(info.value)
    assert broken.file in message, message
    for words in broken.says:
        assert words in message, f"{words!r} not in: {message}"


def test_base_override_to_a_missing_folder_names_the_variable(tmp_path, base_dir, base_shape, monkeypatch):
    ckpt = medusa_v01(str(tmp_path), base_dir, *base_shape)
    missing = os.path.join(str(tmp_path), "moved-away")
    monkeypatch.setenv("FASTCHAT_SPEC_BASE_MODEL", missing)
    with pytest.raises(FileNotFoundError, match=f"FASTCHAT_SPEC_BASE_MODEL={missing}"):
        load_model(ckpt, device="cpu")


# -- pickles that would run code -----------------------------------------------------------


class _RunsCode:
    """Unpickling this (without weights_only) creates the folder ``marker``: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _plant(file: str, marker: str, legacy: bool = False) -> str:
    """Add the payload to the state dict in ``file``, saved as torch.save does."""
    state = torch.load(file, weights_only=True)
    state["0.0.linear.weight"] = _RunsCode(marker)
    torch.save(state, file, _use_new_zipfile_serialization=not legacy)
    return file


def _plain_pickle(file: str, marker: str) -> str:
    """A plain ``pickle.dump`` of the payload under a weight file's name (not torch's format)."""
    with open(file, "wb") as f:
        pickle.dump({"0.0.linear.weight": _RunsCode(marker)}, f)
    return file


def _planted_medusa_v01(tmp, base, shape, marker):
    ckpt = medusa_v01(tmp, base, *shape)
    return ckpt, _plant(os.path.join(ckpt, "medusa_lm_head.pt"), marker)


def _planted_medusa_v01_legacy_format(tmp, base, shape, marker):
    ckpt = medusa_v01(tmp, base, *shape)
    return ckpt, _plant(os.path.join(ckpt, "medusa_lm_head.pt"), marker, legacy=True)


def _planted_medusa_v01_plain_pickle(tmp, base, shape, marker):
    ckpt = medusa_v01(tmp, base, *shape)
    return ckpt, _plain_pickle(os.path.join(ckpt, "medusa_lm_head.pt"), marker)


def _planted_hydra(tmp, base, shape, marker):
    ckpt = hydra(tmp, base)
    return ckpt, _plant(os.path.join(ckpt, "hydra_lm_head.pt"), marker)


def _planted_chimera(tmp, base, shape, marker):
    ckpt = chimera_with_broken_parts(tmp, base, lambda file: _plain_pickle(file, marker))
    return ckpt, ckpt


def _planted_medusa_full_bin(tmp, base, shape, marker):
    ckpt = medusa_full(tmp, base, *shape, pickled=True)
    return ckpt, _plant(os.path.join(ckpt, "pytorch_model.bin"), marker)


def _planted_cllm_bin(tmp, base, shape, marker):
    ckpt = cllm(tmp, base)
    state = load_file(os.path.join(ckpt, "model.safetensors"))
    os.remove(os.path.join(ckpt, "model.safetensors"))
    torch.save(state, os.path.join(ckpt, "pytorch_model.bin"))
    return ckpt, _plant(os.path.join(ckpt, "pytorch_model.bin"), marker)


PLANTED = {name[len("_planted_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("_planted_")}


def test_the_payload_runs_code_when_unpickled_unsafely(tmp_path):
    """The control: the same payload, loaded without weights_only, does run (so the tests below prove something)."""
    marker = os.path.join(str(tmp_path), "code-ran")
    file = _plain_pickle(os.path.join(str(tmp_path), "payload.pt"), marker)
    with open(file, "rb") as f:
        pickle.load(f)
    assert os.path.isdir(marker)


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_pickle_that_would_run_code_is_refused(tmp_path, base_dir, base_shape, case):
    marker = os.path.join(str(tmp_path), "code-ran")
    ckpt, file = PLANTED[case](str(tmp_path), base_dir, base_shape, marker)
    with pytest.raises(ValueError) as info:
        load_model(ckpt, device="cpu")
    assert not os.path.exists(marker), "the pickle's code ran"
    message = str(info.value)
    assert file in message, message
    for words in ("refused for safety", "os.makedirs", "weights_only=True", ".safetensors"):
        assert words in message, f"{words!r} not in: {message}"


# -- through FastChat's worker command ------------------------------------------------------


def _run_worker_until_exit(model_path: str, log_dir: str) -> tuple[int, str]:
    """Start FastChat's model worker on ``model_path``; its exit code and log once it exits."""
    port, controller_port = free_port(), free_port()  # no controller: a worker loads its model first
    args = ["--model-path", model_path, "--device", "cpu", "--host", "127.0.0.1", "--port", port,
            "--worker-address", f"http://127.0.0.1:{port}", "--controller-address",
            f"http://127.0.0.1:{controller_port}"]
    worker = ManagedProcess("model_worker", fastchat_module("model_worker", *args), server_env(None, log_dir),
                            log_dir)
    try:
        code = worker.proc.wait(timeout=WORKER_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker was still running after {WORKER_EXIT_TIMEOUT:.0f}s on a broken checkpoint:\n"
                    f"{worker.log()}")
    finally:
        worker.stop()
    return code, worker.log(tail=20000)


@pytest.mark.parametrize("case", ["planted_pickle", "truncated_base_weights"])
def test_worker_exits_with_the_error(tmp_path, base_dir, base_shape, case):
    tmp = str(tmp_path)
    marker = os.path.join(tmp, "code-ran")
    if case == "planted_pickle":
        ckpt, file = _planted_medusa_v01(tmp, base_dir, base_shape, marker)
        says = "refused for safety"
    else:
        broken = case_medusa_full_truncated_weights(tmp, base_dir, base_shape)
        ckpt, file, says = broken.path, broken.file, "corrupt or truncated"
    code, log = _run_worker_until_exit(ckpt, os.path.join(tmp, "logs"))
    assert code != 0, log
    assert file in log and says in log, log
    assert not os.path.exists(marker)
