"""Speed measurements: ``python -m fastchat_spec.bench`` (end to end) and ``bench.steps`` (step times)."""
