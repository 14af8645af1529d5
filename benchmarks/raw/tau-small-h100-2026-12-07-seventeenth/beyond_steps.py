# Per-request time beyond its steps (seconds - steps x the median step), for prompts whose length the process
# had or had not seen before: python3 beyond_steps.py BENCH_RESULT.json.xz (calls.sh gives the full command)
import json, lzma, statistics, sys
d = json.load(lzma.open(sys.argv[1]))
seen, rows = set(), []
for p in d["prompts"]:
    rows.append((p, p["prompt_tokens"] in seen)); seen.add(p["prompt_tokens"])
for name, m in d["methods"].items():
    step = m["summary"]["all"]["ms_per_step"]["step"]
    extra = lambda p, n: 1000 * p[n]["seconds"] - p[n]["steps"] * step
    for again in (False, True):
        sub = [p for p, s in rows if s == again]
        print(name, "length seen before" if again else "new length", len(sub), "prompts: median ms beyond steps x",
              round(step, 2), "=", round(statistics.median(extra(p, name) for p in sub), 1))
ar = statistics.median(1000 * p["ar"]["seconds"] / p["ar"]["steps"] for p, _ in rows)
print("ar ms per token", round(ar, 3), "; median ms beyond steps:",
      round(statistics.median(1000 * p["ar"]["seconds"] - p["ar"]["steps"] * ar for p, _ in rows), 1))
