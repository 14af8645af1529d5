# Per-request time beyond its steps (seconds - steps x the median step), for prompts whose length the process
# had or had not seen before: python3 beyond_steps.py BENCH_RESULT.json[.xz] (calls.sh gives the full command)
import json
import lzma
import statistics
import sys

path = sys.argv[1]
d = json.load(lzma.open(path) if path.endswith(".xz") else open(path))
seen, rows = set(), []
for p in d["prompts"]:
    rows.append((p, p["prompt_tokens"] in seen))
    seen.add(p["prompt_tokens"])


def beyond_ms(prompt, name, step_ms):
    return 1000 * prompt[name]["seconds"] - prompt[name]["steps"] * step_ms


for name, m in d["methods"].items():
    step = m["summary"]["all"]["ms_per_step"]["step"]
    for again in (False, True):
        sub = [p for p, s in rows if s == again]
        print(name, "length seen before" if again else "new length", len(sub), "prompts: median ms beyond steps x",
              round(step, 2), "=", round(statistics.median(beyond_ms(p, name, step) for p in sub), 1))
ar = statistics.median(1000 * p["ar"]["seconds"] / p["ar"]["steps"] for p, _ in rows)
print("ar ms per token", round(ar, 3), "; median ms beyond steps:",
      round(statistics.median(beyond_ms(p, "ar", ar) for p, _ in rows), 1))
