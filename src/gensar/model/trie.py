"""Prefix trie of valid identifiers, for constrained decoding.

One structure serves both decoders: HF `generate` in PyTorch (which asks, per beam, for the tokens
allowed after a decoded prefix) and the vectorised onnxruntime beam search (which looks up every
beam at once). Built once per identifier map, or once per candidate list (the paper's
100-candidate protocol), from the fixed-length token-id sequences of the items' identifiers.

Layout: dense numpy tables per depth. At depth t every trie node has a local index (the root is
node 0 of depth 0); `vocab[t]` are the token ids that occur at position t of any identifier (the
only tokens whose logits are ever needed there), and `children[t][node, j]` is the node of depth
t+1 reached from `node` by token `vocab[t][j]`, or the "dead" node of depth t+1 when the trie does
not allow that token. Each depth has one dead node (index = number of nodes, its row all dead) for
beams that ran out of valid continuations. Leaves (depth L) are items: `leaf_item[node]`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class IdentifierTrie:
    def __init__(self, sequences: Sequence[Sequence[int]] | np.ndarray, item_ids: Sequence[str]):
        lengths = {len(s) for s in sequences}
        if len(lengths) > 1:
            raise ValueError(f"trie: identifiers must have one length, got lengths {sorted(lengths)}")
        seqs = np.asarray(sequences, dtype=np.int64)
        if seqs.ndim != 2 or len(seqs) != len(item_ids) or len(seqs) == 0:
            raise ValueError(f"trie: need one fixed-length token sequence per item, got shape {seqs.shape} "
                             f"for {len(item_ids)} items")
        self.depth = seqs.shape[1]
        self.vocab: list[np.ndarray] = []       # [V_t] sorted token ids of depth t
        self.children: list[np.ndarray] = []    # [n_nodes[t] + 1, V_t] child node (dead = n_nodes[t+1])
        self.n_nodes: list[int] = []
        node = np.zeros(len(seqs), dtype=np.int64)          # each item's trie node at depth t
        n_nodes = 1
        for t in range(self.depth):
            vocab, tok = np.unique(seqs[:, t], return_inverse=True)
            keys, child = np.unique(node * len(vocab) + tok, return_inverse=True)   # one key per child node
            children = np.full((n_nodes + 1, len(vocab)), len(keys), dtype=np.int32)  # all dead ...
            children[keys // len(vocab), keys % len(vocab)] = np.arange(len(keys))   # ... but the trie's edges
            self.vocab.append(vocab)
            self.children.append(children)
            self.n_nodes.append(n_nodes)
            node, n_nodes = child.reshape(-1), len(keys)
        if n_nodes != len(seqs):
            _, first, counts = np.unique(node, return_index=True, return_counts=True)
            dup = first[counts > 1][0]
            same = [str(item_ids[i]) for i in np.flatnonzero(node == node[dup])[:3]]
            raise ValueError(f"trie: identifier {seqs[dup].tolist()} names {counts.max()} items, e.g. "
                             f"{', '.join(map(repr, same))}")
        self.leaf_item = np.empty(n_nodes + 1, dtype=object)
        self.leaf_item[node] = [str(i) for i in item_ids]
        self.leaf_item[n_nodes] = None

    def __len__(self) -> int:
        return len(self.leaf_item) - 1

    # ---- vectorised (every beam at once) ----------------------------------------------------
    def dead(self, t: int) -> int:
        """The dead node of depth t."""
        return self.n_nodes[t] if t < self.depth else len(self.leaf_item) - 1

    def allowed(self, t: int, node: np.ndarray) -> np.ndarray:
        """[..., V_t] bool: the tokens vocab[t] each node of depth t allows."""
        return self.children[t][node] != self.dead(t + 1)

    def child(self, t: int, node: np.ndarray, tok_local: np.ndarray) -> np.ndarray:
        """Nodes at depth t+1 reached from `node` (depth t) along local token `tok_local`."""
        return self.children[t][node, tok_local]

    # ---- one prefix at a time (HF generate) -------------------------------------------------
    def walk(self, tokens: Sequence[int]) -> int:
        """The node of depth len(tokens) reached along `tokens`; -1 when the trie does not hold them."""
        if len(tokens) > self.depth:
            return -1
        node = 0
        for t, tok in enumerate(tokens):
            j = int(np.searchsorted(self.vocab[t], tok))
            if j == len(self.vocab[t]) or self.vocab[t][j] != tok:
                return -1
            node = int(self.children[t][node, j])
            if node == self.dead(t + 1):
                return -1
        return node

    def allowed_after(self, tokens: Sequence[int]) -> list[int]:
        """Token ids allowed after a decoded prefix (empty when the prefix is invalid or complete)."""
        node = self.walk(tokens)
        if node < 0 or len(tokens) == self.depth:
            return []
        t = len(tokens)
        return self.vocab[t][self.allowed(t, node)].tolist()

    def item(self, tokens: Sequence[int]) -> str | None:
        """The item a complete identifier names, else None."""
        node = self.walk(tokens) if len(tokens) == self.depth else -1
        return self.leaf_item[node] if node >= 0 else None
