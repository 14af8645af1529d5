"""Summarise py-spy's collapsed stacks (``--format raw``, with ``--threads``): where a process spends its samples.

Usage: python scripts/pyspy_top.py STACKS.txt [N]
Prints the share of samples per thread, then the N functions with the most samples on top of the
stack (self) and the N with the most samples anywhere in the stack (inclusive). With ``--gil``,
a sample is a moment some thread held the GIL, so the shares say who keeps the others waiting.
"""
import collections
import sys


def main(path: str, n: int = 25) -> None:
    threads, own, anywhere = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            thread, frames = (frames[0], frames[1:]) if frames[0].startswith("thread") else ("?", frames)
            total += count
            threads[thread] += count
            if frames:
                own[frames[-1]] += count
            for frame in set(frames):
                anywhere[frame] += count
    print(f"{total} samples")
    for title, counter in (("threads", threads), ("self", own), ("inclusive", anywhere)):
        print(f"\n== {title}")
        for name, count in counter.most_common(n):
            print(f"{100 * count / max(total, 1):6.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
