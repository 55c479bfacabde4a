"""The trainer: multi-task seq2seq training of the T5 with checkpoints, resume, selection and DDP.

One epoch = the examples `ExampleBuilder.epoch(epoch)` draws (a seeded function of the epoch),
tokenized once up front and cut into batches bucketed by real token counts (`length_batches`, also
seeded by the epoch), so the data of an epoch never depends on what happened before. Per step:
teacher-forced cross-entropy (`gensar.model.levels.Seq2SeqLoss`: over the whole vocabulary, or with
`train.id_loss: level` over each identifier level's codes), AdamW, learning rate
`lr * lr_multiplier(train.schedule, step) * cooldown(progress, train.cooldown)` (progress: the share of
`train.max_minutes` spent, else of all steps), `grad_accum` micro-batches per step, autocast (bf16, or
fp16 with a grad scaler) on GPU only.

Rank 0 validates after every epoch, every `train.eval_every_steps` optimizer steps (or
`train.eval_every_minutes` of training time), and when the
`train.max_minutes` training budget is spent: it scores `train.eval_users` validation users with
constrained beam search (NDCG@10 of rec and search, averaged = the selection metric, plus per-level
diagnostics), keeps the best weights, and after every epoch writes `<ckpt>/last.pt` atomically:
model, optimizer, scheduler, scaler, RNG states, epoch, step, best metric, patience counter, training
seconds and the history (one row per validation). With `train.ema` = a > 0 the trainer keeps an
exponential moving average of the weights (torch's `AveragedModel`: w_avg <- d * w_avg + (1 - d) * w
after every optimizer step, d = a once past a warmup, `ema_update`), and validation, the best weights
and the saved model use the average;
`train.eval_raw` also scores the last step's weights at every row (`valid/raw/*`), a paired measure of
what the average buys.
A crashed or killed run started again with the same configuration resumes from the last finished
epoch and ends with the same weights as an uninterrupted run (the checkpoint's `fingerprint` must
match, else it starts fresh). Early stopping after `train.patience` validations without improvement.
DVCLive logs every validation row.

DDP: run under `torchrun`; `setup_distributed` joins the process group (gloo on CPU, nccl on GPU).
Only rank 0 evaluates, logs and writes files; the stop decisions are broadcast.
"""
from __future__ import annotations

import contextlib
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
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from gensar.config import TrainConfig
from gensar.device import resolve_device
from gensar.eval.metrics import hit_at, ndcg_at, target_ranks
from gensar.io import atomic_path
from gensar.logs import progress
from gensar.model.examples import Example, ExampleBuilder, Request
from gensar.model.levels import LevelVocab, Seq2SeqLoss
from gensar.model.prompts import REC

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


def lr_multiplier(schedule: str, step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier of `train.schedule` at optimizer step `step`:

        cosine        linear warmup, then cosine to 0 at `total` (the last step of the last epoch)
        constant      linear warmup, then 1: no horizon, so any wall-clock budget can end it
        inverse_sqrt  linear warmup, then sqrt(warmup / step) (T5's and RQ-VAE-Recommender's schedule)
    """
    if schedule not in ("cosine", "constant", "inverse_sqrt"):
        raise ValueError(f"train.schedule must be cosine, constant or inverse_sqrt, got {schedule!r}")
    if schedule == "cosine":
        return warmup_cosine(step, warmup, total)
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if schedule == "constant":
        return 1.0
    return math.sqrt(max(1, warmup) / (step + 1))                     # inverse_sqrt


def cooldown(progress: float, share: float) -> float:
    """Learning-rate multiplier of `train.cooldown`: 1 until the last `share` of training, then linear
    to 0 at `progress` 1 (warmup-stable-decay: a constant rate that still anneals at the end of a
    budget, here a wall-clock one whose number of steps nobody knows in advance)."""
    if share <= 0.0:
        return 1.0
    return min(1.0, max(0.0, (1.0 - progress) / share))


def ema_update(decay: float):
    """`AveragedModel`'s update of `train.ema`: w_avg <- d * w_avg + (1 - d) * w, with
    d = min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's ExponentialMovingAverage with
    `num_updates`), so a short run's average forgets the random start: 0.94 after 150 steps, `decay`
    (0.995) from step ~1,800 on."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        for a, w in zip(averaged, current):
            a.lerp_(w, 1.0 - d)
    return update


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------
class Collate:
    """Pre-tokenized examples -> padded tensors; an example is (source ids, [(target ids, visible, soft)]).

    An ordinary example has one target that sees the whole source: the batch is `input_ids`,
    `attention_mask` and `labels` (-100 on padding), as HF's T5 takes them. A causal rec sequence
    (`train.causal`) has one target per click: the targets are packed one after the other into one
    decoder row, each a block that starts with the decoder start token, and two masks keep them
    apart (additive, [B, 1, query, key]; the encoder itself is causal, `Seq2SeqLoss(causal=True)`):

        decoder_mask  [B, 1, T, T]  a block reads itself only, causally
        cross_mask    [B, 1, T, S]  block k reads the first `visible` encoder states: the source up to
                                    and including its `<rec>`, as if the input ended there

    T5's decoder position bias depends on offsets inside the block only, so a packed block computes
    what the same target decoded alone would (tested).

    A block's `soft` ([target length, width] or None) is the teacher's code distribution at each of
    its positions (`train.distill`); when a batch has any, `soft` [B, T, width] holds them (zero rows
    elsewhere). With `levels` that score a CID's first code by its items (`train.rec_first: items`),
    `items` [B, T] holds the item index of every CID target at its first position (-1 elsewhere).
    """

    def __init__(self, pad_id: int, causal: bool = False, levels: LevelVocab | None = None):
        self.pad_id, self.causal = pad_id, causal
        self.levels = levels if levels is not None and levels.item_tokens is not None else None

    def __call__(self, batch: list[tuple[list[int], list[tuple[list[int], int, np.ndarray | None]]]]
                 ) -> dict[str, torch.Tensor]:
        src_len = max(len(s) for s, _ in batch)
        tgt_len = max(sum(len(t) for t, *_ in blocks) for _, blocks in batch)
        input_ids = torch.full((len(batch), src_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), src_len), dtype=torch.long)
        labels = torch.full((len(batch), tgt_len), -100, dtype=torch.long)
        for i, (src, blocks) in enumerate(batch):
            input_ids[i, :len(src)] = torch.as_tensor(src)
            mask[i, :len(src)] = 1
            labels[i, :sum(len(t) for t, *_ in blocks)] = torch.as_tensor([x for t, *_ in blocks for x in t])
        out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        widths = {s.shape[1] for _, blocks in batch for *_, s in blocks if s is not None}
        if widths:
            soft = torch.zeros(len(batch), tgt_len, max(widths))
            for i, (_, blocks) in enumerate(batch):
                at = 0
                for tgt, _, s in blocks:
                    if s is not None:
                        soft[i, at:at + len(s), :s.shape[1]] = torch.as_tensor(s.astype(np.float32))
                    at += len(tgt)
            out["soft"] = soft
        if self.levels is not None:
            items = torch.full((len(batch), tgt_len), -1, dtype=torch.long)
            for i, (_, blocks) in enumerate(batch):
                at = 0
                for tgt, *_ in blocks:
                    items[i, at] = self.levels.item_label(tgt)
                    at += len(tgt)
            out["items"] = items
        if not self.causal:
            return out
        neg = torch.finfo(torch.float32).min
        dec_in = torch.full((len(batch), tgt_len), self.pad_id, dtype=torch.long)
        block = torch.full((len(batch), tgt_len), -1, dtype=torch.long)        # block index of each target token
        visible = torch.zeros((len(batch), tgt_len), dtype=torch.long)         # encoder states it may read
        for i, (_, blocks) in enumerate(batch):
            at = 0
            for k, (tgt, vis, _) in enumerate(blocks):
                dec_in[i, at + 1:at + len(tgt)] = torch.as_tensor(tgt[:-1])   # start token, then the target shifted
                block[i, at:at + len(tgt)] = k
                visible[i, at:at + len(tgt)] = vis
                at += len(tgt)
        tri = torch.ones(tgt_len, tgt_len, dtype=torch.bool).tril()
        same = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0) & tri   # [B, T, T]
        reads = torch.arange(src_len)[None, None, :] < visible[:, :, None]                   # [B, T, S]
        out.update(n_targets=torch.tensor(sum(len(b) for _, b in batch)), decoder_input_ids=dec_in,
                   decoder_mask=torch.zeros(same.shape).masked_fill(~same, neg)[:, None],
                   cross_mask=torch.zeros(reads.shape).masked_fill(~reads, neg)[:, None])
        return out


def tokenize_epoch(tokenizer, examples: list[Example], max_input: int, max_target: int, causal: bool = False
                   ) -> list[tuple[list[int], list[tuple[list[int], int, np.ndarray | None]]]]:
    """(source ids, [(target ids, visible source tokens, soft targets or None)]) of every example,
    truncated like the inference path's tokenizer call. With `causal` sources carry no EOS (a causal
    input ends where its request does); a rec sequence's k-th target sits after the k-th `<rec>` of
    its source (with the example's k-th teacher rows, `Example.soft`), followed by the blocks of the
    items the teacher drew for it (`Example.paths`, `train.distill_paths`), and targets cut off by the
    truncation are dropped."""
    src = tokenizer([e.source for e in examples], truncation=True, max_length=max_input,
                    add_special_tokens=not causal).input_ids
    plain = [i for i, e in enumerate(examples) if isinstance(e.target, str)]
    tgt = dict(zip(plain, tokenizer([examples[i].target for i in plain], truncation=True,
                                    max_length=max_target).input_ids)) if plain else {}
    seq_ids = sorted({t for e in examples if not isinstance(e.target, str) for t in e.target if t is not None}
                     | {x for e in examples if e.paths is not None for row in e.paths[0] for x in row})
    codes = dict(zip(seq_ids, tokenizer(seq_ids, add_special_tokens=False).input_ids)) if seq_ids else {}
    rec = tokenizer.convert_tokens_to_ids(REC)
    out, cut = [], 0
    for i, (e, s) in enumerate(zip(examples, src)):
        if i in tgt:
            out.append((s, [(tgt[i], len(s), None)]))
            continue
        marks = [p for p, t in enumerate(s) if t == rec]
        kept = [(p, t) for p, t in zip(marks, e.target) if t is not None]
        blocks = []
        for j, (p, t) in enumerate(kept):
            blocks.append((codes[t], p + 1, None if e.soft is None else e.soft[j]))
            if e.paths is not None:    # the teacher's drawn items: blocks that read what the target reads
                blocks += [(codes[x], p + 1, rows) for x, rows in zip(e.paths[0][j], e.paths[1][j])]
        cut += sum(t is not None for t in e.target[len(marks):])
        if blocks:
            out.append((s, blocks))
    if cut:
        logger.info("examples: %d rec targets beyond train.max_input_tokens = %d dropped", cut, max_input)
    return out


def length_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0,
                   world: int = 1, window: int = 32) -> list[np.ndarray]:
    """Index batches of similar length for one epoch and rank (a seeded function of seed and epoch).

    Random order, then each window of `window * batch_size` examples is sorted by length and cut
    into batches, and the batches are shuffled. Padding to the longest input of a batch then wastes
    less (`fit` passes real token counts), while every batch still comes from a random slice of the
    epoch. Under DDP each rank takes every `world`-th batch; the
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
    `ndcg@k` is their mean. Diagnostics beside them, per task:

        acc/l<t>             teacher-forced accuracy of the code at identifier depth t
        acc_trie/l<t>        the same, the argmax taken over the codes the trie allows after the
                             true prefix (comparable with benchmarks/code_ceiling.py's SASRec row)
        first_code_in_beam   share of targets whose first code is the first code of one of the
                             `beams` identifiers the beam search ends with
        items/ndcg@k, items/recall@k   (rec, `train.rec_first: items`) the item softmax of the first
                             CID position as a ranking of its own: what the beam and the lower levels
                             keep of what the model knows

    A model that cannot place the first code fails for another reason than one that loses the last.
    """
    out: dict[str, float] = {}
    for behavior in ("rec", "search"):
        reqs = [r for r in requests if r.behavior == behavior]
        if not reqs:
            continue
        space = "cid" if behavior == "rec" else "sid"
        sources = gm.sources(behavior, [r.history for r in reqs], [r.query for r in reqs])
        ranked = []
        for i in progress(range(0, len(reqs), batch), desc=f"valid {behavior}", disable=not show, leave=False):
            hits = gm.generate_items(sources[i:i + batch], space, beams, beams=beams)   # every final beam
            ranked += [[item for item, _ in items] for items in hits]
        targets = [r.target for r in reqs]
        ranks = target_ranks([r[:k] for r in ranked], targets)                   # 1-based, 0 = not in the top k
        out[f"{behavior}/ndcg@{k}"] = float(ndcg_at(ranks, k).mean())
        out[f"{behavior}/recall@{k}"] = float(hit_at(ranks, k).mean())
        first = {item: codes[0] for item, codes in gm.codes[space].items()}
        out[f"{behavior}/first_code_in_beam"] = float(np.mean(
            [first[t] in {first[i] for i in r} for t, r in zip(targets, ranked)]))
        if space == "cid" and gm.first_items("cid") is not None:
            head = target_ranks(gm.first_item_ranking(sources, k), targets)
            out[f"rec/items/ndcg@{k}"] = float(ndcg_at(head, k).mean())
            out[f"rec/items/recall@{k}"] = float(hit_at(head, k).mean())
        free, in_trie = gm.level_accuracy(sources, space, targets)
        for t, (acc, acc_trie) in enumerate(zip(free, in_trie)):
            out[f"{behavior}/acc/l{t}"] = acc
            out[f"{behavior}/acc_trie/l{t}"] = acc_trie
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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
        device: torch.device | None = None, timer=time.perf_counter) -> dict:
    """Train `model` in place; at the end it holds the best weights. Returns a summary.

    `make_generator(model) -> GenSARModel` wraps the bare model for validation (rank 0 only).
    Validation runs after every epoch, every `train.eval_every_steps` optimizer steps, and when the
    `train.max_minutes` budget of training time (validation excluded) is spent, which ends training
    cleanly: last checkpoint, best weights and metrics as after the last epoch. `timer() -> seconds`
    is the clock that budget and throughput read (a test passes a fake one).
    """
    device = device or pick_device(cfg.device, d.local_rank)
    ckpt_dir = Path(ckpt_dir)
    if d.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.id_loss not in ("full", "level"):
        raise ValueError(f"train.id_loss must be full or level, got {cfg.id_loss!r}")
    if cfg.rec_first == "items" and cfg.id_loss != "level":
        raise ValueError("train.rec_first: items needs train.id_loss: level (the lower CID levels stay per-level codes)")
    levels = LevelVocab(tokenizer, builder.ids, cfg.rec_first == "items") if cfg.id_loss == "level" else None
    if cfg.distill and levels is None:
        raise ValueError("train.distill needs train.id_loss: level (the teacher's targets are per-level codes)")
    objective = Seq2SeqLoss(model, levels, cfg.label_smoothing, cfg.causal, cfg.distill)
    net = (DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
           if d.world > 1 else objective)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    micro_per_epoch = n_length_batches(builder.epoch_size(), cfg.batch_size, d.world)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total)
    lr_multiplier(cfg.schedule, 0, warmup, total)                      # fail early on an unknown schedule
    if not 0.0 <= cfg.cooldown <= 1.0 or (cfg.cooldown and cfg.schedule == "cosine"):
        raise ValueError(f"train.cooldown must be in [0, 1] and goes with schedule constant or inverse_sqrt "
                         f"(cosine decays already), got {cfg.cooldown} with {cfg.schedule!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"train.ema must be in [0, 1) (0 = off; e.g. 0.99 averages about the last 100 steps), "
                         f"got {cfg.ema}")
    if cfg.eval_raw and not cfg.ema:
        raise ValueError("train.eval_raw scores the last step's weights beside the average: it needs train.ema > 0")
    averaged = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True) \
        if cfg.ema else None

    def scored():
        """The weights that validation scores and the best checkpoint keeps: the average when there is one."""
        return averaged.module if averaged is not None else model

    budget = cfg.max_minutes * 60.0
    clock = [0.0]                   # rank 0's training seconds: every rank decays (and stops) on it

    def multiplier(step: int) -> float:
        progress = clock[0] / budget if budget else step / max(1, total)
        return lr_multiplier(cfg.schedule, step, warmup, total) * cooldown(progress, cfg.cooldown)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    collate = Collate(tokenizer.pad_token_id, cfg.causal, levels)
    max_target = max(cfg.max_query_tokens * 2, 16) + 8

    st = {"epoch": -1, "step": 0, "best": -1.0, "best_row": -1, "bad": 0, "history": [], "train_seconds": 0.0,
          "out_of_time": False}
    state = load_checkpoint(ckpt_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if averaged is not None:   # the fingerprint covers train.ema: a matching checkpoint holds the average
            averaged.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        st.update({k: state[k] for k in st})
        clock[0] = st["train_seconds"]
        if d.main:
            logger.info("train: resuming from %s after epoch %d, step %d (best ndcg@10 %.4f)",
                        ckpt_dir / "last.pt", st["epoch"], st["step"], st["best"])
    live = _open_live(live_dir, st["history"]) if d.main else None
    logger.info("train: rank %d/%d on %s, %d examples/epoch, %d optimizer steps/epoch, %d epochs%s, "
                "loss over %s, lr %.1e %s (warmup %d), amp %s", d.rank, d.world, device, builder.epoch_size(),
                steps_per_epoch, cfg.epochs, f", budget {cfg.max_minutes:g} min" if budget else "",
                "each level's codes" if levels else "the whole vocabulary", cfg.lr, cfg.schedule, warmup, amp)

    since = {"loss": 0.0, "batches": 0, "examples": 0, "seconds": 0.0}   # since the last validation

    def checkpoint_row(epoch: int) -> bool:
        """Validate (rank 0), keep the best weights, log a history row; True when patience ran out."""
        row = {"epoch": epoch, "step": st["step"], "train_minutes": st["train_seconds"] / 60.0,
               "train/loss": since["loss"] / max(1, since["batches"]), "lr": scheduler.get_last_lr()[0],
               "examples": since["examples"] * d.world,
               "examples_per_s": since["examples"] * d.world / max(since["seconds"], 1e-9)}
        since.update(loss=0.0, batches=0, examples=0, seconds=0.0)
        metrics = [None]
        if d.main:
            t1 = time.time()
            metrics[0] = validate(make_generator(scored()), valid, 10, cfg.eval_beams) if valid else {"ndcg@10": 0.0}
            metrics[0]["valid_seconds"] = time.time() - t1
            if cfg.eval_raw and valid:   # the same row, the last step's weights (eval_raw implies an average)
                raw = validate(make_generator(model), valid, 10, cfg.eval_beams)
                metrics[0].update({f"raw/{k}": v for k, v in raw.items()})
        if d.world > 1:
            dist.broadcast_object_list(metrics, src=0)
        row.update({f"valid/{k}": v for k, v in metrics[0].items()})
        st["history"].append(row)
        score = metrics[0]["ndcg@10"]
        if score > st["best"]:
            st.update(best=score, best_row=len(st["history"]) - 1, bad=0)
            if d.main:
                _atomic_save(scored().state_dict(), ckpt_dir / "best.pt")
        else:
            st["bad"] += 1
        if d.main:
            _log_live(live, row)
            logger.info("epoch %d step %d (%.1f min): loss %.4f, valid ndcg@10 %.4f (rec %.4f, search %.4f; "
                        "first code in beam %.3f / %.3f), %.1f ex/s", epoch, st["step"], row["train_minutes"],
                        row["train/loss"], score, row.get("valid/rec/ndcg@10", float("nan")),
                        row.get("valid/search/ndcg@10", float("nan")),
                        row.get("valid/rec/first_code_in_beam", float("nan")),
                        row.get("valid/search/first_code_in_beam", float("nan")), row["examples_per_s"])
            if "valid/raw/ndcg@10" in row:
                logger.info("  last step's weights (not the average): valid ndcg@10 %.4f (rec %.4f, search %.4f)",
                            row["valid/raw/ndcg@10"], row.get("valid/raw/rec/ndcg@10", float("nan")),
                            row.get("valid/raw/search/ndcg@10", float("nan")))
        return st["bad"] >= cfg.patience

    def save_last(epoch: int) -> None:
        if d.main:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "ema": averaged.state_dict() if averaged is not None else None,
                          "rng": _rng_state(), **st, "epoch": epoch, "fingerprint": fingerprint},
                         ckpt_dir / "last.pt")

    stopped = st["out_of_time"] or st["bad"] >= cfg.patience
    for epoch in range(st["epoch"] + 1, cfg.epochs):
        if stopped:
            break
        t0 = timer()
        examples = builder.epoch(epoch, cfg.seed)
        data = tokenize_epoch(tokenizer, examples, cfg.max_input_tokens, max_target, cfg.causal)
        lengths = np.array([len(src) for src, _ in data])               # real token counts
        batches = length_batches(lengths, cfg.batch_size, cfg.seed, epoch, d.rank, d.world)
        loader = DataLoader(data, batch_sampler=batches, collate_fn=collate)
        elapsed = timer() - t0                                           # one reading for both counters
        since["seconds"] += elapsed
        st["train_seconds"] += elapsed
        net.train()
        validated_at = -1
        bar = progress(loader, desc=f"epoch {epoch}", disable=not d.main, mininterval=2.0)
        for i, batch in enumerate(bar):
            t_step = timer()
            targets = int(batch.pop("n_targets", batch["input_ids"].shape[0]))   # a rec sequence has many
            batch = {k: v.to(device) for k, v in batch.items()}
            last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(loader)
            sync = last_micro or d.world == 1
            ctx = net.no_sync() if (d.world > 1 and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = net(**batch)
                scaler.scale(loss / cfg.grad_accum).backward()
            if last_micro:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                st["step"] += 1
            since["loss"] += loss.item()
            since["batches"] += 1
            since["examples"] += targets
            elapsed = timer() - t_step
            since["seconds"] += elapsed
            st["train_seconds"] += elapsed
            bar.set_postfix(loss=f"{since['loss'] / max(1, since['batches']):.4f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if not last_micro:
                continue
            if budget:
                clock[0] = _rank0(st["train_seconds"], d)
            out_of_time = bool(budget) and clock[0] >= budget
            due = (cfg.eval_every_steps and st["step"] % cfg.eval_every_steps == 0) or (
                cfg.eval_every_minutes and _agree(_crossed(st, cfg.eval_every_minutes), d))
            if out_of_time or due:
                validated_at = st["step"]
                stopped = checkpoint_row(epoch)
                if out_of_time:
                    st["out_of_time"] = stopped = True
                    logger.info("train: the %.1f-minute budget is spent after %d steps", cfg.max_minutes, st["step"])
                if stopped:
                    break
                net.train()
        if validated_at != st["step"] and not _agree(_recent(st, cfg.eval_every_minutes), d):
            stopped = checkpoint_row(epoch) or stopped
        save_last(epoch)
        if stopped and d.main and st["bad"] >= cfg.patience:
            logger.info("train: early stop after %d validations without improvement", st["bad"])
        barrier(d)

    # ---- the best weights end up in `model`
    best_path = ckpt_dir / "best.pt"
    barrier(d)
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    if live is not None:
        live.end()
    history = st["history"]
    best_row = history[st["best_row"]] if st["best_row"] >= 0 else {}
    return {"best_epoch": best_row.get("epoch", -1), "best_row": st["best_row"], "best_step": best_row.get("step", -1),
            "best/ndcg@10": st["best"], "epochs_run": len({r["epoch"] for r in history}),
            "steps": st["step"], "train_seconds": st["train_seconds"], "out_of_time": st["out_of_time"],
            "history": history, "world_size": d.world, "steps_per_epoch": steps_per_epoch,
            "early_stopped": bool(st["bad"] >= cfg.patience)}


NEAR = 0.25   # validation rows closer than this share of `train.eval_every_minutes` measure the same model


def _crossed(st: dict, every_minutes: float) -> bool:
    """True when training time has passed a multiple of `every_minutes` since the last validation row
    (rows at epoch ends do not shift the grid: validations land at every N minutes of training). A
    grid point that comes less than `NEAR` of an interval after the last row is skipped: that row
    already measured the model there."""
    last = st["history"][-1]["train_minutes"] if st["history"] else 0.0
    return st["train_seconds"] / 60.0 // every_minutes > (last + NEAR * every_minutes) // every_minutes


def _recent(st: dict, every_minutes: float) -> bool:
    """With minute validations on, True when the last row is less than `NEAR` of an interval old: an
    epoch that ends just after a grid validation is not validated again (its checkpoint is still saved)."""
    if not every_minutes or not st["history"]:
        return False
    return st["train_seconds"] / 60.0 - st["history"][-1]["train_minutes"] < NEAR * every_minutes


def _rank0(value, d: Dist):
    """Rank 0's `value` on every rank (ranks' clocks differ; they must decay, validate and stop together)."""
    if d.world <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(flag: bool, d: Dist) -> bool:
    """True on every rank when it is true on rank 0."""
    return bool(_rank0(flag, d))


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
