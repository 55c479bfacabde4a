"""Leave-one-out splits and leak-free histories.

Per user and behavior, events in step order: the last is `test`, the second last `valid`, the rest
`train`. A user with fewer than 3 events of a behavior keeps all of them in `train` for that
behavior (there is nothing to hold out without leaving an empty history).

The history of a target at step `s` is the user's events with step strictly below `s`. In `paper`
mode the rec and the search event of one click are twins sharing a step, so neither the target nor
its twin can ever be in its own history.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MIN_EVENTS_FOR_HOLDOUT = 3


def assign_splits(interactions: pd.DataFrame) -> pd.Series:
    """'train' | 'valid' | 'test' per event (index aligned with `interactions`)."""
    g = interactions.groupby(["user_id", "behavior"], sort=False)["step"]
    # rank from the end among the user's events of this behavior: 0 = last
    from_end = g.rank(method="first", ascending=False).astype(np.int64) - 1
    n = g.transform("size")
    split = np.where(n < MIN_EVENTS_FOR_HOLDOUT, "train",
                     np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train")))
    return pd.Series(split, index=interactions.index, name="split")


def history(interactions: pd.DataFrame, user: str, step: int,
            splits_allowed: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The user's events strictly before `step` (never the target nor its twin), in step order.

    `splits_allowed` keeps only events of those splits, e.g. ('train',) for training examples.
    """
    ev = interactions[(interactions["user_id"] == user) & (interactions["step"] < step)]
    if splits_allowed is not None:
        ev = ev[ev["split"].isin(splits_allowed)]
    return ev.sort_values("step", kind="stable")
