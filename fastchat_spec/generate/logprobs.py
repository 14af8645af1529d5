"""The ``logprobs`` field of a chunk, built as FastChat's ``generate_stream`` builds it.

FastChat 0.2.36 returns, when a request sets ``logprobs`` (any number), one
entry per token of the answer (and of the prompt too, with ``echo``):

* ``tokens``: the token's text, ``tokenizer.decode(id)`` of the id alone;
* ``token_logprobs``: the base model's log-probability of the token, a
  log-softmax of the raw logits (before temperature, top-p or a repetition
  penalty); None for the prompt's first token, which nothing predicts;
* ``top_logprobs``: an empty dict per token (FastChat does not return
  alternatives, whatever the number asks for);
* ``text_offset``: where each token's text starts in the concatenation of
  ``tokens`` (FastChat's sum of their lengths, not offsets into ``text``).

Every chunk carries the whole list so far, as FastChat's do; its API server
hands it to OpenAI clients as ``choices[i].logprobs``.
"""
from __future__ import annotations


class AnswerLogprobs:
    """The entries of one answer's ``logprobs``, decoded once per token as they come."""

    def __init__(self, tokenizer, prompt_ids: list[int], echo: bool):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[:1]) if echo else []
        self.values: list[float | None] = [None] * len(self.ids)
        self.echo = echo
        self.prompt_ids = prompt_ids
        self.texts: list[str] = []
        self.offsets: list[int] = []
        self.end = 0  # length of the texts so far

    def add_prompt(self, values: list[float] | None) -> None:
        """The prefill's logprobs of the prompt's tokens after its first (echo only)."""
        if self.echo and values is not None:
            self.extend(self.prompt_ids[1:], values)

    def extend(self, ids: list[int], values: list[float] | None) -> None:
        if values is None or len(values) < len(ids):
            raise RuntimeError("fastchat-spec: a step came without the logprobs of its tokens")
        self.ids.extend(ids)
        self.values.extend(values[: len(ids)])

    def as_dict(self, answer_tokens: int) -> dict:
        """FastChat's field for the prompt part (with echo) and the first ``answer_tokens`` answer tokens."""
        count = (len(self.prompt_ids) if self.echo else 0) + answer_tokens
        for token in self.ids[len(self.texts) : count]:
            text = self.tokenizer.decode(token)
            self.texts.append(text)
            self.offsets.append(self.end)
            self.end += len(text)
        return {"text_offset": self.offsets[:count], "tokens": self.texts[:count],
                "token_logprobs": self.values[:count], "top_logprobs": [{} for _ in range(count)]}
