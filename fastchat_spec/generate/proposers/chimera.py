"""Chimera proposer: trigram encoder -> full-context encoder -> decoding heads, depth by depth.

Both head architectures run through the same calls (``drafter.head(d, hidden,
encoded)``); the authors' released heads ignore the base hidden state, which
is still kept so that the state and the captured step are the same for both.

Per request it keeps the full-context encoder's own KV cache, the last two
committed tokens (for the root's trigram) and the base's last hidden state.
Slot i of the encoder cache holds position i: committed positions were written
from the base's hidden states by ``observe``; a draft tree is written from
trigram features at ``start + node`` (as the base's verify writes it) and is
masked or overwritten afterwards, exactly like the base's cache.

``propose`` runs one encoder call and one head call per tree depth, batched
over the depth's nodes and over the rows of a batched step (``ChimeraSlots``):
a node's trigram holds its parent's and grandparent's tokens, so each depth
needs the previous one's choices.
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Committed, OneRow, PathLayout, SlotProposers
from fastchat_spec.generate.proposers.base import last_hidden_buffer, model_tree, state_capacity
from fastchat_spec.generate.slots import SlotStore, rows_mask
from fastchat_spec.generate.tree import Tree
from fastchat_spec.heads.chimera import PAD_ID


class ChimeraProposer(OneRow):
    """One request's Chimera state: the first and only row of a ``ChimeraSlots``."""

    def __init__(self, drafter, base, tree: Tree, device: torch.device, capacity: int):
        super().__init__(ChimeraSlots(drafter, base, tree, device, capacity, slots=1), device)

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

    @classmethod
    def for_slots(cls, model, device, slots, capacity):
        tree = cls.tree_for(model).to(device)
        return ChimeraSlots(model.drafter, model.base, tree, device, state_capacity({"capacity": capacity}, tree),
                            slots)


class ChimeraSlots(SlotProposers):
    """The Chimera state of every slot of an engine loop, in shared tensors: a batched step drafts all its rows
    with one trigram, encoder and head call per depth, and encodes their commits with one encoder call.

    Per slot: the full-context encoder's KV cache (one row of a ``SlotStore``), the last two committed tokens
    (for the root's trigram) and the base's last hidden state.
    """

    def __init__(self, drafter, base, tree: Tree, device: torch.device, capacity: int, slots: int):
        self.drafter = drafter
        self.embed = base.get_input_embeddings()
        self.rotary = base.get_decoder().rotary_emb
        self.tree = tree
        self.dtype = drafter.chimera_head[0][-1].weight.dtype
        self.plan = _DepthPlan(tree, device)
        self.layout = PathLayout(tree, device)
        self.store = SlotStore(drafter.encoder_config, slots, capacity, device, self.dtype)
        self.last_tokens = torch.full((slots, 2), PAD_ID, dtype=torch.long, device=device)  # x_{t-1}, x_t
        self.hidden = last_hidden_buffer(base, device, slots)
        self.last_two = torch.tensor([1, 2], device=device)

    def reset(self, slot: int, event: Committed) -> None:
        self.last_tokens[slot].fill_(PAD_ID)
        self.observe(slice(slot, slot + 1), event.as_one_row())

    # -- learning from commits -------------------------------------------------
    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        # Every committed row; a padded path's entries past ``depth`` land beyond the new end of the
        # encoder cache, masked until overwritten, as in the base's cache.
        self._encode_committed(rows, event.path_hidden(), event.start, length or self.store.capacity)
        recent = torch.cat([self.last_tokens[rows], event.tokens], dim=1)  # the last two of the first depth + 3
        self.last_tokens[rows] = recent.gather(1, event.depth.view(-1, 1) + self.last_two)
        self.hidden[rows] = event.last_hidden()[:, 0]

    def _encode_committed(self, rows: slice, hidden: torch.Tensor, start: torch.Tensor, length: int) -> None:
        """Write the encoder's keys/values for committed hidden states (b, k, H), row r at start[r] + 0..k-1
        (attending to the first ``length`` positions of its slot)."""
        positions, offsets, cache, mask = self.layout.place(self.store, rows, start, hidden.shape[1], length,
                                                            self.dtype)
        self.drafter.encode(hidden.to(self.dtype), positions, mask, self.rotary, cache, offsets)

    # -- drafting ----------------------------------------------------------------
    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        plan, tree = self.plan, self.tree
        b, length = roots.shape[0], length or self.store.capacity
        mask = rows_mask(starts, tree.ancestors, length, self.dtype)  # (b, 1, N, length)
        positions = starts.unsqueeze(1) + tree.depth  # (b, N)
        hidden = self.hidden[rows]
        # ids[:, 0:2] are each row's last committed tokens, ids[:, 2 + i] its tree node i's token.
        ids = torch.cat([self.last_tokens[rows], roots.view(b, 1), plan.blank.expand(b, -1)], dim=1)
        for d in range(tree.max_depth):
            nodes = plan.nodes[d]
            n = nodes.numel()
            cache = self.store.rows(rows.start, b, length, starts.unsqueeze(1) + nodes)
            features = self.drafter.trigram(self.embed, ids[:, plan.trigram[nodes]])  # (b, n, H)
            encoded = self.drafter.encode(features, positions[:, nodes], mask[:, :, nodes], self.rotary, cache,
                                          nodes)
            logits = self.drafter.head(d, hidden.unsqueeze(1).expand(b, n, -1), encoded)  # (b, n, V)
            top = logits.topk(plan.top_k[d], dim=-1).indices  # (b, n, K)
            ids[:, 2 + plan.nodes[d + 1]] = top[:, plan.parent_row[d + 1], plan.rank[d + 1]]
        return ids[:, 3:]


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
