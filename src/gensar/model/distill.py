"""Distillation from SASRec-CE: soft targets for the CID positions of recommendation examples.

The collab stage trains SASRec-CE, a full softmax over items, to build the collaborative embeddings.
On a 2-core budget the T5 trails it on the first (shared) codes of a CID and matches it on the last
ones (`benchmarks/code_ceiling.py`). With `train.distill` = a > 0 every rec target position also
learns the teacher's distribution over that level's codes, not the clicked code alone:

    p(item | clicks before)               SASRec-CE on the user's train clicks before the target
                                          (its last `max_len`), softmax(scores / T)
    q_t(c) = sum p(item) over items whose CID starts with prefix + c  /  sum over items under prefix
                                          prefix = the target's true codes before depth t, so q_t is
                                          the teacher's next-code distribution under teacher forcing
    loss_t = (1 - a) * CE(clicked code) + a * CE(q_t, model)      (`LevelVocab.loss`)

Decoding q_0 ... q_{d-1} through the trie multiplies back to p(item): a student that matched every q_t
would rank items as the teacher does. The soft targets are computed once, before training
(`ExampleBuilder`), in code order of each level (the `LevelVocab` local index).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from gensar.eval.baselines import SASRecRanker
from gensar.logs import progress

logger = logging.getLogger(__name__)


class LevelTeacher:
    """SASRec-CE's next-click distribution, as each CID level's conditional code distribution.

    `codes` [n_items, depth]: the CID of every item of `item_ids` as local code indices (the
    position of its token inside its level group, `LevelVocab.local_of`); `width` the widest level.
    """

    def __init__(self, sasrec_path: str, item_ids: Sequence[str], codes: np.ndarray, width: int,
                 temperature: float = 1.0, batch_size: int = 512):
        if temperature <= 0:
            raise ValueError(f"train.distill_temperature must be > 0, got {temperature}")
        self.ranker = SASRecRanker(item_ids, sasrec_path, batch_size=batch_size)   # scores in our item order
        self.codes = torch.as_tensor(np.asarray(codes, dtype=np.int64))     # [N, depth]
        self.width, self.temperature, self.batch_size = width, temperature, batch_size
        # prefix[t][i]: the group of item i's first t codes (prefix[0] = one group of every item)
        self.prefix = [torch.zeros(len(item_ids), dtype=torch.long)]
        for t in range(1, self.codes.shape[1]):
            _, inv = torch.unique(self.codes[:, :t], dim=0, return_inverse=True)
            self.prefix.append(inv)

    @torch.no_grad()
    def probs(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """[n, N] p(item | history) in our item order; a history is item ids, oldest first."""
        scores = torch.as_tensor(self.ranker.score_rec(histories))                     # [n, N]
        return torch.softmax(scores / self.temperature, dim=-1)

    @torch.no_grad()
    def level_targets(self, histories: Sequence[Sequence[str]], targets: Sequence[str], show: bool = False
                      ) -> np.ndarray:
        """[n, depth, width] float16: q_t over level t's codes given the target's true codes before t."""
        depth = self.codes.shape[1]
        out = np.zeros((len(targets), depth, self.width), dtype=np.float16)
        for s in progress(range(0, len(targets), self.batch_size), desc="teacher", disable=not show):
            p = self.probs(histories[s:s + self.batch_size])                        # [b, N]
            tgt = torch.as_tensor([self.ranker.index[t] for t in targets[s:s + self.batch_size]])
            for t in range(depth):
                under = self.prefix[t][None, :] == self.prefix[t][tgt][:, None]     # [b, N] items under the prefix
                q = torch.zeros(len(tgt), self.width).index_add_(1, self.codes[:, t], p * under)   # [b, width]
                out[s:s + len(tgt), t] = (q / q.sum(1, keepdim=True).clamp(min=1e-12)).numpy()
        return out


def cid_teacher(sasrec_path: str, tokenizer, ids, temperature: float = 1.0) -> LevelTeacher:
    """The `LevelTeacher` of the CID space of identifier map `ids` (each item's CID tokens as their
    index inside their level group, the order the level softmax of `LevelVocab` scores them in)."""
    from gensar.model.levels import LevelVocab

    levels = LevelVocab(tokenizer, ids)
    codes = np.array([levels.local_of[tokenizer.convert_tokens_to_ids(ids.cid_tokens(item))]
                      for item in ids.item_ids], dtype=np.int64)                 # [N, depth]
    width = max(len(g) for g in levels.space["cid"])
    return LevelTeacher(sasrec_path, ids.item_ids, codes, width, temperature)
