"""The trainer: multi-task seq2seq training of the T5 with checkpoints, resume, selection and DDP.

One epoch = the examples `ExampleBuilder.epoch(epoch)` draws (a seeded function of the epoch), cut
into length-bucketed batches (`length_batches`, also seeded by the epoch), so the data of an epoch
never depends on what happened before. Per step: teacher-forced cross-entropy on the target tokens, AdamW,
learning rate `lr * warmup-then-cosine(step)`, `grad_accum` micro-batches per step, autocast
(bf16, or fp16 with a grad scaler) on GPU only.

After every epoch, rank 0 scores `train.eval_users` validation users with constrained beam search
(NDCG@10 of rec and search, averaged = the selection metric), keeps the best weights, and writes
`<ckpt>/last.pt` atomically: model, optimizer, scheduler, scaler, RNG states, epoch, best metric,
patience counter and the per-epoch history. A crashed or killed run started again with the same
configuration resumes from there and ends with the same weights as an uninterrupted run (the
checkpoint's `fingerprint` must match, else it starts fresh). Early stopping after `train.patience`
epochs without improvement. DVCLive writes per-epoch metrics and curves to the `live` directory.

DDP: run under `torchrun`; `setup_distributed` joins the process group (gloo on CPU, nccl on GPU).
Only rank 0 evaluates, logs and writes files; the stop decision is broadcast.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gensar.config import TrainConfig
from gensar.device import resolve_device
from gensar.eval.metrics import hit_at, ndcg_at, target_ranks
from gensar.model.examples import Example, ExampleBuilder, Request

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# distributed / device helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    name = resolve_device(name)
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def setup_distributed(device_name: str = "auto") -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        logger.info("ddp: rank %d/%d joined (%s)", rank, world, backend)
    return Dist(rank, world, local)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. Autocast is used on GPU only."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------
class Collate:
    """Examples -> padded `input_ids`, `attention_mask`, `labels` (-100 on padding)."""

    def __init__(self, tokenizer, max_input: int, max_target: int = 64):
        self.tok, self.max_input, self.max_target = tokenizer, max_input, max_target

    def __call__(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        enc = self.tok([e.source for e in batch], padding=True, truncation=True,
                       max_length=self.max_input, return_tensors="pt")
        tgt = self.tok([e.target for e in batch], padding=True, truncation=True,
                       max_length=self.max_target, return_tensors="pt")
        labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)  # (B, T) ignore padding
        return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def length_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                   world: int = 1, window: int = 32) -> list[np.ndarray]:
    """Index batches of similar length for one epoch and rank (a seeded function of seed and epoch).

    Random order, then each window of `window * batch_size` examples is sorted by length and cut
    into batches, and the batches are shuffled. Padding to the longest input of a batch then wastes
    less (an office epoch, batch 256, lengths in characters as `fit` passes them: 49% of a random
    batch's tokens are real, 64% here), while every batch still comes from a random slice of the epoch. Under DDP each rank takes every `world`-th batch; the
    last `len % world` batches are dropped so that every rank runs the same number of steps.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if len(batches) < world:                        # tiny data: one share of the epoch per rank
        return [order[rank::world]]
    usable = len(batches) - len(batches) % world
    return batches[rank:usable:world]


def n_length_batches(n: int, batch_size: int, world: int = 1, window: int = 32) -> int:
    """How many batches `length_batches` gives each rank for `n` examples."""
    span = batch_size * window
    total = (n // span) * window + math.ceil((n % span) / batch_size)
    return max(1, total // world) if n else 0


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def validate(gm, requests: list[Request], k: int = 10, beams: int = 20, batch: int = 16,
             show: bool = True) -> dict[str, float]:
    """Full-ranking NDCG@k and Recall@k of rec and search requests (metric code of gensar.eval.metrics);
    `ndcg@k` is their mean."""
    out: dict[str, float] = {}
    for behavior in ("rec", "search"):
        reqs = [r for r in requests if r.behavior == behavior]
        if not reqs:
            continue
        ranked = []
        for i in tqdm(range(0, len(reqs), batch), desc=f"valid {behavior}", disable=not show, leave=False):
            chunk = reqs[i:i + batch]
            if behavior == "rec":
                hits = gm.recommend_batch([r.history for r in chunk], k, beams=beams)
            else:
                hits = gm.search_batch([r.query for r in chunk], [r.history for r in chunk], k, beams=beams)
            ranked += [[item for item, _ in items] for items in hits]
        ranks = target_ranks(ranked, [r.target for r in reqs])           # 1-based, 0 = not in the top k
        out[f"{behavior}/ndcg@{k}"] = float(ndcg_at(ranks, k).mean())
        out[f"{behavior}/recall@{k}"] = float(hit_at(ranks, k).mean())
    parts = [out[f"{b}/ndcg@{k}"] for b in ("rec", "search") if f"{b}/ndcg@{k}" in out]
    out[f"ndcg@{k}"] = sum(parts) / len(parts) if parts else 0.0
    return out


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(ckpt_dir: str | Path, fingerprint: str) -> dict | None:
    """The last checkpoint when it exists and was written by the same configuration."""
    path = Path(ckpt_dir) / "last.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        logger.warning("%s: written by another configuration, data or training code (fingerprint %s, "
                       "now %s); starting fresh", path, state.get("fingerprint"), fingerprint)
        return None
    return state


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def fit(model, tokenizer, builder: ExampleBuilder, make_generator, valid: list[Request], cfg: TrainConfig,
        ckpt_dir: str | Path, live_dir: str | Path | None, fingerprint: str, d: Dist = Dist(),
        device: torch.device | None = None) -> dict:
    """Train `model` in place; at the end it holds the best weights. Returns a summary.

    `make_generator(model) -> GenSARModel` wraps the bare model for validation (rank 0 only).
    """
    device = device or pick_device(cfg.device, d.local_rank)
    ckpt_dir = Path(ckpt_dir)
    if d.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if d.world > 1 else model

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    micro_per_epoch = n_length_batches(builder.epoch_size(), cfg.batch_size, d.world)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    collate = Collate(tokenizer, cfg.max_input_tokens, max(cfg.max_query_tokens * 2, 16) + 8)

    start_epoch, best, best_epoch, bad, history = 0, -1.0, -1, 0, []
    state = load_checkpoint(ckpt_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        bad, history = state["bad_epochs"], state["history"]
        if d.main:
            logger.info("train: resuming from %s after epoch %d (best ndcg@10 %.4f at epoch %d)",
                        ckpt_dir / "last.pt", state["epoch"], best, best_epoch)
    live = _open_live(live_dir, history) if d.main else None
    logger.info("train: rank %d/%d on %s, %d examples/epoch, %d optimizer steps/epoch, %d epochs, amp %s",
                d.rank, d.world, device, builder.epoch_size(), steps_per_epoch, cfg.epochs, amp)

    stopped = start_epoch >= cfg.epochs or bad >= cfg.patience
    for epoch in range(start_epoch, cfg.epochs):
        if stopped:
            break
        t0 = time.time()
        examples = builder.epoch(epoch, cfg.seed)
        lengths = np.array([len(e.source) for e in examples])   # characters: a cheap proxy for tokens
        batches = length_batches(lengths, cfg.batch_size, cfg.seed, epoch, d.rank, d.world)
        loader = DataLoader(examples, batch_sampler=batches, collate_fn=collate)
        net.train()
        loss_sum, n_batches, n_seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not d.main, mininterval=2.0)
        for i, batch in enumerate(bar):
            batch = {k: v.to(device) for k, v in batch.items()}
            last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
            sync = last_micro or d.world == 1
            ctx = net.no_sync() if (d.world > 1 and not sync) else _null()
            with ctx, torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = net(**batch).loss
                scaler.scale(loss / cfg.grad_accum).backward()
            if last_micro:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            loss_sum += loss.item()
            n_batches += 1
            n_seen += batch["input_ids"].shape[0]
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        train_time = time.time() - t0
        row = {"epoch": epoch, "train/loss": loss_sum / max(1, n_batches),
               "lr": scheduler.get_last_lr()[0], "examples": n_seen * d.world,
               "examples_per_s": n_seen * d.world / max(train_time, 1e-9)}

        # ---- validation on rank 0, decision broadcast to every rank
        metrics = [None]
        if d.main:
            t1 = time.time()
            metrics[0] = validate(make_generator(model), valid, 10, cfg.eval_beams) if valid else {"ndcg@10": 0.0}
            metrics[0]["valid_seconds"] = time.time() - t1
        if d.world > 1:
            dist.broadcast_object_list(metrics, src=0)
        row.update({f"valid/{k}": v for k, v in metrics[0].items()})
        row["epoch_seconds"] = time.time() - t0
        history.append(row)
        score = metrics[0]["ndcg@10"]
        if score > best:
            best, best_epoch, bad = score, epoch, 0
            if d.main:
                _atomic_save(model.state_dict(), ckpt_dir / "best.pt")
        else:
            bad += 1
        stopped = bad >= cfg.patience
        if d.main:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "rng": _rng_state(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                          "bad_epochs": bad, "history": history, "fingerprint": fingerprint},
                         ckpt_dir / "last.pt")
            _log_live(live, row)
            logger.info("epoch %d: loss %.4f, valid ndcg@10 %.4f (rec %.4f, search %.4f), %.1f ex/s, %.1f s%s",
                        epoch, row["train/loss"], score, row.get("valid/rec/ndcg@10", float("nan")),
                        row.get("valid/search/ndcg@10", float("nan")), row["examples_per_s"],
                        row["epoch_seconds"], " (early stop)" if stopped else "")
        barrier(d)

    # ---- the best weights end up in `model`
    best_path = ckpt_dir / "best.pt"
    barrier(d)
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    if live is not None:
        live.end()
    return {"best_epoch": best_epoch, "best/ndcg@10": best, "epochs_run": len(history),
            "history": history, "world_size": d.world, "steps_per_epoch": steps_per_epoch,
            "early_stopped": bool(stopped and len(history) < cfg.epochs)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _open_live(live_dir, history: list[dict]):
    """A fresh DVCLive run; on resume the checkpoint's history is replayed, so the curves have one
    point per finished epoch even when the killed run logged one more."""
    if not live_dir:
        return None
    from dvclive import Live

    live = Live(dir=str(live_dir), resume=False, dvcyaml=False, save_dvc_exp=False)
    for row in history:
        _log_live(live, row)
    return live


def _log_live(live, row: dict) -> None:
    if live is None:
        return
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)):
            live.log_metric(k, float(v))
    live.next_step()
