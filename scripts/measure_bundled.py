"""Measure the bundled model's held-out tokens per step (greedy, first turns) and write measured.json.

  python scripts/measure_bundled.py [--prompts 12] [--max-new-tokens 96]

tests/test_bundled_model.py checks the same quantity, the same way, against this file.
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fastchat_spec  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=96)
    args = p.parse_args()
    fastchat_spec.register()
    from fastchat.model.model_adapter import get_generate_stream_function, load_model

    from fastchat_spec.conversation import conversation_template
    from fastchat_spec.train.data import heldout_first_turns

    path = fastchat_spec.default_model_path()
    model, tok = load_model(path, device="cpu")
    stream = get_generate_stream_function(model, path)
    steps = tokens = 0
    for turn in heldout_first_turns(args.prompts):
        conv = conversation_template(path)
        conv.append_message(conv.roles[0], turn)
        conv.append_message(conv.roles[1], None)
        params = {"prompt": conv.get_prompt(), "temperature": 0.0, "max_new_tokens": args.max_new_tokens,
                  "echo": False}
        last = list(stream(model, tok, params, "cpu", 2048))[-1]
        steps += last["spec"]["steps"] - 1
        tokens += last["spec"]["tokens"] - 1
    result = {"tau": round(tokens / steps, 3), "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
              "decoding": "greedy, held-out ShareGPT first turns, vicuna_v1.1 template, float32 on CPU",
              "command": "python scripts/measure_bundled.py " + " ".join(sys.argv[1:]),
              "date": datetime.date.today().isoformat()}
    with open(os.path.join(path, "measured.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
