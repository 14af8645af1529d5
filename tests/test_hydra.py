"""Hydra and Hydra++: drafting == training's teacher forcing, lossless sampling, published layout, training.

Greedy text against FastChat's, for every method: tests/test_exactness.py.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter

import pytest
import torch
from fastchat.model.model_adapter import (
    get_generate_stream_function,
    get_model_adapter,
    load_model,
)

from fastchat_spec.adapters.hydra import HydraAdapter, write_hydra_checkpoint
from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.sampling import SamplingParams
from fastchat_spec.generate.tree import chain
from fastchat_spec.heads.hydra import HydraHeads, PrefixLayer
from tests import tiny
from tests.tiny import CONTEXT, PROMPTS

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("mlp", "prefix-mlp")
oracle_heads = tiny.oracle_hydra_heads  # scripts/gpu_check.py imports it from here


def random_heads(base, num_heads: int, arch: str, seed: int = 1) -> HydraHeads:
    torch.manual_seed(seed)
    heads = HydraHeads(base.config, num_heads, 2, arch=arch)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.05)
    return heads.eval()


def base_hidden(base, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return base.model(input_ids=torch.tensor([ids])).last_hidden_state  # (1, T, H)


# --------------------------------------------------------------------------- drafting == teacher forcing
@pytest.mark.parametrize("arch", ARCHS)
def test_drafts_equal_teacher_forced_heads(tmp_path, base_model, base_dir, arch):
    """The proposer (incremental prefix cache, depth-by-depth heads) computes what training computes."""
    ckpt = str(tmp_path / f"hydra-{arch}")
    write_hydra_checkpoint(ckpt, oracle_heads(base_model, 3, arch), base_dir, tree=chain(3).to_list())
    model, tok = load_model(ckpt, device="cpu")
    gen = Generation(model, tok(PROMPTS[0]).input_ids, 48, SamplingParams(0.0, 1.0, -1, 1.0))
    gen.prefill()
    accepted = 0
    for _ in range(6):
        accepted += len(gen.step()) - 1
    assert accepted > 0, "the oracle heads should have several tokens accepted (multi-token commits)"
    heads = model.drafter
    committed = gen.ids[: gen.cur].tolist()
    with torch.no_grad():
        draft = gen.proposer.propose(torch.tensor(gen.root)).tolist()
        feature = heads.feature(base_hidden(model.base, committed))  # (1, T, H) over the whole history
        assert torch.allclose(gen.proposer.feature[0], feature[0, -1], atol=1e-4)
        seq = torch.tensor([committed + [gen.root] + draft])
        embeds = model.base.get_input_embeddings()(seq)
        last = torch.tensor([gen.cur - 1])
        feature = torch.cat([feature, feature.new_zeros(1, seq.shape[1] - feature.shape[1], feature.shape[2])], 1)
        for i in range(3):
            x = heads.teacher_forced_input(i, feature, embeds, torch.tensor([0]), last)
            logits, _ = heads.head(i, x)
            assert int(logits.argmax()) == draft[i]


# --------------------------------------------------------------------------- sampling is lossless
SAMPLES = 1500
TEMPERATURE = 0.15  # this tiny base is flat: a low temperature gives a few likely pairs


def _exact_pairs(base, prompt: list[int]) -> torch.Tensor:
    """P(first, second) of the base at TEMPERATURE: (V, V)."""
    with torch.no_grad():
        first = torch.softmax(base(torch.tensor([prompt])).logits[0, -1].double() / TEMPERATURE, -1)
        vocab = first.shape[0]
        batch = torch.cat([torch.tensor([prompt]).expand(vocab, -1), torch.arange(vocab).view(-1, 1)], 1)
        second = torch.softmax(base(batch).logits[:, -1].double() / TEMPERATURE, -1)
    return first[:, None] * second


def _chi_square_p_value(counts: Counter, exact: torch.Tensor, n: int) -> tuple[float, int]:
    """Pearson's test over pairs expected >= 5 times plus one bin for the rest; (p-value, bins)."""
    expected = exact * n
    keep = (expected >= 5).nonzero().tolist()
    observed = [counts.get(tuple(k), 0) for k in keep]
    wanted = [float(expected[a, b]) for a, b in keep]
    observed.append(n - sum(observed))
    wanted.append(n - sum(wanted))
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, wanted) if e > 0)
    dof = len(observed) - 1
    # Wilson-Hilferty: (stat / dof)^(1/3) is close to normal.
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2)), len(observed)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_matches_the_base_distribution(tmp_path, base_model, base_dir, arch):
    """The first two tokens (prefill, then one speculative step) against the base's exact joint."""
    ckpt = str(tmp_path / f"hydra-{arch}")
    write_hydra_checkpoint(ckpt, oracle_heads(base_model, 2, arch), base_dir, tree=[[0], [1], [2], [0, 0], [1, 0]])
    model, tok = load_model(ckpt, device="cpu")
    prompt = tok("The dog jumps").input_ids
    sampling = SamplingParams(TEMPERATURE, 1.0, -1, 1.0)
    torch.manual_seed(1234)
    counts, accepted = Counter(), 0
    for _ in range(SAMPLES):
        gen = Generation(model, prompt, 4, sampling)
        first = gen.prefill()[0]
        step = gen.step()
        accepted += len(step) > 1
        counts[(first, step[0])] += 1
    p_value, bins = _chi_square_p_value(counts, _exact_pairs(model.base, prompt), SAMPLES)
    assert p_value > 1e-3, (p_value, counts.most_common(8))
    assert bins > 10, "the test must really sample"
    assert SAMPLES // 10 < accepted < SAMPLES * 9 // 10, "drafts should be both accepted and rejected"


# --------------------------------------------------------------------------- the published layout
def published_state(base, num_heads: int, num_layers: int, arch: str, seed: int = 0) -> dict:
    """A ``hydra_lm_head.pt`` state dict as zankner/Hydra saves it, key by key.

    The prefix-mlp heads have a dropout before each block and the lm_head; the
    blocks after the first share one module (one tensor under several keys);
    the file also holds the base embeddings and, for Hydra++, a whole
    one-layer LlamaModel.
    """
    from transformers import LlamaConfig, LlamaModel

    g = torch.Generator().manual_seed(seed)
    hidden, vocab = base.config.hidden_size, base.config.vocab_size

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    slot = (lambda j: 2 * j + 1) if arch == "prefix-mlp" else (lambda j: j)
    state = {}
    for i in range(num_heads):
        first = f"hydra_mlp.{i}.{slot(0)}"
        state.update({f"{first}.linear.weight": w(hidden, hidden * (i + 2)), f"{first}.linear.bias": w(hidden),
                      f"{first}.res_connection.weight": w(hidden, hidden * (i + 2)),
                      f"{first}.res_connection.bias": w(hidden)})
        shared_w, shared_b = w(hidden, hidden), w(hidden)
        for j in range(1, num_layers):
            state[f"hydra_mlp.{i}.{slot(j)}.linear.weight"] = shared_w
            state[f"hydra_mlp.{i}.{slot(j)}.linear.bias"] = shared_b
        lm = f"hydra_lm_head.{i}.1" if arch == "prefix-mlp" else f"hydra_lm_head.{i}"
        state[f"{lm}.weight"], state[f"{lm}.bias"] = w(vocab, hidden), w(vocab)
    state["input_embed_fn.weight"] = base.get_input_embeddings().weight.detach().clone()
    if arch == "prefix-mlp":
        config = LlamaConfig(**{**base.config.to_dict(), "num_hidden_layers": 1})
        torch.manual_seed(seed)
        prefix = LlamaModel(config)
        state.update({f"prefix_embeding_layer.{k}": v for k, v in prefix.state_dict().items()})
    return state


def write_published(out: str, state: dict, base_dir: str, arch: str, num_heads: int, num_layers: int) -> str:
    os.makedirs(out, exist_ok=True)
    config = {"hydra_num_heads": num_heads, "hydra_num_layers": num_layers, "hydra_head_arch": arch,
              "base_model_name_or_path": base_dir, "grounded_heads": True, "hidden_state_offset": 0,
              "model_type": "", "transformers_version": "4.37.2"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    torch.save(state, os.path.join(out, "hydra_lm_head.pt"))
    return out


def _by_hand_head(state: dict, i: int, num_layers: int, arch: str, x: torch.Tensor) -> torch.Tensor:
    """Head i's logits computed straight from the published tensors."""
    slot = (lambda j: 2 * j + 1) if arch == "prefix-mlp" else (lambda j: j)
    silu = torch.nn.functional.silu
    lin = lambda p, v: v @ state[f"{p}.weight"].T + state[f"{p}.bias"]
    first = f"hydra_mlp.{i}.{slot(0)}"
    h = lin(f"{first}.res_connection", x) + silu(lin(f"{first}.linear", x))
    for j in range(1, num_layers):
        h = h + silu(lin(f"hydra_mlp.{i}.{slot(j)}.linear", h))
    return lin(f"hydra_lm_head.{i}.1" if arch == "prefix-mlp" else f"hydra_lm_head.{i}", h)


@pytest.mark.parametrize("arch", ARCHS)
def test_published_layout_loads_through_fastchat(tmp_path, base_model, base_dir, arch):
    from transformers import LlamaConfig, LlamaModel

    heads_n, layers = 3, 3
    state = published_state(base_model, heads_n, layers, arch)
    ckpt = write_published(str(tmp_path / f"hydra-vicuna-{arch}"), state, base_dir, arch, heads_n, layers)
    assert isinstance(get_model_adapter(ckpt), HydraAdapter)
    model, tok = load_model(ckpt, device="cpu")
    drafter = model.drafter
    assert isinstance(drafter, HydraHeads) and drafter.arch == arch and drafter.grounded
    assert (model.spec.num_heads, model.spec.num_layers) == (heads_n, layers)
    assert not any(k.startswith("input_embed_fn") or "embed_tokens" in k for k in drafter.state_dict()), \
        "the base embeddings are not copied"
    torch.manual_seed(0)
    hidden = base_model.config.hidden_size
    with torch.no_grad():
        for i in range(heads_n):
            x = torch.randn(4, hidden * (i + 2))
            assert torch.allclose(drafter.head(i, x)[0], _by_hand_head(state, i, layers, arch, x), atol=1e-5)
        if arch == "prefix-mlp":  # our prefix layer computes what the published one-layer LlamaModel does
            reference = LlamaModel(LlamaConfig(**{**base_model.config.to_dict(), "num_hidden_layers": 1}))
            reference.load_state_dict({k[len("prefix_embeding_layer."):]: v for k, v in state.items()
                                       if k.startswith("prefix_embeding_layer.")})
            h = torch.randn(1, 7, hidden)
            assert torch.allclose(drafter.feature(h), reference(inputs_embeds=h).last_hidden_state, atol=1e-5)


def test_ungrounded_heads_load_as_ungrounded(tmp_path, base_model, base_dir):
    """grounded_heads=false: Medusa-like heads in the Hydra layout (decoded in tests/test_exactness.py)."""
    heads = HydraHeads(base_model.config, 2, 1, arch="mlp", grounded=False)
    ckpt = write_hydra_checkpoint(str(tmp_path / "hydra-ungrounded"), heads, base_dir, safetensors=False)
    model, _ = load_model(ckpt, device="cpu")
    assert not model.drafter.grounded and model.spec.num_heads == 2


# --------------------------------------------------------------------------- errors name the fix
def _config(ckpt: str, **changes) -> None:
    file = os.path.join(ckpt, "config.json")
    with open(file) as f:
        config = json.load(f)
    config.update(changes)
    with open(file, "w") as f:
        json.dump(config, f)


def test_errors_name_the_file_and_the_fix(tmp_path, base_model, base_dir):
    ckpt = str(tmp_path / "hydra-broken")
    write_hydra_checkpoint(ckpt, random_heads(base_model, 2, "mlp"), base_dir, safetensors=False)
    weights = os.path.join(ckpt, "hydra_lm_head.pt")

    _config(ckpt, hidden_state_offset=2)
    with pytest.raises(NotImplementedError, match="hidden_state_offset"):
        load_model(ckpt, device="cpu")
    _config(ckpt, hidden_state_offset=0, hydra_head_arch="cross-attn")
    with pytest.raises(NotImplementedError, match="hydra_head_arch"):
        load_model(ckpt, device="cpu")
    _config(ckpt, hydra_head_arch="prefix-mlp")  # the file holds mlp heads
    with pytest.raises(ValueError, match="hydra_head_arch"):
        load_model(ckpt, device="cpu")
    _config(ckpt, hydra_head_arch="mlp")

    with open(weights, "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(ckpt, device="cpu")
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="hydra_lm_head"):
        load_model(ckpt, device="cpu")

    config = base_model.config.to_dict()
    small = type(base_model.config)(**{**config, "hidden_size": 32, "intermediate_size": 64})
    write_hydra_checkpoint(ckpt, HydraHeads(small, 2, 1), base_dir)
    with pytest.raises(ValueError, match="hidden size 32"):
        load_model(ckpt, device="cpu")


def test_prefix_layer_is_built_from_transformers_classes(base_model):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layer = PrefixLayer(base_model.config)
    assert isinstance(layer.layers[0], LlamaDecoderLayer) and len(layer.layers) == 1
    assert base_model.config.num_hidden_layers == 2, "the base config is not modified"


# --------------------------------------------------------------------------- training round trip
def fastchat_json(path: str, n: int, seed: int) -> str:
    lines = tiny.corpus(2 * n, seed=seed)
    convs = [{"id": f"t{i}_0", "conversations": [{"from": "human", "value": lines[2 * i]},
                                                 {"from": "gpt", "value": lines[2 * i + 1]}]} for i in range(n)]
    with open(path, "w") as f:
        json.dump(convs, f)
    return path


def test_training_lowers_the_loss_and_the_checkpoint_serves(tmp_path, base_dir, stock_texts):
    from fastchat_spec.train.hydra import train

    data = fastchat_json(str(tmp_path / "train.json"), 60, seed=5)
    out = str(tmp_path / "hydra-trained")
    report = train([
        "--model_name_or_path", base_dir, "--data_path", data, "--output_dir", out,
        "--medusa_num_heads", "2", "--medusa_num_layers", "1", "--hydra_head_arch", "prefix-mlp",
        "--teacher_loss_weight", "1.0", "--lm_loss_weight", "0.5", "--reconstruction_loss_weight", "0.1",
        "--embedding_noise", "1.0", "--per_device_train_batch_size", "4", "--max_steps", "12",
        "--learning_rate", "3e-3", "--warmup_ratio", "0", "--model_max_length", "320", "--logging_steps", "1",
        "--use_cpu", "True", "--dataloader_num_workers", "0", "--heldout_fraction", "0.1", "--seed", "0",
        "--per_device_eval_batch_size", "8",
    ])
    losses = [e["loss"] for e in report["log_history"] if "loss" in e]
    assert len(losses) >= 10 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert report["hydra_choices"] and report["rank_accuracy"]
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["hydra_head_arch"] == "prefix-mlp" and config["hydra_num_heads"] == 2
    model, tok = load_model(out, device="cpu")
    assert model.drafter.has_prefix
    stream = get_generate_stream_function(model, out)
    assert list(stream(model, tok, tiny.greedy(PROMPTS[0]), "cpu", CONTEXT))[-1]["text"] == stock_texts[PROMPTS[0]]


def test_training_flags_are_checked():
    from fastchat_spec.train.hydra import HydraArguments

    assert HydraArguments(hydra_num_decoder_layers=1).resolve().hydra_head_arch == "prefix-mlp"
    assert HydraArguments().resolve().hydra_head_arch == "mlp"
    with pytest.raises(SystemExit, match="contradicts"):
        HydraArguments(hydra_head_arch="mlp", hydra_num_decoder_layers=1).resolve()
    with pytest.raises(NotImplementedError, match="hidden_state_offset"):
        HydraArguments(hidden_state_offset=1).resolve()
