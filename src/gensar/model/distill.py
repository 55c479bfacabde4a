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

Teacher forcing only ever shows the student the clicked item's path, yet beam search ranks items by
the student's codes under *other* prefixes too, which nothing trains (on office the items the T5
puts above the target win mostly on levels below a wrong first code). With `train.distill_paths` = P
each rec target also gets P paths of items drawn from the teacher, the clicked item left out:

    item_k ~ p(item | clicks before) with p(target) set to 0, without replacement
    q_t along item_k's path as above (prefix = item_k's codes before t)

and the student learns the teacher's code distributions on them (extra decoder blocks of the same
target, `gensar.model.train.Collate`): its scores of the competitors the beam meets follow the teacher.
Their hard labels (weight 1 - a) are the drawn item's own codes: a sample of the teacher's distribution
(the clicked item left out), so in expectation they pull the same way as the soft rows.
With `train.distill_share` = s < 1 a seeded draw of each epoch shows the drawn paths of a share s of
the rec targets only (`ExampleBuilder._render`): fewer decoder blocks a step, the same rows over epochs.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from gensar.eval.baselines import SASRecRanker
from gensar.logs import progress

logger = logging.getLogger(__name__)


def prefix_groups(codes: np.ndarray) -> list[np.ndarray]:
    """codes [N, depth] -> per depth t [N] the group of each item's first t codes (t = 0: one group)."""
    out = [np.zeros(len(codes), dtype=np.int64)]
    for t in range(1, codes.shape[1]):
        out.append(np.unique(codes[:, :t], axis=0, return_inverse=True)[1].reshape(-1))
    return out


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
        self.item_ids = list(item_ids)
        self.codes = torch.as_tensor(np.asarray(codes, dtype=np.int64))     # [N, depth]
        self.width, self.temperature, self.batch_size = width, temperature, batch_size
        # prefix[t][i]: the group of item i's first t codes (prefix[0] = one group of every item)
        self.prefix = [torch.as_tensor(g) for g in prefix_groups(np.asarray(codes, dtype=np.int64))]

    @torch.no_grad()
    def probs(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """[n, N] p(item | history) in our item order; a history is item ids, oldest first."""
        scores = torch.as_tensor(self.ranker.score_rec(histories))                     # [n, N]
        return torch.softmax(scores / self.temperature, dim=-1)

    @torch.no_grad()
    def level_targets(self, histories: Sequence[Sequence[str]], targets: Sequence[str], show: bool = False
                      ) -> np.ndarray:
        """[n, depth, width] float16: q_t over level t's codes given the target's true codes before t."""
        return self.teach(histories, targets, 0, show=show)[0][:, 0]

    @torch.no_grad()
    def teach(self, histories: Sequence[Sequence[str]], targets: Sequence[str], paths: int = 0, seed: int = 0,
              show: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """The rows of each target and of `paths` items drawn from the teacher besides it.

        Returns (soft [n, 1 + paths, depth, width] float16: [:, 0] the target's path, [:, k] the k-th
        drawn item's; drawn [n][paths]: those items' ids). An item is drawn from p(item | history) with
        the target left out, without replacement, by a generator seeded with `seed`."""
        depth = self.codes.shape[1]
        out = np.zeros((len(targets), 1 + paths, depth, self.width), dtype=np.float16)
        drawn: list[list[str]] = []
        gen = torch.Generator().manual_seed(seed)
        for s in progress(range(0, len(targets), self.batch_size), desc="teacher", disable=not show):
            p = self.probs(histories[s:s + self.batch_size])                        # [b, N]
            tgt = torch.as_tensor([self.ranker.index[t] for t in targets[s:s + self.batch_size]])
            rows = [tgt]
            if paths:
                others = p.clamp(min=1e-30).scatter(1, tgt[:, None], 0.0)          # the target left out
                picks = torch.multinomial(others, paths, generator=gen)             # [b, paths]
                rows += list(picks.T)
                drawn += [[self.item_ids[j] for j in row] for row in picks.tolist()]
            for k, items in enumerate(rows):
                out[s:s + len(tgt), k] = self._path_rows(p, items).numpy()
        return out, drawn

    def _path_rows(self, p: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[b, depth, width]: q_t along the path of item `items[i]` under p[i] ([b, N])."""
        rows = torch.zeros(len(items), self.codes.shape[1], self.width)
        for t in range(self.codes.shape[1]):
            under = self.prefix[t][None, :] == self.prefix[t][items][:, None]           # [b, N] items under the prefix
            q = torch.zeros(len(items), self.width).index_add_(1, self.codes[:, t], p * under)   # [b, width]
            rows[:, t] = q / q.sum(1, keepdim=True).clamp(min=1e-12)
        return rows


def cid_teacher(sasrec_path: str, tokenizer, ids, temperature: float = 1.0) -> LevelTeacher:
    """The `LevelTeacher` of the CID space of identifier map `ids` (each item's CID tokens as their
    index inside their level group, the order the level softmax of `LevelVocab` scores them in)."""
    from gensar.model.levels import LevelVocab

    levels = LevelVocab(tokenizer, ids)
    codes = np.array([levels.local_of[tokenizer.convert_tokens_to_ids(ids.cid_tokens(item))]
                      for item in ids.item_ids], dtype=np.int64)                 # [N, depth]
    width = max(len(g) for g in levels.space["cid"])
    return LevelTeacher(sasrec_path, ids.item_ids, codes, width, temperature)
