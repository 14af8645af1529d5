"""Tokens per step of context look-up alone (no Jacobi window, no model) on the nano base's greedy answers,
split as the bench splits answers (30% or more of an answer's 8-grams seen earlier in it: repetitive).
Reads greedy_nano.json from greedy_answers.py; a simulation of the drafts, not the engine."""
import json
import sys

sys.path.insert(0, "../../..")
from fastchat_spec.bench.__main__ import REPETITIVE, repeated_share  # noqa: E402

W = 15  # tokens copied at most (the served default for a window of 16)


def lookup(ctx, maxn=3, minn=1):
    """What followed the latest earlier occurrence of the longest suffix (3, 2, then 1 tokens)."""
    for n in range(maxn, minn - 1, -1):
        if len(ctx) < n + 1:
            continue
        key = ctx[-n:]
        for s in range(len(ctx) - n - 1, -1, -1):
            if ctx[s:s + n] == key:
                return ctx[s + n:s + n + W]
    return []


d = json.load(open("greedy_nano.json"))
for dom, outs in d.items():
    for name, keep in (("repetitive", lambda g: repeated_share(g) >= REPETITIVE),
                       ("varied", lambda g: repeated_share(g) < REPETITIVE)):
        sel = [(i, g) for i, g in outs if keep(g)]
        steps = toks = 0
        for ids, gen in sel:
            ctx = list(ids) + gen[:1]
            i = 1
            while i < len(gen):
                draft = lookup(ctx)
                a = 0
                while a < len(draft) and i + a < len(gen) and draft[a] == gen[i + a]:
                    a += 1
                take = min(a + 1, len(gen) - i)
                ctx += gen[i:i + take]
                i += take
                steps += 1
                toks += take
        print(dom, name, "answers", len(sel), "tokens/step", round(toks / max(steps, 1), 3))
