"""Long conversations cut between rounds so that each piece fits ``model_max_length`` tokens.

Reference: FastChat ``fastchat/data/split_long_conversation.py``: every piece
starts with a human turn, and a round costs its tokens plus the template's
per-turn overhead. FastChat's version keeps its tokenizer and limit in module
globals, so we write the same rule as a pure function (``split_long_conversation``)
taking a token counter: the real tokenizer (``tokenizer_counter``) or a cheap
estimate from UTF-8 bytes (``estimate_tokens``). ``data.py`` applies it when it
writes the training files.
"""
from typing import Callable, Dict, List, Tuple

Conversation = Dict  # {"id": str, "conversations": [{"from": ..., "value": ...}]}

# Per-turn template overhead in tokens ("USER: ", " ASSISTANT: ", "</s>"), as in
# FastChat's split_long_conversation.py.
TURN_OVERHEAD_TOKENS = 6
# Token estimate used when no tokenizer is given: UTF-8 bytes divided by this.
# Measured on ShareGPT with our 8k SentencePiece tokenizer: 3.6 bytes/token
# overall, 3.8 for the median turn, 2.8 at the 10th percentile (code, CJK);
# 3.0 keeps most pieces under the limit (the trainer truncates the rest).
BYTES_PER_TOKEN_ESTIMATE = 3.0


def estimate_tokens(text: str) -> int:
    """Cheap token count without a tokenizer: UTF-8 bytes / BYTES_PER_TOKEN_ESTIMATE."""
    return int(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE) + 1


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """Token counter from a Hugging Face tokenizer (no BOS/EOS).

    A legacy SentencePiece Llama tokenizer (ours) is counted with its
    ``sp_model`` directly: the same count for text without special-token
    strings, and about 20x faster than the Python-level ``tokenize``.
    """
    sp_model = getattr(tokenizer, "sp_model", None)
    if sp_model is not None and getattr(tokenizer, "legacy", False):
        return lambda text: len(sp_model.encode(text))
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def _piece(conv: Conversation, start: int, end: int, n_pieces_total: int) -> Conversation:
    conv_id = conv["id"] if n_pieces_total == 1 else f"{conv['id']}_{start}"
    return {"id": conv_id, "conversations": conv["conversations"][start:end]}


def split_long_conversation(
    conv: Conversation, max_length: int, count_tokens: Callable[[str], int], prefix_tokens: int = 0
) -> List[Conversation]:
    """Cut between rounds so each piece's rounds fit ``max_length`` tokens.

    Follows FastChat's split_long_conversation.py: a round is a human turn and
    its reply, each costing its tokens plus TURN_OVERHEAD_TOKENS; rounds are
    taken greedily and a new piece starts when the next round would overflow.
    ``prefix_tokens`` (the system prompt) is charged to every piece. A single
    round longer than the budget becomes a piece of its own (training keeps
    its first ``max_length`` tokens) unless its human turn alone takes more
    than half the budget, then it is dropped: it would leave little or nothing
    of the reply to learn from. Pieces keep the id when the conversation is not
    split, else get ``_<first turn index>`` appended, as in FastChat.
    """
    turns = conv["conversations"]
    budget = max_length - prefix_tokens
    bounds: List[Tuple[int, int]] = []
    start, used = 0, 0
    for i in range(0, len(turns) - 1, 2):
        human = count_tokens(turns[i]["value"]) + TURN_OVERHEAD_TOKENS
        round_len = human + count_tokens(turns[i + 1]["value"]) + TURN_OVERHEAD_TOKENS
        if used and used + round_len > budget:
            bounds.append((start, i))
            start, used = i, 0
        if round_len > budget:
            if human <= budget // 2:
                bounds.append((i, i + 2))
            start, used = i + 2, 0
            continue
        used += round_len
    if used:
        bounds.append((start, len(turns) - len(turns) % 2))
    return [_piece(conv, s, e, len(bounds)) for s, e in bounds]


def vicuna_system_prompt() -> str:
    """The system message FastChat's vicuna_v1.1 template puts before every conversation."""
    from fastchat.conversation import get_conv_template

    return get_conv_template("vicuna_v1.1").system_message


def split_all(
    convs: List[Conversation],
    max_length: int,
    count_tokens: Callable[[str], int] = estimate_tokens,
    progress: bool = False,
) -> List[Conversation]:
    """``split_long_conversation`` over a list, with an optional progress bar."""
    from tqdm import tqdm

    prefix_tokens = count_tokens(vicuna_system_prompt()) + 1  # + BOS
    pieces: List[Conversation] = []
    for conv in tqdm(convs, desc=f"split to {max_length} tokens", disable=not progress, unit="conv"):
        pieces.extend(split_long_conversation(conv, max_length, count_tokens, prefix_tokens))
    return pieces
