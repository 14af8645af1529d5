"""How often each Chimera head guesses right: held-out conversations or a single prompt.

Head k (0-based) guesses the token k+2 places after the last token the base
has run: for the text "how are you? assistant:" the base itself picks "I",
and head 0, given "I", guesses "am", which is what gets scored. Every head is
scored teacher-forced, i.e. with the tokens before its target all right, the
only case in which its guess is ever verified.

* ``--data_path HELDOUT.json`` (FastChat JSON): top-1/top-5 of every head on
  the answer tokens, as in training's held-out report.
* ``--prompt TEXT``: the base's greedy continuation of TEXT (or of TEXT as a
  user turn of the model's chat template with ``--chat``), the heads' guesses
  along it, and their top-1/top-5 against it.

Examples::

    python -m fastchat_spec.train.chimera_eval --model-path chimera-vicuna-small --data_path heldout.json
    python -m fastchat_spec.train.chimera_eval --model-path chimera-vicuna-small \\
        --prompt "how are you? assistant:"
"""
from __future__ import annotations

import argparse
import sys

import torch

from fastchat_spec.train.chimera import ChimeraTraining, chimera_predict
from fastchat_spec.train.data import read_fastchat_json
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator, supervised_dataset
from fastchat_spec.train.losses import topk_accuracy
from fastchat_spec.train.report import evaluate_heads, format_head_table
from fastchat_spec.train.trainer import base_hidden_states


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastchat_spec.train.chimera_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", "--model_path", dest="model_path", required=True,
                   help="Chimera checkpoint folder (config.json with chimera_num_heads, trimlp/fast_layer1/"
                        "chimera_head weights); its base is found through base_model_name_or_path.")
    p.add_argument("--data_path", "--data-path", dest="data_path",
                   help="Held-out conversations in FastChat JSON: per-head accuracy on the answer tokens.")
    p.add_argument("--prompt", help="A text whose greedy continuation the heads are scored on.")
    p.add_argument("--chat", action="store_true",
                   help="Wrap --prompt as a user turn in the model's conversation template.")
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=32,
                   help="Length of the greedy continuation scored for --prompt (default 32).")
    p.add_argument("--max-conversations", "--max_conversations", dest="max_conversations", type=int,
                   help="Score only the first N conversations of --data_path.")
    p.add_argument("--model_max_length", "--model-max-length", dest="model_max_length", type=int, default=2048,
                   help="Tokens per conversation; longer ones are truncated (default 2048).")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                   help="Conversations per forward pass (default 8).")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when available).")
    return p


def load_chimera(model_path: str, device: str):
    """(SpecModel, tokenizer) through FastChat's load_model, which picks our Chimera adapter."""
    from fastchat.model.model_adapter import load_model

    import fastchat_spec

    fastchat_spec.register()
    model, tokenizer = load_model(model_path, device=device, num_gpus=1)
    spec = getattr(model, "spec", None)
    if spec is None or spec.method != "chimera":
        raise SystemExit(f"{model_path} is not a Chimera checkpoint (its config.json needs chimera_num_heads)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token  # FastChat's preprocess pads
    return model, tokenizer


def evaluate_data(training: ChimeraTraining, tokenizer, path: str, max_len: int, batch_size: int,
                  limit: int | None = None) -> dict:
    convs = read_fastchat_json(path)[:limit]
    dataset = supervised_dataset(tokenizer, convs, max_len)
    return evaluate_heads(training, dataset, chimera_predict, Collator(tokenizer.pad_token_id), batch_size=batch_size)


@torch.no_grad()
def evaluate_prompt(training: ChimeraTraining, tokenizer, text: str, max_new_tokens: int) -> dict:
    """The heads along the base's greedy continuation of ``text``; prints what they guessed."""
    base = training.base
    device = next(base.parameters()).device
    prompt = tokenizer(text, return_tensors="pt").input_ids.to(device)
    ids = base.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id or 0)
    p, total = prompt.shape[1], ids.shape[1]
    hidden, _ = base_hidden_states(base, ids, with_logits=False)
    labels = torch.full_like(ids, IGNORE_TOKEN_ID)
    labels[:, p:] = ids[:, p:]  # score only the continuation
    preds = training.head_predictions(ids, labels, hidden)

    def word(token_id) -> str:
        return repr(tokenizer.decode([int(token_id)]))

    print(f"prompt: {text!r}")
    print(f"base continuation: {tokenizer.decode(ids[0, p:], skip_special_tokens=True)!r}")
    if total > p:
        print(f"the base picks {word(ids[0, p])} next; given it, the heads guess:")
    heads = {}
    for k, (logits, targets) in enumerate(preds):
        if total > p and logits.shape[1] > p - 1:
            guess, actual = logits[0, p - 1].argmax(), ids[0, p + k + 1] if p + k + 1 < total else None
            print(f"  head{k} (token {k + 2} ahead): {word(guess)}" +
                  (f", actual {word(actual)}" if actual is not None else ""))
        acc = topk_accuracy(logits, targets)
        n = int((targets != IGNORE_TOKEN_ID).sum())
        heads[f"head{k}"] = {"top1": round(float(acc[1]), 4), "top5": round(float(acc[5]), 4), "tokens": n}
    print(format_head_table(heads))
    return {"heads": heads}


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    if not args.data_path and not args.prompt:
        make_parser().error("give --data_path (held-out FastChat JSON) and/or --prompt TEXT")
    model, tokenizer = load_chimera(args.model_path, args.device)
    training = ChimeraTraining(model.base, model.drafter).eval()
    out = {}
    if args.data_path:
        out["data"] = evaluate_data(training, tokenizer, args.data_path, args.model_max_length, args.batch_size,
                                    args.max_conversations)
    if args.prompt:
        text = args.prompt
        if args.chat:
            from fastchat_spec.conversation import conversation_template

            conv = conversation_template(args.model_path)
            conv.append_message(conv.roles[0], args.prompt)
            conv.append_message(conv.roles[1], None)
            text = conv.get_prompt()
        out["prompt"] = evaluate_prompt(training, tokenizer, text, args.max_new_tokens)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
