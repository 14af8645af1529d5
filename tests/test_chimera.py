"""Chimera: trigram padding, drafting == training's teacher forcing, lossless sampling, layouts, training.

Both head architectures: ours (heads read the base's hidden state and the
encoder output) and the Chimera authors' released one (heads read the encoder
output alone), the latter from a checkpoint written here with the authors'
file and key names.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.adapters.chimera import write_chimera_checkpoint
from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.proposers.base import Committed
from fastchat_spec.generate.proposers.chimera import ChimeraProposer
from fastchat_spec.generate.sampling import SamplingParams
from fastchat_spec.generate.tree import Tree, chain
from fastchat_spec.heads.chimera import (
    HEAD_ARCHS,
    PAD_ID,
    ChimeraDrafter,
    new_drafter_for,
    trigram_ids,
)
from tests import tiny
from tests.tiny import CONTEXT, PROMPTS

pytestmark = pytest.mark.usefixtures("one_thread")

random_drafter = tiny.random_chimera_drafter  # scripts/gpu_check.py imports it from here


def save_seed_layout(out: str, drafter: ChimeraDrafter, base_dir: str, tree=None) -> str:
    """The Chimera authors' layout, written by hand: config.json and three torch.save'd state dicts."""
    os.makedirs(out, exist_ok=True)
    config = {"chimera_num_heads": drafter.num_heads, "chimera_num_layers": drafter.num_layers,
              "base_model_name_or_path": base_dir}
    if tree:
        config["chimera_choices"] = tree
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    torch.save(drafter.trimlp.state_dict(), os.path.join(out, "trimlp.pt"))
    torch.save(drafter.fast_layer1.state_dict(), os.path.join(out, "fast_layer1.pt"))
    torch.save(drafter.chimera_head.state_dict(), os.path.join(out, "chimera_head.pt"))
    return out


def authors_tensors(base, num_heads: int, num_layers: int, seed: int, head_in: str = "encoder") -> dict:
    """{file stem: state dict} of the Chimera authors' released layout, spelled out by their key names.

    ``trimlp`` = Sequential(ResBlock(3H), Linear(3H, H)); ``fast_layer1`` =
    Sequential(LlamaDecoderLayer), saved by transformers <= 4.30 with its rotary
    frequencies; ``chimera_head`` = per head ``[ResBlock(H)] * num_layers`` and
    Linear(H, V) reading the encoder output (``head_in="encoder"``), or, as in
    the authors' later code, a lone Linear(2H, V) reading ``[h_t; F]``
    (``head_in="hidden+encoder"``, no blocks). Random tiny weights.
    """
    cfg = base.config
    h, v, inter = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    head_dim = h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.05):
        return torch.randn(*shape, generator=gen) * std

    trimlp = {"0.linear.weight": rand(3 * h, 3 * h), "0.linear.bias": rand(3 * h), "1.weight": rand(h, 3 * h)}
    layer = {"self_attn.q_proj.weight": rand(q, h), "self_attn.k_proj.weight": rand(kv, h),
             "self_attn.v_proj.weight": rand(kv, h), "self_attn.o_proj.weight": rand(h, q),
             "mlp.gate_proj.weight": rand(inter, h), "mlp.up_proj.weight": rand(inter, h),
             "mlp.down_proj.weight": rand(h, inter), "input_layernorm.weight": 1 + rand(h),
             "post_attention_layernorm.weight": 1 + rand(h),
             "self_attn.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)}
    fast_layer1 = {f"0.{k}": t for k, t in layer.items()}
    chimera_head = {}
    for k in range(num_heads):
        if head_in == "encoder":
            block_w, block_b = rand(h, h), rand(h)  # one ResBlock object repeated: equal tensors per index
            for b in range(num_layers):
                chimera_head[f"{k}.{b}.linear.weight"], chimera_head[f"{k}.{b}.linear.bias"] = block_w, block_b
            chimera_head[f"{k}.{num_layers}.weight"] = rand(v, h)
        else:
            chimera_head[f"{k}.0.weight"] = rand(v, 2 * h)
    return {"trimlp": trimlp, "fast_layer1": fast_layer1, "chimera_head": chimera_head}


def save_authors_layout(out: str, tensors: dict, base_dir: str, num_layers: int = 1) -> str:
    """config.json as the authors' ChimeraConfig.save_pretrained writes it, and their three torch.save'd files."""
    os.makedirs(out, exist_ok=True)
    heads = 1 + max(int(key.split(".")[0]) for key in tensors["chimera_head"])
    config = {"base_model_name_or_path": base_dir, "chimera_num_heads": heads, "chimera_num_layers": num_layers,
              "transformers_version": "4.31.0"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    for name, state in tensors.items():
        torch.save(state, os.path.join(out, f"{name}.pt"))
    return out


# --------------------------------------------------------------------------- trigram padding
def test_trigram_ids_pad_before_the_start():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert trigram_ids(ids).tolist() == [[[PAD_ID, PAD_ID, 5], [PAD_ID, 5, 6], [5, 6, 7], [6, 7, 8]]]


def test_trigram_features_use_zero_vectors_for_padding(base_model):
    drafter = random_drafter(base_model, 1)
    embed = base_model.get_input_embeddings()
    got = drafter.trigram(embed, trigram_ids(torch.tensor([[5, 6, 7]])))[0]
    e = embed.weight.detach()
    zero = torch.zeros_like(e[0])
    expected = [torch.cat([zero, zero, e[5]]), torch.cat([zero, e[5], e[6]]), torch.cat([e[5], e[6], e[7]])]
    with torch.no_grad():
        for t, x in enumerate(expected):
            torch.testing.assert_close(got[t], drafter.trimlp(x))


# --------------------------------------------------------------------------- drafting == training
@pytest.mark.parametrize("tree", [chain(3), Tree.from_paths([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0],
                                                             [0, 1, 0], [1, 0, 1]])],
                         ids=["chain", "tree"])
@pytest.mark.parametrize("head_arch", HEAD_ARCHS)
def test_drafts_equal_teacher_forced_heads(base_model, tree, head_arch):
    """Every draft token is the rank-r guess of training's teacher-forced head along the node's path.

    This ties the proposer (encoder KV cache written by observe, one encoder
    call per depth, trigrams across the committed/draft boundary) to the
    training formulation, including a prompt of one token (padded trigrams).
    """
    drafter = random_drafter(base_model, 3, seed=1, head_arch=head_arch)
    embed, rotary = base_model.get_input_embeddings(), base_model.get_decoder().rotary_emb
    torch.manual_seed(2)
    ids = torch.randint(3, base_model.config.vocab_size, (16,))
    with torch.no_grad():
        hidden = base_model.get_decoder()(ids.view(1, -1)).last_hidden_state[0]
        for committed in (1, 2, 7, 12):
            proposer = ChimeraProposer(drafter, base_model, tree, torch.device("cpu"), capacity=64)
            cut = max(1, committed // 2)  # two commits: the cache is advanced twice
            proposer.observe(Committed.prompt(ids[:cut], hidden[:cut], None))
            if committed > cut:
                rows = torch.arange(committed - cut)
                proposer.observe(Committed(hidden[cut:committed], rows, rows[-1:], ids[cut:committed],
                                           torch.tensor(cut)))
            tokens = torch.cat([ids[committed:committed + 1], proposer.propose(ids[committed])])
            for node, path in enumerate(tree.paths, start=1):
                nodes = tree.path_nodes[node][: len(path) + 1].tolist()  # root .. node
                seq = torch.cat([ids[:committed], tokens[nodes[:-1]]]).view(1, -1)
                seq_hidden = base_model.get_decoder()(seq).last_hidden_state
                k = len(path) - 1
                logits = drafter.teacher_forced_logits(k, embed, rotary, torch.cat([seq, seq[:, :1]], 1),
                                                       torch.cat([seq_hidden, seq_hidden[:, :1]], 1))
                ranked = logits[0, committed - 1].topk(path[-1] + 1).indices
                assert int(tokens[node]) == int(ranked[path[-1]]), (committed, path)


# --------------------------------------------------------------------------- lossless sampling
def test_sampling_matches_the_base_distribution(tmp_path, base_model, base_dir):
    """Law of the second sampled token (the first one a speculative step makes) vs the exact marginal.

    The prompt ends in the base's own greedy loop and the temperature is 0.5,
    so drafts are accepted in a good share of the samples and rejected in the
    rest: both branches of the rejection sampler are exercised.
    """
    ckpt = write_chimera_checkpoint(str(tmp_path / "chimera-sample"), new_drafter_for(base_model, 2), base_dir,
                                    tree=[[0], [1], [2], [3], [0, 0], [1, 0]])
    model, tok = load_model(ckpt, device="cpu")
    prompt = _greedy_continuation(base_model, tok("The cat runs over the house.").input_ids, 30)
    temperature, samples = 0.5, 500
    sampling = SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, repetition_penalty=1.0)
    torch.manual_seed(0)
    counts: dict[int, int] = {}
    accepted = 0
    for _ in range(samples):
        gen = Generation(model, prompt, 4, sampling)
        gen.prefill()
        out = gen.step()
        accepted += len(out) > 1
        counts[out[0]] = counts.get(out[0], 0) + 1
    assert 0.05 * samples < accepted < 0.95 * samples, accepted
    exact = _exact_second_token(base_model, prompt, temperature)
    assert _chi_square_p_value(counts, exact, samples) > 1e-3


def _greedy_continuation(base, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        for _ in range(n):
            ids = ids + [int(base(torch.tensor([ids])).logits[0, -1].argmax())]
    return ids


def _exact_second_token(base, prompt: list[int], temperature: float, floor: float = 1e-4) -> dict:
    """{token: P(second sampled token = token)}, summed over the first token's likely values."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        p1 = torch.softmax(base(ids).logits[0, -1].float() / temperature, -1)
        out = {}
        for t1 in (p1 > floor).nonzero().flatten().tolist():
            p2 = torch.softmax(base(torch.cat([ids, torch.tensor([[t1]])], 1)).logits[0, -1].float() / temperature,
                               -1)
            for t2 in (p2 > floor).nonzero().flatten().tolist():
                out[t2] = out.get(t2, 0.0) + float(p1[t1] * p2[t2])
    return out


def _chi_square_p_value(counts: dict, probs: dict, n: int) -> float:
    """Pearson's test over outcomes expected >= 5 times, the rest pooled into one bin."""
    big = [k for k, p in probs.items() if p * n >= 5]
    observed = [counts.get(k, 0) for k in big]
    expected = [probs[k] * n for k in big]
    observed.append(n - sum(observed))
    expected.append(n - sum(expected))
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    dof = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(stat / 2.0)))


# --------------------------------------------------------------------------- checkpoint layout
def test_seed_layout_loads_through_fastchat(tmp_path, base_model, base_dir):
    drafter = random_drafter(base_model, 3, seed=7)
    ckpt = save_seed_layout(str(tmp_path / "chimera-seed"), drafter, base_dir, tree=[[0], [0, 0], [1]])
    from fastchat.model.model_adapter import get_model_adapter

    from fastchat_spec.adapters.chimera import ChimeraAdapter

    assert isinstance(get_model_adapter(ckpt), ChimeraAdapter)
    model, _ = load_model(ckpt, device="cpu")
    assert (model.spec.num_heads, model.spec.num_layers, model.spec.tree) == (3, 1, [[0], [0, 0], [1]])
    loaded = model.drafter.state_dict()
    for key, value in drafter.state_dict().items():
        torch.testing.assert_close(loaded[key], value)
    assert not any(k.startswith(("embed", "rotary")) for k in loaded)  # the base's parts are not saved


def test_safetensors_layout_round_trips(tmp_path, base_model, base_dir):
    drafter = random_drafter(base_model, 2, seed=8)
    ckpt = write_chimera_checkpoint(str(tmp_path / "chimera-st"), drafter, base_dir)
    assert {"trimlp.safetensors", "fast_layer1.safetensors", "chimera_head.safetensors"} <= set(os.listdir(ckpt))
    model, _ = load_model(ckpt, device="cpu")
    torch.testing.assert_close(model.drafter.chimera_head[1][-1].weight, drafter.chimera_head[1][-1].weight)


def test_missing_and_corrupt_files_are_named(tmp_path, base_model, base_dir):
    ckpt = save_seed_layout(str(tmp_path / "chimera-broken"), random_drafter(base_model, 2), base_dir)
    os.remove(os.path.join(ckpt, "fast_layer1.pt"))
    with pytest.raises(FileNotFoundError, match="fast_layer1"):
        load_model(ckpt, device="cpu")
    ckpt = save_seed_layout(str(tmp_path / "chimera-corrupt"), random_drafter(base_model, 2), base_dir)
    with open(os.path.join(ckpt, "chimera_head.pt"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"(?s)chimera_head.pt.*corrupt"):
        load_model(ckpt, device="cpu")


class _NotATensor:
    pass


def test_pickles_are_read_weights_only(tmp_path, base_model, base_dir):
    ckpt = save_seed_layout(str(tmp_path / "chimera-pickle"), random_drafter(base_model, 2), base_dir)
    torch.save({"0.linear.weight": _NotATensor()}, os.path.join(ckpt, "trimlp.pt"))
    with pytest.raises(ValueError, match="trimlp.pt"):
        load_model(ckpt, device="cpu")


def test_hidden_and_vocab_mismatches_are_refused(tmp_path, base_model, base_dir):
    from transformers import LlamaConfig

    other = LlamaConfig(vocab_size=base_model.config.vocab_size, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    ckpt = save_seed_layout(str(tmp_path / "chimera-hidden"), ChimeraDrafter(other, 2), base_dir)
    with pytest.raises(ValueError, match="hidden size 32"):
        load_model(ckpt, device="cpu")
    drafter = random_drafter(base_model, 2)
    ckpt = save_seed_layout(str(tmp_path / "chimera-vocab"), drafter, base_dir)
    heads = {k: (v[:-5] if k.endswith(".1.weight") else v) for k, v in drafter.chimera_head.state_dict().items()}
    torch.save(heads, os.path.join(ckpt, "chimera_head.pt"))
    with pytest.raises(ValueError, match="predict"):
        load_model(ckpt, device="cpu")


# --------------------------------------------------------------------------- the authors' released layout
@pytest.mark.parametrize("num_layers,head_in,arch", [(2, "encoder", "published"), (0, "hidden+encoder", "residual")],
                         ids=["encoder-heads", "later-2H-linear-heads"])
def test_authors_layout_loads_tensor_for_tensor(tmp_path, base_model, base_dir, num_layers, head_in, arch):
    """Their files and key names load as they are; the head architecture comes from the head weights
    (greedy decoding of both architectures: tests/test_exactness.py)."""
    from fastchat.model.model_adapter import get_model_adapter

    from fastchat_spec.adapters.chimera import ChimeraAdapter

    tensors = authors_tensors(base_model, num_heads=3, num_layers=num_layers, seed=3, head_in=head_in)
    ckpt = save_authors_layout(str(tmp_path / "chimera-authors"), tensors, base_dir, num_layers=max(num_layers, 1))
    assert isinstance(get_model_adapter(ckpt), ChimeraAdapter)
    model, _ = load_model(ckpt, device="cpu")
    assert (model.spec.num_heads, model.spec.num_layers) == (3, num_layers)
    assert model.spec.options["chimera_head_arch"] == model.drafter.head_arch == arch
    for part, state in tensors.items():
        loaded = getattr(model.drafter, part).state_dict()
        expected = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
        assert set(loaded) == set(expected), part
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value)


def test_authors_layout_contradictions_are_named(tmp_path, base_model, base_dir):
    tensors = authors_tensors(base_model, num_heads=2, num_layers=1, seed=5)
    ckpt = save_authors_layout(str(tmp_path / "chimera-declared"), tensors, base_dir)
    config_file = os.path.join(ckpt, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    with open(config_file, "w") as f:
        json.dump({**config, "chimera_head_arch": "residual"}, f)
    with pytest.raises(ValueError, match=r"(?s)chimera_head_arch='residual'.*chimera_head.pt.*'published'"):
        load_model(ckpt, device="cpu")
    with open(config_file, "w") as f:
        json.dump({**config, "chimera_head_arch": "mlp"}, f)
    with pytest.raises(ValueError, match="not one of"):
        load_model(ckpt, device="cpu")
    with open(config_file, "w") as f:
        json.dump(config, f)
    torch.save(tensors["fast_layer1"], os.path.join(ckpt, "fast_layer0.pt"))
    with pytest.raises(NotImplementedError, match="fast_layer0"):
        load_model(ckpt, device="cpu")


# --------------------------------------------------------------------------- training
def fastchat_json(path: str, n: int, seed: int) -> str:
    lines = tiny.corpus(2 * n, seed=seed)
    convs = [{"id": f"c{seed}_{i}", "conversations": [
        {"from": "human", "value": lines[2 * i]},
        {"from": "gpt", "value": f"{lines[2 * i + 1]} {lines[2 * i]} {lines[2 * i + 1]}"}]} for i in range(n)]
    with open(path, "w") as f:
        json.dump(convs, f)
    return path


@pytest.mark.parametrize("head_arch", HEAD_ARCHS)
def test_training_steps_lower_the_loss(base_model, base_dir, tmp_path, head_arch):
    from transformers import AutoTokenizer

    from fastchat_spec.train import dataset as common  # supervised_dataset, Collator (train/common.py was split)
    from fastchat_spec.train.chimera import ChimeraTraining

    tok = AutoTokenizer.from_pretrained(base_dir, use_fast=False)
    tok.pad_token = tok.unk_token
    data = common.supervised_dataset(tok, fastchat_json(str(tmp_path / "d.json"), 4, seed=1), 512)
    batch = common.Collator(tok.pad_token_id)([data[i] for i in range(4)])
    torch.manual_seed(0)
    model = ChimeraTraining(base_model, new_drafter_for(base_model, 2, head_arch=head_arch))
    optimizer = torch.optim.AdamW(model.drafter.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, logs = model(**batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert {"head0_loss", "head0_top1", "head1_kl"} <= set(logs)
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in base_model.parameters())  # the frozen base gets no gradient


def test_train_cli_writes_a_checkpoint_that_serves_and_evaluates(tmp_path, base_dir, stock_texts, capsys):
    from fastchat_spec.train import chimera, chimera_eval

    out = tmp_path / "chimera-vicuna-tiny"
    train_file = fastchat_json(str(tmp_path / "train.json"), 8, seed=2)
    eval_file = fastchat_json(str(tmp_path / "eval.json"), 2, seed=3)
    report = chimera.train([
        "--model_name_or_path", base_dir, "--data_path", train_file, "--eval_data_path", eval_file,
        "--output_dir", str(out), "--chimera_num_heads", "2", "--chimera_num_layers", "1",
        "--model_max_length", "512", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "2",
        "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "True", "--tree_nodes", "8",
    ])
    assert {"config.json", "trimlp.pt", "fast_layer1.pt", "chimera_head.pt", "train_report.json"} <= \
        set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["chimera_num_heads"] == 2 and len(config["chimera_choices"]) == 8
    assert set(report["heads"]) == {"head0", "head1"}

    model, tok = load_model(str(out), device="cpu")  # the relative base path resolves
    ours = list(get_generate_stream_function(model, str(out))(model, tok, tiny.greedy(PROMPTS[0]), "cpu", CONTEXT))
    assert ours[-1]["text"] == stock_texts[PROMPTS[0]]

    result = chimera_eval.main(["--model-path", str(out), "--data_path", eval_file, "--prompt", "how are you?",
                                "--max-new-tokens", "8", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "head0" in printed and "head1" in printed and "given it, the heads guess" in printed
    assert set(result["data"]["heads"]) == set(result["prompt"]["heads"]) == {"head0", "head1"}


def test_train_cli_published_heads_write_the_authors_layout(tmp_path, base_model, base_dir, stock_texts):
    """``--chimera_head_arch published`` trains heads that read the encoder output alone, saved under the
    authors' file and key names, and the checkpoint serves FastChat's greedy text."""
    from fastchat_spec.train import chimera

    out = tmp_path / "chimera-published-tiny"
    chimera.train([
        "--model_name_or_path", base_dir, "--data_path", fastchat_json(str(tmp_path / "train.json"), 8, seed=4),
        "--output_dir", str(out), "--chimera_num_heads", "2", "--chimera_num_layers", "1",
        "--chimera_head_arch", "published", "--model_max_length", "512", "--per_device_train_batch_size", "4",
        "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "True", "--tree_nodes", "8",
    ])
    assert {"trimlp.pt", "fast_layer1.pt", "chimera_head.pt"} <= set(os.listdir(out))
    assert json.loads((out / "config.json").read_text())["chimera_head_arch"] == "published"
    h, v = base_model.config.hidden_size, base_model.config.vocab_size
    heads = torch.load(out / "chimera_head.pt", weights_only=True)
    assert {k: tuple(t.shape) for k, t in heads.items()} == {
        f"{k}.{name}": shape for k in range(2)
        for name, shape in [("0.linear.weight", (h, h)), ("0.linear.bias", (h,)), ("1.weight", (v, h))]}

    model, tok = load_model(str(out), device="cpu")
    assert model.drafter.head_arch == "published"
    ours = list(get_generate_stream_function(model, str(out))(model, tok, tiny.greedy(PROMPTS[1]), "cpu", CONTEXT))
    assert ours[-1]["text"] == stock_texts[PROMPTS[1]]
