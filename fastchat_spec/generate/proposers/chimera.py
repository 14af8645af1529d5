"""Chimera proposer: trigram encoder -> full-context encoder -> decoding heads, depth by depth.

Both head architectures run through the same calls (``drafter.head(d, hidden,
encoded)``); the authors' released heads ignore the base hidden state, which
is still kept so that the state and the captured step are the same for both.

Per generation it keeps the full-context encoder's own KV cache, the last two
committed tokens (for the root's trigram) and the base's last hidden state.
Slot i of the encoder cache holds position i: committed positions were written
from the base's hidden states by ``observe``; a draft tree is written from
trigram features at ``start + node`` (as the base's verify writes it) and is
masked or overwritten afterwards, exactly like the base's cache.

``propose`` runs one encoder call and one head call per tree depth, batched
over the depth's nodes: a node's trigram holds its parent's and grandparent's
tokens, so each depth needs the previous one's choices.
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.kv_cache import capacity as cache_capacity
from fastchat_spec.generate.kv_cache import new_cache
from fastchat_spec.generate.proposers.base import Committed, PathLayout, Proposer
from fastchat_spec.generate.proposers.base import last_hidden_buffer, model_tree, state_capacity
from fastchat_spec.generate.tree import Tree
from fastchat_spec.generate.verify import attention_mask
from fastchat_spec.heads.chimera import PAD_ID


class ChimeraProposer(Proposer):
    device_state = True  # every piece of state below is a tensor updated in place

    def __init__(self, drafter, base, tree: Tree, device: torch.device, capacity: int):
        self.drafter = drafter
        self.embed = base.get_input_embeddings()
        self.rotary = base.get_decoder().rotary_emb
        self.tree = tree
        self.device = device
        self.dtype = drafter.chimera_head[0][-1].weight.dtype
        self.plan = _DepthPlan(tree, device)
        self.capacity = capacity  # positions of the encoder cache, for the whole request
        self._cache = None  # allocated on first use, never moved (a captured step reads it)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # positions in the encoder cache
        self.last_tokens = torch.full((2,), PAD_ID, dtype=torch.long, device=device)  # x_{t-1}, x_t
        self.hidden = last_hidden_buffer(base, device)  # base hidden state at the last committed position
        self.layout = PathLayout(tree, device)
        self.last_two = torch.tensor([1, 2], device=device)

    @classmethod
    def tree_for(cls, model, options=None):
        tree = model_tree(model)
        if tree.max_depth > model.drafter.num_heads:
            raise ValueError(f"the tree is {tree.max_depth} deep but the checkpoint has "
                             f"{model.drafter.num_heads} Chimera heads")
        return tree

    @classmethod
    def build(cls, model, device, options):
        tree = cls.tree_for(model, options).to(device)
        return cls(model.drafter, model.base, tree, device, state_capacity(options, tree))

    # -- learning from commits -------------------------------------------------
    def observe(self, event: Committed) -> None:
        # Every committed row; a padded path's entries past ``depth`` land beyond the new end of the
        # encoder cache, masked until overwritten, as in the base's cache.
        offsets, visible = self.layout(event.path.numel())
        self._encode_committed(event.hidden.index_select(0, event.path), event.start, offsets, visible)
        recent = torch.cat([self.last_tokens, event.tokens])  # the last two of the first depth + 3
        self.last_tokens.copy_(recent.index_select(0, event.depth + self.last_two))
        self.hidden.copy_(event.last_hidden())
        self.length.copy_(event.start + event.depth[0] + 1)

    def _encode_committed(self, hidden, start: torch.Tensor, offsets: torch.Tensor, visible) -> None:
        """Write the encoder's keys/values for committed hidden states (k, H) at positions start + offsets."""
        k = hidden.shape[0]
        cache = self.cache()
        mask = attention_mask(start, visible, cache_capacity(cache), self.dtype)
        positions = start + offsets
        self.drafter.encode(hidden.to(self.dtype).unsqueeze(0), positions.view(1, k), mask, self.rotary,
                            cache, positions)  # only the keys/values written to the cache matter

    def cache(self):
        """The full-context encoder's KV cache for this generation."""
        if self._cache is None:
            self._cache = new_cache(self.drafter.encoder_config, self.capacity, self.device, self.dtype)
        return self._cache

    # -- drafting ----------------------------------------------------------------
    def propose(self, root: torch.Tensor) -> torch.Tensor:
        plan, tree = self.plan, self.tree
        start = self.length
        cache = self.cache()
        mask = attention_mask(start, tree.ancestors, cache_capacity(cache), self.dtype)  # (1, 1, N, cap)
        positions = start + tree.depth
        # ids[0:2] are the last committed tokens, ids[2 + i] is tree node i's token.
        ids = torch.cat([self.last_tokens, root.view(1).to(self.device), plan.blank])
        for d in range(tree.max_depth):
            nodes = plan.nodes[d]
            n = nodes.numel()
            features = self.drafter.trigram(self.embed, ids[plan.trigram[nodes]])  # (n, H)
            encoded = self.drafter.encode(features.view(1, n, -1), positions[nodes].view(1, n), mask[:, :, nodes],
                                          self.rotary, cache, start + nodes)[0]
            logits = self.drafter.head(d, self.hidden.expand(n, -1), encoded)  # (n, V)
            top = logits.topk(plan.top_k[d], dim=-1).indices
            ids[2 + plan.nodes[d + 1]] = top[plan.parent_row[d + 1], plan.rank[d + 1]]
        return ids[3:]


class _DepthPlan:
    """Index tensors for drafting a tree depth by depth, computed once per generation.

    ``nodes[d]``: the nodes at depth d (depth 0 is the root); for depth d >= 1,
    ``parent_row[d]`` is each node's parent's row in ``nodes[d-1]`` and
    ``rank[d]`` its top-k rank. ``trigram[i]`` indexes the proposer's ``ids``
    buffer (two committed tokens, then the tree) for node i's grandparent,
    parent and own token. ``top_k[d]``: how many candidates head d must give.
    """

    def __init__(self, tree: Tree, device: torch.device):
        depth, parent, rank = tree.depth.tolist(), tree.parent.tolist(), tree.rank.tolist()
        by_depth = [[i for i in range(tree.num_nodes) if depth[i] == d] for d in range(tree.max_depth + 1)]
        row = {i: r for nodes in by_depth for r, i in enumerate(nodes)}

        def as_tensor(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        self.nodes = [as_tensor(nodes) for nodes in by_depth]
        self.parent_row = [None] + [as_tensor([row[parent[i]] for i in nodes]) for nodes in by_depth[1:]]
        self.rank = [None] + [as_tensor([rank[i] for i in nodes]) for nodes in by_depth[1:]]
        self.top_k = [tree.max_rank(d + 1) for d in range(tree.max_depth)]
        self.trigram = as_tensor([_trigram_slots(i, depth, parent) for i in range(tree.num_nodes)])
        self.blank = torch.zeros(tree.num_nodes - 1, dtype=torch.long, device=device)


def _trigram_slots(node: int, depth: list[int], parent: list[int]) -> list[int]:
    """Slots in ``ids`` of the node's grandparent, parent and itself (slots 0, 1: the last committed tokens)."""
    chain = [node + 2]
    at = node
    while len(chain) < 3:
        if depth[at] == 0:  # above the root: the committed tokens, newest first
            chain.append(1 if chain[-1] == 2 else 0)
        else:
            at = parent[at]
            chain.append(at + 2)
    return chain[::-1]
