"""Stage `identifiers`: dual RQ-VAE -> unique semantic IDs (search) and collaborative IDs (rec).

Inputs: `<embeddings>/semantic.npy` + `item_ids.json` (stage embed), `<collab>/collab.npy` +
`item_ids.json` (stage collab), `<canonical>/items.parquet` (which items need an identifier).

Outputs:
    <out>/identifiers.parquet   item_id, sid list[int], cid list[int]  (canonical items order)
    <out>/meta.json             sid_kinds, cid_kinds, codebook_size, disambiguation_size, mode, ...
    <out>/rqvae.pt              {'config', 'sem_dim', 'col_dim', 'state_dict'}
    <metrics>                   collisions before/after, per-level usage and perplexity,
                                reconstruction errors, share of items whose SID and CID differ, time

Incremental mode (`previous` = an existing `models/ids` folder, or `incremental.enabled` in
params.yaml: the identifiers already in `out`): the RQ-VAE of `previous` encodes the items that have
no identifier yet; every existing identifier is kept as it is. The three files are one version:
the folder is swapped as a whole.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gensar.config import IdsConfig, Params, from_dict, load_params, to_dict
from gensar.device import resolve_device, setup_torch
from gensar.ids.assign import assign_identifiers, assign_incremental, collision_stats
from gensar.ids.rqvae import IdentifierModel, level_stats, train_rqvae
from gensar.io import atomic_path, write_json
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def load_aligned(folder: Path, matrix: str, item_ids: list[str]) -> np.ndarray:
    """Rows of `<folder>/<matrix>` in the order of `item_ids` (matched through `<folder>/item_ids.json`)."""
    vecs = np.load(folder / matrix)
    ids = json.loads((folder / "item_ids.json").read_text())
    if len(ids) != len(vecs):
        raise ValueError(f"{folder}: {matrix} has {len(vecs)} rows but item_ids.json lists {len(ids)} items")
    pos = {it: i for i, it in enumerate(ids)}
    missing = [it for it in item_ids if it not in pos]
    if missing:
        raise ValueError(f"{folder}/{matrix}: no row for {len(missing)} canonical items, e.g. {missing[0]!r} "
                         "(re-run the stage that writes it)")
    return vecs[[pos[it] for it in item_ids]].astype(np.float32)


# what rebuilds the RQ-VAE (nanoGPT's `model_args`); training knobs (lr, epochs, device) are not its shape
MODEL_ARGS = ("mode", "shared_levels", "specific_levels", "codebook_size", "shared_dim", "specific_dim",
              "hidden", "beta")


def save_model(model: IdentifierModel, path: Path, sem_dim: int, col_dim: int) -> None:
    args = {k: v for k, v in to_dict(model.cfg).items() if k in MODEL_ARGS}
    with atomic_path(path) as tmp:
        torch.save({"model_args": args, "sem_dim": sem_dim, "col_dim": col_dim,
                    "state_dict": model.state_dict()}, tmp)


def load_model(path: Path) -> IdentifierModel:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = ckpt.get("model_args") or {k: v for k, v in ckpt["config"].items() if k in MODEL_ARGS}  # (older files)
    model = IdentifierModel(ckpt["sem_dim"], ckpt["col_dim"], from_dict(IdsConfig, args))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def build(model: IdentifierModel, x_s: np.ndarray, x_c: np.ndarray, cfg: IdsConfig) -> tuple[dict, dict]:
    """Identifiers {'sid': (n, L+1), 'cid': (n, L+1)} of all items, and their statistics."""
    codes, residuals = model.encode(x_s, x_c)
    quantizers = model.quantizers()
    ids, stats = {}, {}
    for kind, cols in model.id_columns().items():
        if kind == "cid" and cols == model.id_columns()["sid"]:         # semantic / collaborative modes
            ids["cid"], stats["cid"] = ids["sid"], stats["sid"]
            continue
        last = cols[-1]
        codebook = quantizers[last][1].codebook.detach().cpu().numpy()
        ids[kind], stats[kind] = assign_identifiers(codes[:, cols], residuals[last], codebook,
                                                    cfg.sinkhorn_epsilon, cfg.sinkhorn_iters)
        logger.info("%s: collision rate %.4f before, %.4f after Sinkhorn (%d items moved), 0 after disambiguation "
                    "(max code %d)", kind, stats[kind]["before"]["collision_rate"],
                    stats[kind]["after_sinkhorn"]["collision_rate"], stats[kind]["sinkhorn_moved"],
                    stats[kind]["disambiguation_max"])
    return ids, {"assign": stats, "levels": level_stats(model, codes)}


def run(params: Params, embeddings: str | Path, collab: str | Path,
        canonical: str | Path, out: str | Path,
        metrics: str | Path, previous: str | Path | None = None) -> dict:
    cfg = params.ids
    embeddings, collab, canonical, out = Path(embeddings), Path(collab), Path(canonical), Path(out)
    setup_torch(resolve_device(cfg.device), cfg.cpu_threads)
    t0 = time.perf_counter()
    item_ids = pd.read_parquet(canonical / "items.parquet", columns=["item_id"])["item_id"].astype(str).tolist()
    x_s = load_aligned(embeddings, "semantic.npy", item_ids)
    x_c = load_aligned(collab, "collab.npy", item_ids)

    if previous is None and params.incremental.enabled and (Path(out) / "identifiers.parquet").exists():
        previous = out   # incremental: the current identifiers (read before the folder is swapped)
    if previous is None:
        model, _ = train_rqvae(x_s, x_c, cfg)
        ids, stats = build(model, x_s, x_c, cfg)
        sid, cid = ids["sid"], ids["cid"]
        n_new = len(item_ids)
    else:
        previous = Path(previous)
        model = load_model(previous / "rqvae.pt")
        if model.cfg.mode != cfg.mode:
            raise ValueError(f"{previous}/rqvae.pt was trained in mode {model.cfg.mode!r}, params say {cfg.mode!r}")
        old = pd.read_parquet(previous / "identifiers.parquet")
        old_sid = {it: list(s) for it, s in zip(old["item_id"], old["sid"])}
        old_cid = {it: list(c) for it, c in zip(old["item_id"], old["cid"])}
        new_rows = [i for i, it in enumerate(item_ids) if it not in old_sid]
        codes, _ = model.encode(x_s[new_rows], x_c[new_rows]) if new_rows else (np.zeros((0, 0), np.int64), [])
        cols = model.id_columns()
        new_sid = assign_incremental(np.array(old["sid"].tolist()), codes[:, cols["sid"]]) if new_rows else []
        new_cid = assign_incremental(np.array(old["cid"].tolist()), codes[:, cols["cid"]]) if new_rows else []
        for r, s, c in zip(new_rows, new_sid, new_cid):
            old_sid[item_ids[r]], old_cid[item_ids[r]] = list(s), list(c)
        sid = np.array([old_sid[it] for it in item_ids])
        cid = np.array([old_cid[it] for it in item_ids])
        stats = {"levels": level_stats(model, model.encode(x_s, x_c)[0])}
        n_new = len(new_rows)
        logger.info("incremental: %d existing identifiers kept, %d new items assigned", len(item_ids) - n_new, n_new)

    # --- checks and outputs ---
    for kind, arr in (("sid", sid), ("cid", cid)):
        c = collision_stats(arr)
        if c["collision_rate"] > 0:
            raise RuntimeError(f"identifiers: {kind} collisions remain ({c})")
    with torch.no_grad():
        xs, xc = model.scaled(torch.as_tensor(x_s), torch.as_tensor(x_c))
        recon = {k: float(v) for k, v in model(xs, xc)["recon"].items()}
    kinds = model.id_kinds()
    meta = {"sid_kinds": kinds["sid"] + ["d"], "cid_kinds": kinds["cid"] + ["d"],
            "codebook_size": cfg.codebook_size,
            "disambiguation_size": int(max(sid[:, -1].max(), cid[:, -1].max())) + 1 if len(sid) else 1,
            "mode": cfg.mode, "n_items": len(item_ids)}
    table = pd.DataFrame({"item_id": item_ids, "sid": [list(map(int, r)) for r in sid],
                          "cid": [list(map(int, r)) for r in cid]})
    with atomic_path(out) as tmp:   # the three files are one version: the folder is swapped as a whole
        tmp.mkdir(parents=True)
        table.to_parquet(tmp / "identifiers.parquet", index=False)
        write_json(meta, tmp / "meta.json")
        save_model(model, tmp / "rqvae.pt", x_s.shape[1], x_c.shape[1])
    result = {"mode": cfg.mode, "n_items": len(item_ids), "n_assigned": n_new,
              "sid_collision_rate_after": collision_stats(sid)["collision_rate"],
              "cid_collision_rate_after": collision_stats(cid)["collision_rate"],
              "share_sid_ne_cid": float((sid != cid).any(1).mean()) if len(sid) else 0.0,
              "disambiguation_size": meta["disambiguation_size"],
              "recon": recon, "levels": stats["levels"], "seconds": round(time.perf_counter() - t0, 2)}
    if "assign" in stats:
        for kind, s in stats["assign"].items():
            result[f"{kind}_collision_rate_before"] = s["before"]["collision_rate"]
            result[f"{kind}_collision_rate_after_sinkhorn"] = s["after_sinkhorn"]["collision_rate"]
            result[f"{kind}_sinkhorn_moved"] = s["sinkhorn_moved"]
    write_json(result, metrics)
    logger.info("identifiers: %s", result)
    return {**result, "out": str(out), "metrics": str(metrics)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--collab", required=True)
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--previous", default=None, help="existing models/ids folder: incremental assignment")
    args = ap.parse_args(argv)
    setup_logging()
    summary = run(load_params(args.params), embeddings=args.embeddings, collab=args.collab, canonical=args.canonical,
              out=args.out, metrics=args.metrics, previous=args.previous)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
