"""Prefix trie of valid identifiers, for constrained decoding.

Built once per identifier map (or once per candidate list) from the token-id sequences of the
items' identifiers. Nodes are numbered; node 0 is the root. Decoding keeps one node per beam and
asks `allowed(node)` for the token ids that may follow, then `step(node, token)` for the child.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class IdentifierTrie:
    def __init__(self, sequences: Sequence[Sequence[int]], item_ids: Sequence[str]):
        if len(sequences) != len(item_ids):
            raise ValueError(f"{len(sequences)} identifiers but {len(item_ids)} item ids")
        lengths = {len(s) for s in sequences}
        if len(lengths) > 1:
            raise ValueError(f"identifiers must have one length, got lengths {sorted(lengths)}")
        self.depth = lengths.pop() if lengths else 0
        self.children: list[dict[int, int]] = [{}]
        self.leaf_item: dict[int, str] = {}
        for seq, item in zip(sequences, item_ids):
            node = 0
            for tok in seq:
                nxt = self.children[node].get(int(tok))
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][int(tok)] = nxt
                    self.children.append({})
                node = nxt
            if node in self.leaf_item:
                raise ValueError(f"identifier {list(seq)} names two items: "
                                 f"{self.leaf_item[node]!r} and {item!r}")
            self.leaf_item[node] = str(item)
        # token ids allowed after each node, as sorted arrays (used for logit masking)
        self._allowed = [np.array(sorted(c), dtype=np.int64) for c in self.children]

    def __len__(self) -> int:
        return len(self.leaf_item)

    def allowed(self, node: int) -> np.ndarray:
        return self._allowed[node]

    def step(self, node: int, token: int) -> int:
        """Child of `node` along `token`; -1 when the token is not allowed there."""
        return self.children[node].get(int(token), -1)

    def walk(self, tokens: Sequence[int]) -> int:
        node = 0
        for t in tokens:
            node = self.step(node, t)
            if node < 0:
                return -1
        return node

    def allowed_after(self, tokens: Sequence[int]) -> list[int]:
        """Token ids allowed after a decoded prefix (empty list when the prefix is invalid/complete)."""
        node = self.walk(tokens)
        return [] if node < 0 else self._allowed[node].tolist()

    def item(self, tokens: Sequence[int]) -> str | None:
        node = self.walk(tokens)
        return self.leaf_item.get(node) if node >= 0 else None
