"""Stage `train`: tokenizer + multi-task T5 training with checkpoints, selection and DDP.

    python -m gensar.stages.train --canonical prepared/canonical --ids models/ids --out models/t5 \
        --metrics metrics/train.json --live metrics/live/train [--init models/t5_previous]
    torchrun --nproc_per_node 2 -m gensar.stages.train ...      (DDP; gloo on CPU, nccl on GPU)

Writes into `out`: the best model (`save_pretrained` weights + config), the tokenizer, `gensar.json`
(configs, identifier meta, data version), `history.json` (one row per epoch: loss, validation
metrics, examples/s, seconds) and `ids/` (a copy of the identifier map the model was trained on).
`metrics` gets the flat summary (best epoch and its validation metrics, throughput, wall time). Epoch checkpoints live in `out/checkpoints/` (the dvc.yaml output is `persist: true`,
so a killed `dvc repro` resumes); a checkpoint from another configuration, data or training code
(the sources of `gensar.model`) is ignored.
`--init DIR`: warm start from a previous model (new identifier tokens get new embedding rows; the
old rows are kept). With `incremental.enabled` in params.yaml the stage warm-starts from the model
already in `out` for `incremental.train_epochs` epochs (what the incremental flow runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from gensar.config import Params, load_params, to_dict
from gensar.device import setup_torch
from gensar.ids.sasrec import load_sasrec
from gensar.io import atomic_path, file_hash, value_hash, write_json
from gensar.logs import FORMAT, setup_logging
from gensar.model import prompts
from gensar.model.distill import cid_teacher
from gensar.model.examples import ExampleBuilder, user_events, validation_requests
from gensar.model.generate import GenSARModel
from gensar.model.levels import LevelVocab, init_code_embeddings, init_item_embeddings
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model, load_model, resize_vocab, save_model
from gensar.model.tokenizer import extend_tokenizer, load_tokenizer, train_tokenizer
from gensar.model.train import barrier, cleanup_distributed, fit, pick_device, setup_distributed
from gensar.stages.identifiers import load_model as load_rqvae

logger = logging.getLogger(__name__)


def validated_behaviors(tasks: dict[str, float]) -> set[str]:
    """The behaviors a model is validated (and its best checkpoint selected) on: those it is trained
    for. A rec-only model is not judged on search, a search-only one not on rec."""
    return {b for b in ("rec", "search") if tasks.get(b, 0) > 0} or {"rec", "search"}


def _code_version() -> str:
    """Hash of the model package's sources (trainer, examples, prompts, T5, tokenizer): a checkpoint
    written by other training code is not resumed, as `dvc repro` would not reuse its output."""
    import gensar.model

    return file_hash(*sorted(Path(gensar.model.__file__).parent.glob("*.py")))


def sasrec_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """item id -> SASRec-CE's item embedding, from the collab stage's checkpoint."""
    net, item_ids = load_sasrec(path)
    return dict(zip(item_ids, net.item_embeddings()))


def _tokenizer(params: Params, items, queries, idmap: IdentifierMap, init, ckpt: Path, main: bool):
    """Build (or reuse from the checkpoint dir) the tokenizer; rank 0 builds, others load."""
    id_toks = idmap.tokens() + idmap.all_item_tokens()     # item tokens: train.item_tokens
    corpus = items["text"].astype(str).tolist() + queries["text"].astype(str).tolist()
    key = value_hash(corpus, id_toks, params.model.vocab_size, params.model.pretrained, str(init or ""))
    tok_dir, key_file = ckpt / "tokenizer", ckpt / "tokenizer.key"
    if main and not (key_file.exists() and key_file.read_text() == key):
        if init:
            tok = load_tokenizer(init)
            added = extend_tokenizer(tok, id_toks)
            logger.info("tokenizer: warm start from %s, %d new identifier tokens", init, added)
        else:
            tok = train_tokenizer(corpus, id_toks, params.model.vocab_size, params.model.pretrained)
        with atomic_path(tok_dir) as tmp:
            tok.save_pretrained(tmp)
        key_file.write_text(key)
    return key


def run(params: Params, canonical: str | Path, ids: str | Path,
        out: str | Path, metrics: str | Path,
        live: str | Path | None = None, init: str | Path | None = None,
        checkpoints: str | Path | None = None, teacher: str | Path | None = None) -> dict:
    """Train GenSAR's T5 on the canonical tables and identifier map; returns the summary written to
    `metrics` (rank 0). Under torchrun every rank calls this. `teacher`: the collab stage's SASRec-CE
    checkpoint, read when `train.distill` > 0."""
    t_start = time.time()
    out = Path(out)
    if init is None and params.incremental.enabled and (out / "gensar.json").exists():
        init = out   # incremental: warm start from the current model (loaded before the folder is swapped)
        if params.incremental.train_epochs > 0:
            params = dataclasses.replace(params, train=dataclasses.replace(
                params.train, epochs=params.incremental.train_epochs))
    cfg = params.train
    d = setup_distributed(cfg.device)
    device = pick_device(cfg.device, d.local_rank)
    setup_torch(device, cfg.cpu_threads)
    canonical, ids, out = Path(canonical), Path(ids), Path(out)
    ckpt = Path(checkpoints) if checkpoints else out / "checkpoints"
    try:
        tables = {n: canonical / f"{n}.parquet" for n in ("items", "interactions", "queries")}
        for n, p in tables.items():
            if not p.exists():
                raise FileNotFoundError(f"{p}: canonical table '{n}' not found (run the validate stage)")
        items, inter, queries = (pd.read_parquet(tables[n]) for n in ("items", "interactions", "queries"))
        idmap = IdentifierMap.for_training(ids, cfg)
        if idmap.dropped:
            logger.info("identifiers: the constant final code is left out of the %s", " and ".join(idmap.dropped))
        data_version = file_hash(*tables.values(), ids / "identifiers.parquet", ids / "meta.json")
        events = user_events(inter, queries)
        valid = validation_requests(events, cfg.eval_users, cfg.seed, validated_behaviors(cfg.tasks))

        if d.main:
            ckpt.mkdir(parents=True, exist_ok=True)
        tok_key = _tokenizer(params, items, queries, idmap, init, ckpt, d.main) if d.main else None
        barrier(d)
        tok = load_tokenizer(ckpt / "tokenizer")
        count = prompts.token_counter(lambda text: tok(text, add_special_tokens=False)["input_ids"])
        teach = None
        for key, value, used in (("distill", cfg.distill, cfg.distill > 0),
                                 ("item_tokens", cfg.item_tokens, cfg.item_tokens == "sasrec")):
            if used and (not teacher or not Path(teacher).exists()):
                raise FileNotFoundError(f"train.{key} = {value}: the SASRec-CE model {teacher} was not "
                                        "found (run the collab stage, pass --teacher models/sasrec/model.pt)")
        if cfg.distill_paths and not (cfg.distill and cfg.causal):
            raise ValueError(f"train.distill_paths = {cfg.distill_paths} needs train.distill > 0 and train.causal "
                             f"(got distill {cfg.distill}, causal {cfg.causal}): the drawn paths learn the teacher's rows")
        if cfg.distill:
            teach = cid_teacher(str(teacher), tok, idmap, cfg.distill_temperature)
        builder = ExampleBuilder(events, items, idmap, cfg, count, teach)

        torch.manual_seed(cfg.seed)
        if init:
            model, _, _ = load_model(init)
            added = resize_vocab(model, len(tok))
            logger.info("model: warm start from %s, %d embedding rows added", init, added)
        else:
            model = build_model(params.model, len(tok), tok.pad_token_id, tok.eos_token_id)
            if cfg.init_codes and not (ids / "rqvae.pt").exists():
                logger.warning("train.init_codes: %s has no rqvae.pt (an identifier map made elsewhere); "
                               "identifier embeddings start random", ids)
            elif cfg.init_codes:
                codebooks = {name: q.codebook.detach().cpu().numpy()
                             for name, q in load_rqvae(ids / "rqvae.pt").quantizers()}
                done = init_code_embeddings(model, LevelVocab(tok, idmap), codebooks, cfg.seed)
                logger.info("model: identifier embeddings of %s start from the RQ-VAE codebooks", ", ".join(done))
            if cfg.item_tokens == "sasrec":
                n = init_item_embeddings(model, tok, idmap, sasrec_vectors(teacher), cfg.seed)
                logger.info("model: %d of %d item-token embeddings start from SASRec-CE's item vectors", n, len(idmap))
        uses_teacher = cfg.distill > 0 or cfg.item_tokens == "sasrec"
        teacher_version = file_hash(teacher) if uses_teacher else ""
        fingerprint = value_hash(to_dict(params.model), to_dict(params.train), len(tok), data_version,
                                 str(init or ""), d.world, tok_key if d.main else "", _code_version(), teacher_version)
        if d.world > 1:  # rank 0 alone knows the tokenizer key; every rank needs the same fingerprint
            box = [fingerprint]
            torch.distributed.broadcast_object_list(box, src=0)
            fingerprint = box[0]

        def make_generator(m):
            return GenSARModel(m, tok, idmap, cfg, beams=cfg.eval_beams, device=device)

        summary = fit(model, tok, builder, make_generator, valid, cfg, ckpt, live, fingerprint, d, device)

        result = {"best_epoch": summary["best_epoch"], "best_step": summary["best_step"],
                  "valid/ndcg@10": summary["best/ndcg@10"]}
        if summary["history"] and summary["best_row"] >= 0:
            best_row = summary["history"][summary["best_row"]]
            result.update({k: v for k, v in best_row.items() if k.startswith("valid/")})
            result["train/loss"] = best_row["train/loss"]
        hist = summary["history"]
        result.update({
            "epochs_run": summary["epochs_run"], "early_stopped": summary["early_stopped"],
            "steps": summary["steps"], "train_minutes": round(summary["train_seconds"] / 60.0, 2),
            "out_of_time": summary["out_of_time"],
            "world_size": d.world, "examples_per_epoch": builder.epoch_size(),
            "examples_per_s": (sum(r["examples"] for r in hist) /
                               max(1e-9, sum(r["examples"] / r["examples_per_s"] for r in hist))) if hist else 0.0,
            "wall_seconds": round(time.time() - t_start, 2),
            "valid_requests": len(valid), "vocab_size": len(tok), "device": str(device),
        })
        if d.main:
            meta = {"model": to_dict(params.model), "train": to_dict(params.train), "ids": idmap.meta,
                    "data_version": data_version, "vocab_size": len(tok), "best_epoch": summary["best_epoch"],
                    "init": str(init) if init else None}
            # one new version of the folder: weights, tokenizer, the identifier map it was trained on,
            # the per-validation rows (also in DVCLive); swapped in whole
            save_model(model, tok, out, meta, extra={**{f"ids/{f}": ids / f for f in ("identifiers.parquet", "meta.json")},
                                                     "history.json": hist})
            write_json(result, metrics)
            logger.info("train: best epoch %d, valid ndcg@10 %.4f; model in %s (%.0f s)",
                        result["best_epoch"], result["valid/ndcg@10"], out, result["wall_seconds"])
        barrier(d)
        return result
    finally:
        cleanup_distributed()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--live", required=True)
    ap.add_argument("--init", default=None, help="warm start from this model directory")
    ap.add_argument("--checkpoints", default=None, help="default: <out>/checkpoints")
    ap.add_argument("--teacher", default=None, help="SASRec-CE checkpoint (train.distill > 0, train.item_tokens: sasrec)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. --set train.epochs=2 (value parsed as YAML)")
    args = ap.parse_args(argv)
    import os

    rank = os.environ.get("RANK", "0")
    setup_logging()
    if "WORLD_SIZE" in os.environ:  # under torchrun: tell the ranks apart
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(FORMAT.replace("%(name)s", f"rank{rank} %(name)s")))
    overrides = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        overrides[key] = yaml.safe_load(value)
    params = load_params(args.params, overrides)
    result = run(params, args.canonical, args.ids, args.out, args.metrics, args.live or None, args.init,
                 args.checkpoints, args.teacher)
    if rank == "0":
        print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
