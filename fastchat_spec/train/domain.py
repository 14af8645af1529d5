"""Which ShareGPT conversations are about code, and which about maths: the rules, in one place.

CLLM training pays most where Jacobi iteration finds fixed points quickly,
and code and maths answers (repeated identifiers, boilerplate, formulas) are
where Kou et al. 2024 (arXiv 2403.00835) report their largest speed-ups. These
rules pick such conversations from FastChat JSON, so that trajectories are
collected (``cllm_data --domain``) and speed is measured (``cllm_rounds``) on
one domain. They read the first exchange only, the first user turn and the
first answer, since that is what the collector and the evaluation decode.

code, when any of:
  1. a Markdown code fence (three backticks) in the prompt or the answer;
  2. at least ``CODE_LINES`` lines that look like code: ending in ``;``, ``{``
     or ``}``, or starting with a statement keyword (``def``, ``class``,
     ``import``, ``return``, ``#include``, ``public``, ``const``, ...);
  3. the prompt names a programming language or tool (``LANGUAGES``) and uses a
     programming word (``CODE_WORDS``): "write a python function ...".

math, when any of (an "expression" is a number, an operator among
``+ * / = ^ × ÷`` or a spaced ``-``, then a number or a single letter:
``3 + 4``, ``2x = 10``, ``5 ^ n``):
  1. at least ``MATH_EXPRESSIONS`` expressions in the prompt;
  2. the prompt uses a maths word (``MATH_WORDS``: solve, equation, integral,
     probability, how many, ...) and has an expression, or at least two
     numbers, or its answer has at least ``MATH_EXPRESSIONS`` expressions;
  3. a prompt of at least ``DENSE_MIN_CHARS`` characters whose non-space
     characters are at least ``DENSE_FRACTION`` digits and operators (tables of
     numbers, sums written out).

A conversation can be both. ``all`` keeps everything. Both rules are
keyword-level heuristics, good enough to shift the mix towards a domain, not
a classifier: e.g. a prompt quoting a stack trace counts as code.

On the ShareGPT split of ``data.py`` (1024-token pieces) they find 11,346 code
and 688 maths pieces among 34,898 training ones, and 194 code (191 distinct
prompts) and 6 maths pieces among 573 held-out ones: ShareGPT is rich in code
and poor in maths, so ``code`` is the domain to measure on.

Usage: ``python -m fastchat_spec.train.domain --help`` writes the domain subsets
of a train/held-out split (small enough to carry to a machine without the
ShareGPT package).
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Sequence

DOMAINS = ("all", "code", "math")

CODE_LINES = 3
LANGUAGES = ("python", "javascript", "typescript", "java", "c++", "c#", "golang", "rust", "kotlin", "swift", "php",
             "ruby", "sql", "html", "css", "react", "node.js", "nodejs", "bash", "shell", "powershell", "regex",
             "django", "flask", "pandas", "numpy", "excel formula", "vba", "matlab", "json", "yaml", "docker",
             "kubernetes", "git", "linux", "api", "c language", "arduino", "unity", "solidity", "r code")
CODE_WORDS = ("code", "function", "script", "program", "class", "method", "variable", "compile", "debug", "bug",
              "error", "exception", "implement", "algorithm", "query", "loop", "array", "library", "syntax",
              "endpoint", "module", "snippet", "refactor")
_STATEMENT = re.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|#include|public |private |const |let |var |"
    r"function\b|for \(|if \(|while \(|SELECT |CREATE |async |await |print\(|console\.)")
_CODE_LINE_END = re.compile(r"[;{}]\s*$")

MATH_EXPRESSIONS = 2
DENSE_MIN_CHARS = 12
DENSE_FRACTION = 0.3
MATH_WORDS = ("solve", "equation", "calculate", "compute", "integral", "derivative", "probability", "theorem",
              "prove", "proof", "algebra", "geometry", "matrix", "polynomial", "arithmetic", "fraction",
              "percentage", "percent", "square root", "factorial", "sum of", "product of", "math", "logarithm",
              "divisible", "prime number", "how many", "how much", "average", "mean of", "variance")
_NUMBER = r"\d+(?:[.,]\d+)?"
_EXPRESSION = re.compile(rf"(?<![\w.]){_NUMBER}[a-zA-Z]?\s*(?:[+*/=^×÷]|\s-\s)\s*(?:{_NUMBER}|[a-zA-Z]\b)")
_NUMBERS = re.compile(rf"(?<![\w.]){_NUMBER}")
_OPERATORS = set("+-*/=^×÷%()")


# ---------------------------------------------------------------- the rules


def first_exchange(conv: dict) -> tuple[str, str]:
    """(first user turn, first answer) of a FastChat conversation; '' where missing."""
    turns = conv.get("conversations") or []
    prompt = turns[0]["value"] if turns and turns[0].get("from") == "human" else ""
    answer = turns[1]["value"] if len(turns) > 1 and turns[1].get("from") == "gpt" else ""
    return prompt, answer


def _has_word(text: str, words: Sequence[str]) -> bool:
    """Any of ``words`` in ``text`` (lower case) as a whole word (phrases and 'c++' included)."""
    return any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", text) for w in words)


def code_lines(text: str) -> int:
    return sum(bool(_STATEMENT.match(line) or _CODE_LINE_END.search(line)) for line in text.splitlines())


def is_code(prompt: str, answer: str = "") -> bool:
    """The code rule of the module docstring."""
    if "```" in prompt or "```" in answer:
        return True
    if code_lines(prompt) + code_lines(answer) >= CODE_LINES:
        return True
    lower = prompt.lower()
    return _has_word(lower, LANGUAGES) and _has_word(lower, CODE_WORDS)


def math_expressions(text: str) -> int:
    return len(_EXPRESSION.findall(text))


def is_dense_in_numbers(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    if len(chars) < DENSE_MIN_CHARS:
        return False
    numeric = sum(c.isdigit() or c in _OPERATORS for c in chars)
    return numeric / len(chars) >= DENSE_FRACTION and any(c in _OPERATORS for c in chars)


def is_math(prompt: str, answer: str = "") -> bool:
    """The math rule of the module docstring."""
    in_prompt = math_expressions(prompt)
    if in_prompt >= MATH_EXPRESSIONS:
        return True
    numeric = in_prompt or len(_NUMBERS.findall(prompt)) >= 2 or math_expressions(answer) >= MATH_EXPRESSIONS
    if numeric and _has_word(prompt.lower(), MATH_WORDS):
        return True
    return is_dense_in_numbers(prompt)


def in_domain(conv: dict, domain: str) -> bool:
    """Whether the conversation's first exchange belongs to ``domain`` (one of ``DOMAINS``)."""
    if domain == "all":
        return True
    prompt, answer = first_exchange(conv)
    if domain == "code":
        return is_code(prompt, answer)
    if domain == "math":
        return is_math(prompt, answer)
    raise ValueError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}")


def select(convs: Sequence[dict], domain: str) -> List[dict]:
    """The conversations of ``domain``, in their order."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}")
    return [c for c in convs if in_domain(c, domain)]


# ---------------------------------------------------------------- command line


def write_subsets(data_dir: str, out_dir: str, domains: Sequence[str], train_limit: Optional[int]) -> Dict[str, int]:
    """OUT_DIR/train_{domain}.json (the domain's first ``train_limit`` training conversations, first exchange
    only) and OUT_DIR/heldout_{domain}.json (all its held-out ones, whole) for each domain, and
    heldout_all.json always (general speed and perplexity); returns the counts."""
    from fastchat_spec.train.data import read_fastchat_json, write_fastchat_json

    counts = {}
    heldout_domains = list(domains) + (["all"] if "all" not in domains else [])
    for split, limit, chosen_domains in (("train", train_limit, domains), ("heldout", None, heldout_domains)):
        convs = read_fastchat_json(os.path.join(data_dir, f"{split}.json"))
        for domain in chosen_domains:
            chosen = select(convs, domain)[:limit]
            if split == "train":  # trajectories read the first exchange only: keep the file small
                chosen = [{**c, "conversations": c["conversations"][:2]} for c in chosen]
            write_fastchat_json(chosen, os.path.join(out_dir, f"{split}_{domain}.json"))
            counts[f"{split}_{domain}"] = len(chosen)
    return counts


def main(argv: Optional[List[str]] = None) -> Dict[str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.domain",
        description="Write the code / maths / all subsets of a FastChat train/held-out split "
                    "(rules: this module's docstring): OUT_DIR/train_DOMAIN.json (first exchange only), "
                    "OUT_DIR/heldout_DOMAIN.json and OUT_DIR/heldout_all.json (whole conversations, for perplexity).")
    parser.add_argument("--data_dir", required=True,
                        help="folder with train.json and heldout.json from `python -m fastchat_spec.train.data`")
    parser.add_argument("--out_dir", required=True, help="folder for the subsets (created)")
    parser.add_argument("--domains", default="all,code,math", help="comma list of: " + ", ".join(DOMAINS))
    parser.add_argument("--train_limit", type=int, default=None,
                        help="keep only the first N training conversations of each domain (smaller files)")
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        parser.error(f"--domains: unknown {unknown or 'empty list'}; use a comma list of {', '.join(DOMAINS)}")
    for split in ("train", "heldout"):
        if not os.path.isfile(os.path.join(args.data_dir, f"{split}.json")):
            parser.error(f"--data_dir {args.data_dir} has no {split}.json; write it with "
                         f"`python -m fastchat_spec.train.data --out-dir {args.data_dir}`")
    counts = write_subsets(args.data_dir, args.out_dir, domains, args.train_limit)
    print(", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"; wrote {args.out_dir}")
    return counts


if __name__ == "__main__":
    main()
