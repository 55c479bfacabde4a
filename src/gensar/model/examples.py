"""Multi-task training examples from the canonical tables (issue 4, item 3).

Every user's events are read in time order (`step`; twin events of one click share a step). For
each TRAIN event at step t the history is the user's TRAIN events with step < t (strictly before,
so never the twin of the target), at most `train.history_len` clicks of them (twin events of one
click count once, rendered by `train.history_twins`), and the tasks are

    rec     rec event     history                 -> CID of the item       (prompts.rec_input)
    search  search event  history + its query     -> SID of the item       (prompts.search_input)
    query   search event  history                 -> the query text        (prompts.query_input)
    adhoc   search event  the query alone         -> SID of the item       (prompts.adhoc_input)
    align   every item    item text -> SID, item text -> CID, SID -> title, CID -> title

With `train.causal` (a causal encoder) a rec example is one stretch of a user's clicks
(`rec_chunks`: up to `history_len` target clicks behind `history_len` clicks of context), rendered
by `prompts.rec_sequence`, with a target after every `<rec>`: each target reads exactly what the
inference input of its history gives the encoder, and the trainer packs all of them into one pass.

Validation and test events are never targets and never in a training history. Validation requests
(model selection) and test requests (evaluation) use the events strictly before their step, of any
split (`eval_requests`).

Sampling: `train.tasks[task]` is the number of times each example of that task is drawn per epoch
in expectation (1.0 all of them once, 0.3 a random 30%, 2.0 each twice). The draw and the prompt
template of each example depend only on (seed, epoch), so a resumed run sees the same data.
"""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from gensar.config import TrainConfig
from gensar.model import prompts
from gensar.model.prompts import IdentifierMap

logger = logging.getLogger(__name__)

TASKS = ("rec", "search", "query", "adhoc", "align")


class Event(NamedTuple):
    """One interaction; indexable as (behavior, item_id, query) as prompts expect."""
    behavior: str
    item_id: str
    query: str | None
    step: int = -1
    split: str = "train"


@dataclass(frozen=True)
class Example:
    task: str
    source: str                          # encoder input text
    target: str | tuple[str | None, ...]  # decoder target text; a rec sequence (`train.causal`): the
                                         # identifier after each `<rec>` of the source (None: no target)
    soft: np.ndarray | None = field(default=None, compare=False)   # rec sequence with `train.distill`:
                                         # [targets that are not None, depth, width] teacher code distributions
    paths: tuple | None = field(default=None, compare=False)   # with `train.distill_paths` P: (CID strings
                                         # [targets][P] of items drawn from the teacher, rows [targets, P, depth, width])


@dataclass(frozen=True)
class Request:
    """An evaluation request: predict `target` (an item id) for `behavior` given `history`."""
    user_id: str
    behavior: str            # 'rec' or 'search'
    history: list            # list[Event], time order, strictly before the target step
    query: str | None        # the search query (None for rec)
    target: str              # the clicked item id


def user_events(interactions: pd.DataFrame, queries: pd.DataFrame) -> dict[str, list[Event]]:
    """Each user's events in time order (step, then rec before search for twin events)."""
    for col in ("user_id", "item_id", "step", "behavior", "query_id", "split"):
        if col not in interactions.columns:
            raise ValueError(f"interactions: column '{col}' missing (have {list(interactions.columns)})")
    qtext = dict(zip(queries["query_id"].astype(str), queries["text"].astype(str)))
    df = interactions.sort_values(["user_id", "step", "behavior"], kind="stable")
    out: dict[str, list[Event]] = {}
    for row in df.itertuples(index=False):
        query = None
        if row.behavior == "search":
            if row.query_id is None or pd.isna(row.query_id) or str(row.query_id) not in qtext:
                raise ValueError(f"interactions: search event of user {row.user_id!r} at step {row.step} "
                                 f"has unknown query_id {row.query_id!r}")
            query = qtext[str(row.query_id)]
        out.setdefault(str(row.user_id), []).append(
            Event(str(row.behavior), str(row.item_id), query, int(row.step), str(row.split)))
    return out


def history_before(events: list[Event], step: int, splits: tuple[str, ...] | None = None) -> list[Event]:
    """Events strictly before `step` (twins of the target excluded), optionally of some splits only."""
    return [e for e in events if e.step < step and (splits is None or e.split in splits)]


class ExampleBuilder:
    """Builds the per-epoch training examples; the pools are computed once."""

    def __init__(self, events: dict[str, list[Event]], items: pd.DataFrame, ids: IdentifierMap,
                 cfg: TrainConfig, count: Callable[[str], int] | None = None, teacher=None):
        """`count`: the tokenizer's token counter (`prompts.token_counter`); with it, histories are
        fitted to `cfg.max_input_tokens` by leaving out their oldest clicks, as at inference.
        `teacher`: a `gensar.model.distill.LevelTeacher`; with it (and `train.causal`) every rec
        target carries the teacher's code distributions, computed here once."""
        self.ids, self.cfg, self.count = ids, cfg, count
        unknown = set(cfg.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"train.tasks: unknown task(s) {sorted(unknown)} (known: {', '.join(TASKS)})")
        # pools of (task, payload) with payloads small tuples; texts are rendered per epoch
        self.pools: dict[str, list[tuple]] = {t: [] for t in TASKS}
        if cfg.causal and cfg.history_twins == "both":
            raise ValueError("train.causal: a click must show one entry; set train.history_twins to rec or search")
        teach: list[tuple[list[str], str]] = []        # (clicked items before, target) of every rec target
        for user, evs in events.items():
            train = [e for e in evs if e.split == "train"]
            if cfg.causal:
                clicks = prompts.history_clicks(train, cfg.history_twins)
                chunks = rec_chunks(clicks, cfg.history_len)
                self.pools["rec"] += chunks
                if teacher is not None:
                    items_before, new = [c[0][1] for c in clicks], 0     # new: clicks before this chunk's targets
                    for chunk, n_context in chunks:
                        first = new - n_context                        # chunk[j] is clicks[first + j]
                        teach += [(items_before[:first + j], chunk[j][0][1]) for j in prompts.rec_targets(chunk, n_context)]
                        new += len(chunk) - n_context
            for e in train:
                if e.item_id not in ids:
                    raise ValueError(f"interactions: item {e.item_id!r} of user {user!r} has no identifier")
                # twins make a click up to two events: keep enough events for history_len clicks
                hist = [h for h in train if h.step < e.step][-2 * cfg.history_len:] if cfg.history_len else []
                if e.behavior == "rec":
                    if not cfg.causal:            # causal: the user's rec sequences above
                        self.pools["rec"].append((hist, e))
                else:
                    self.pools["search"].append((hist, e))
                    self.pools["query"].append((hist, e))
                    self.pools["adhoc"].append((None, e))
        if teach:
            if cfg.distill_paths < 0:
                raise ValueError(f"train.distill_paths must be >= 0, got {cfg.distill_paths}")
            if not 0.0 < cfg.distill_share <= 1.0:
                raise ValueError(f"train.distill_share must be in (0, 1], got {cfg.distill_share}")
            soft, drawn = teacher.teach([h for h, _ in teach], [t for _, t in teach], cfg.distill_paths, cfg.seed,
                                        show=True)
            logger.info("examples: teacher code distributions of %d rec targets, %d drawn paths each (%.0f MB)",
                        len(soft), cfg.distill_paths, soft.nbytes / 2**20)
            at, pool = 0, []
            for chunk, n_context in self.pools["rec"]:
                n = len(prompts.rec_targets(chunk, n_context))
                paths = None
                if cfg.distill_paths:      # (identifier strings [n][P], their rows [n, P, depth, width])
                    paths = ([tuple(prompts.id_string(i, "cid", ids) for i in row) for row in drawn[at:at + n]],
                             soft[at:at + n, 1:])
                pool.append((chunk, n_context, soft[at:at + n, 0], paths))
                at += n
            self.pools["rec"] = pool
        texts = dict(zip(items["item_id"].astype(str), items["text"].astype(str)))
        titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
        for item in ids.item_ids:
            if item in texts:
                self.pools["align"].append((texts[item], titles[item] or texts[item], item))
        logger.info("examples: pools %s", {t: len(p) for t, p in self.pools.items()})

    def epoch_size(self) -> int:
        return sum(self._count(t) for t in TASKS)

    def _count(self, task: str) -> int:
        w = float(self.cfg.tasks.get(task, 0.0))
        n = len(self.pools[task]) * (4 if task == "align" else 1)
        return round(w * n)

    def epoch(self, epoch: int, seed: int = 0) -> list[Example]:
        """The examples of one epoch: a seeded draw per task, a seeded template per example."""
        rng = random.Random(seed * 1_000_003 + epoch)
        out: list[Example] = []
        for task in TASKS:
            w = float(self.cfg.tasks.get(task, 0.0))
            pool = self.pools[task]
            if w <= 0 or not pool:
                continue
            whole, frac = math.floor(w), w - math.floor(w)
            chosen = list(range(len(pool))) * whole
            chosen += rng.sample(range(len(pool)), round(frac * len(pool)))
            for i in chosen:
                out.extend(self._render(task, pool[i], rng))
        return out

    def _render(self, task: str, payload: tuple, rng: random.Random) -> list[Example]:
        c, ids = self.cfg, self.ids
        kw = {"history_len": c.history_len, "max_query_words": c.max_query_tokens, "template": None, "rng": rng,
              "twins": c.history_twins, "causal": c.causal, "max_tokens": c.max_input_tokens, "count": self.count}
        if task == "rec" and c.causal:
            clicks, n_context, soft, paths = (*payload, None, None)[:4]
            source, targets = prompts.rec_sequence(clicks, ids, n_context, c.max_query_tokens)
            if paths is not None and c.distill_share < 1.0:     # this epoch's share of targets shows its paths
                paths = ([row if rng.random() < c.distill_share else () for row in paths[0]], paths[1])
            return [Example(task, source, targets, soft, paths)]
        if task == "rec":
            hist, e = payload
            return [Example(task, prompts.rec_input(hist, ids, **kw), prompts.id_target(e.item_id, "cid", ids))]
        if task == "search":
            hist, e = payload
            return [Example(task, prompts.search_input(e.query, hist, ids, **kw),
                            prompts.id_target(e.item_id, "sid", ids))]
        if task == "query":
            hist, e = payload
            return [Example(task, prompts.query_input(hist, ids, **kw),
                            prompts.text_target(e.query, c.max_query_tokens))]
        if task == "adhoc":
            _, e = payload
            return [Example(task, prompts.adhoc_input(e.query, c.max_query_tokens, None, rng),
                            prompts.id_target(e.item_id, "sid", ids))]
        text, title, item = payload  # align: four directions per item
        words = c.max_input_tokens // 2
        return [
            Example(task, prompts.text_to_id_input(text, "sid", words, None, rng), prompts.id_target(item, "sid", ids)),
            Example(task, prompts.text_to_id_input(text, "cid", words, None, rng), prompts.id_target(item, "cid", ids)),
            Example(task, prompts.id_to_text_input(item, "sid", ids, None, rng),
                    prompts.text_target(title, c.max_query_tokens * 2)),
            Example(task, prompts.id_to_text_input(item, "cid", ids, None, rng),
                    prompts.text_target(title, c.max_query_tokens * 2)),
        ]


def rec_chunks(clicks: list[list], history_len: int) -> list[tuple[list[list], int]]:
    """A user's clicks cut for causal rec sequences: (clicks, n_context) pieces in which the clicks
    after the first n_context are targets. Each click is a target exactly once, and sees at least
    `history_len` clicks before it (all it has when fewer): the targets come in runs of
    `history_len`, each behind the `history_len` clicks before it as context."""
    step = max(1, history_len)
    return [(clicks[max(0, s - history_len):s + step], s - max(0, s - history_len))
            for s in range(0, len(clicks), step)]


def eval_requests(events: dict[str, list[Event]], split: str = "valid", users: list[str] | None = None
                  ) -> list[Request]:
    """One request per `split` event of each user; its history is every event strictly before it."""
    out = []
    for user in (users if users is not None else sorted(events)):
        evs = events[user]
        for e in evs:
            if e.split == split:
                out.append(Request(user, e.behavior, history_before(evs, e.step), e.query, e.item_id))
    return out


def sample_users(events: dict[str, list[Event]], n: int, seed: int = 0, split: str = "valid") -> list[str]:
    """`n` users (all when n <= 0) that have a `split` event, a seeded but stable choice."""
    users = sorted(u for u, evs in events.items() if any(e.split == split for e in evs))
    if n <= 0 or n >= len(users):
        return users
    idx = np.random.default_rng(seed).choice(len(users), size=n, replace=False)
    return [users[i] for i in sorted(idx)]


def validation_requests(events: dict[str, list[Event]], n_users: int, seed: int = 0,
                        behaviors: Iterable[str] = ("rec", "search")) -> list[Request]:
    """The sample a trainer validates on (`train.eval_users`, `train.seed`): the `valid` requests
    of `n_users` seeded users, those of `behaviors` only."""
    behaviors = set(behaviors)
    return [r for r in eval_requests(events, "valid", sample_users(events, n_users, seed, "valid"))
            if r.behavior in behaviors]
