"""SASRec-CE (`gensar.ids.sasrec`) trained with full softmax cross-entropy over all items: the data
it learns from, its full-ranking metrics and the training loop.

Data rules (the same everywhere in the project):
  * a user's timeline is one item per `step` in step order (the twin rec/search events of one click
    in paper mode share a step and an item, so they count once; in paper mode that is exactly the
    rec sequence);
  * training sees only the timeline steps whose events are in the `train` split: no validation or
    test target is ever an input or a target during training;
  * an evaluation case is a rec event of the `valid` (or `test`) split; its history is the user's
    timeline items with step strictly before the target's step (for test this includes the
    validation item), the last `max_len` of them.

Training: cross-entropy over all items at every non-padded position (next-item prediction), Adam,
early stopping on validation NDCG@10.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gensar.config import CollabConfig
from gensar.device import resolve_device
from gensar.eval.metrics import hit_at, ndcg_at
from gensar.ids.sasrec import SASRec, SASRecConfig, pad_left
from gensar.logs import progress

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def user_timelines(interactions: pd.DataFrame, item_index: dict[str, int]) -> pd.DataFrame:
    """One row per (user, step): item index, split of the step, and whether it holds a rec event.

    Twin events of one step must name the same item; a step whose events disagree is an error.
    Returns columns user_id, step, item (int, 1-based), split, is_rec, sorted by user and step.
    """
    need = {"user_id", "item_id", "step", "behavior", "split"}
    missing = need - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions table lacks columns {sorted(missing)}")
    df = interactions[["user_id", "item_id", "step", "behavior", "split"]].copy()
    unknown = ~df["item_id"].isin(item_index.keys())
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(f"interactions row {row}: item_id {df['item_id'].iloc[row]!r} is not in the items table")
    df["item"] = df["item_id"].map(item_index).astype(np.int64)
    df["is_rec"] = df["behavior"] == "rec"
    df["is_train"] = df["split"] == "train"
    g = df.groupby(["user_id", "step"], sort=True)
    n_items_per_step = g["item"].nunique()
    if (n_items_per_step > 1).any():
        u, s = n_items_per_step[n_items_per_step > 1].index[0]
        raise ValueError(f"interactions: user {u!r} step {s} has events on different items")
    # a step is 'train' only if all of its events are train (twins share the split in paper mode)
    out = g.agg(item=("item", "first"), is_rec=("is_rec", "any"), all_train=("is_train", "all")).reset_index()
    return out


def train_sequences(timelines: pd.DataFrame) -> list[np.ndarray]:
    """The train part of every user's timeline (item indices in step order), users with >= 2 items."""
    tr = timelines[timelines["all_train"]]
    seqs = [g.to_numpy() for _, g in tr.groupby("user_id", sort=True)["item"]]
    return [s for s in seqs if len(s) >= 2]


def eval_cases(interactions: pd.DataFrame, timelines: pd.DataFrame, item_index: dict[str, int],
               split: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Histories [n, max_len] (left-padded with 0) and targets [n] for the rec events of `split`."""
    tg = interactions[(interactions["behavior"] == "rec") & (interactions["split"] == split)]
    tg = tg.sort_values(["user_id", "step"])
    by_user = {u: (g["step"].to_numpy(), g["item"].to_numpy()) for u, g in timelines.groupby("user_id", sort=False)}
    hist = np.zeros((len(tg), max_len), dtype=np.int64)
    targets = np.zeros(len(tg), dtype=np.int64)
    for i, (u, step, item) in enumerate(zip(tg["user_id"], tg["step"], tg["item_id"])):
        steps, items = by_user[u]
        h = items[steps < step][-max_len:]               # events strictly before the target
        if len(h):
            hist[i, -len(h):] = h
        targets[i] = item_index[item]
    return hist, targets


# --------------------------------------------------------------------------------------------
# metrics (full ranking over all items)
# --------------------------------------------------------------------------------------------
def full_ranking_metrics(ranks: np.ndarray, ks=(5, 10)) -> dict[str, float]:
    """ranks: 1-based rank of each target among all items -> Recall@k and NDCG@k (one relevant item),
    computed by the evaluation module's metric functions (the same code scores every model)."""
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(hit_at(ranks, k).mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(ndcg_at(ranks, k).mean()) if len(ranks) else 0.0
    return out


@torch.no_grad()
def sasrec_target_ranks(model: SASRec, hist: np.ndarray, targets: np.ndarray, batch_size: int = 1024,
                 device: str = "cpu") -> np.ndarray:
    """1-based rank of each target among all items (ties count in the target's favour)."""
    model.eval()
    ranks = np.zeros(len(targets), dtype=np.int64)
    for i in range(0, len(targets), batch_size):
        seq = torch.as_tensor(hist[i:i + batch_size], device=device)
        tgt = torch.as_tensor(targets[i:i + batch_size], device=device)
        scores = model.item_scores(model(seq)[:, -1])                     # (b, n_items)
        tscore = scores.gather(1, (tgt - 1)[:, None])
        ranks[i:i + len(tgt)] = ((scores > tscore).sum(1) + 1).cpu().numpy()
    return ranks


def evaluate_full_ranking(model: SASRec, hist: np.ndarray, targets: np.ndarray, ks=(5, 10),
                          batch_size: int = 1024, device: str = "cpu") -> dict[str, float]:
    """Recall@k / NDCG@k over all items for the cases (hist, targets) built by `eval_cases`."""
    return full_ranking_metrics(sasrec_target_ranks(model, hist, targets, batch_size, device), ks)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def train_sasrec(seqs: list[np.ndarray], n_items: int, cfg: CollabConfig,
                 valid: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[SASRec, dict]:
    """Train on `seqs` (train timelines) with full-softmax CE; early stopping on valid NDCG@10.

    Returns the best model (by validation NDCG@10; the last one without validation) and a history.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    model = SASRec(SASRecConfig.from_collab(cfg, n_items)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # each sequence s_1..s_m (last max_len+1 items) gives inputs s_1..s_{m-1} and targets s_2..s_m
    windows = [s[-(cfg.max_len + 1):] for s in seqs]
    inputs = pad_left([w[:-1] for w in windows], cfg.max_len)
    labels = pad_left([w[1:] for w in windows], cfg.max_len)
    n_pos = int((labels > 0).sum())
    logger.info("SASRec-CE: %d train sequences, %d target positions, %d items, device %s",
                len(seqs), n_pos, n_items, device)
    best, best_state, bad, history = -1.0, None, 0, []
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(seqs))
        total, t0 = 0.0, time.perf_counter()
        for i in progress(range(0, len(order), cfg.batch_size), desc=f"sasrec epoch {epoch}", leave=False,
                      disable=len(order) <= cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, y = inputs[idx], labels[idx]
            T = int((x > 0).sum(1).max())                      # pad to the longest row of the batch
            x = torch.as_tensor(x[:, -T:], device=device)
            y = torch.as_tensor(y[:, -T:], device=device)
            h = model(x)                                        # (B, T, H)
            keep = y > 0
            logits = model.item_scores(h[keep])                 # (P, n_items): only real positions
            loss = F.cross_entropy(logits, y[keep] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * int(keep.sum())
        rec = {"epoch": epoch, "loss": total / max(n_pos, 1), "seconds": time.perf_counter() - t0}
        if valid is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            rec.update({f"valid/{k}": v for k, v in evaluate_full_ranking(model, *valid, device=device).items()})
            if rec["valid/ndcg@10"] > best:
                best, bad, best_state = rec["valid/ndcg@10"], 0, copy.deepcopy(model.state_dict())
                rec["best"] = True
            else:
                bad += 1
        history.append(rec)
        logger.info("sasrec epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v
                                                   for k, v in rec.items() if k != "epoch"})
        if valid is not None and bad >= cfg.patience:
            logger.info("sasrec: early stop at epoch %d (best valid ndcg@10 %.4f)", epoch, best)
            break
        if cfg.max_minutes and time.perf_counter() - t_start > 60 * cfg.max_minutes:
            logger.warning("sasrec: time budget of %.1f min spent after epoch %d: stopping (best valid ndcg@10 %.4f)",
                           cfg.max_minutes, epoch, best)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {"epochs": len(history), "best_valid_ndcg@10": best if best >= 0 else None,
            "train_seconds": time.perf_counter() - t_start, "history": history}
    return model, info
