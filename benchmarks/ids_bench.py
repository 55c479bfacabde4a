"""Identifier benchmark: time the embed / collab / identifiers stages on one dataset and print a table.

    python benchmarks/ids_bench.py --root /tmp/gensar_office --params params.yaml --run [--repeat 3]
    python benchmarks/ids_bench.py --root /tmp/gensar_office            # only print from saved results

`<root>/canonical` must hold the canonical tables (ingest + validate stages). Outputs go to
`<root>/models/{embeddings,sasrec,ids}` and `<root>/metrics/{sasrec,ids}.json`; stage wall times to
`<root>/timings.json`. `--repeat N` repeats the stage (the median is printed); the embed stage is
timed cold (its text cache emptied before each repeat). SASRec-CE numbers are full ranking over all
items on the test split; the published SASRec-CE on beauty (RecBole) is Recall@10 0.082 / NDCG@10 0.041.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gensar.config import load_params
from gensar.stages import collab, embed, identifiers

PUBLISHED = {"beauty": {"recall@10": 0.082, "ndcg@10": 0.041}}


def timed(fn, repeat: int, before=None) -> list[float]:
    out = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_all(root: Path, params_path: str, repeat: int, stages: list[str]) -> None:
    params = load_params(params_path)
    canon, models, metrics = root / "canonical", root / "models", root / "metrics"
    timings_path = root / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    if "embed" in stages:
        timings["embed"] = timed(lambda: embed.run(params, canon, models / "embeddings"), repeat,
                                 before=lambda: shutil.rmtree(models / "embeddings" / "cache", ignore_errors=True))
    if "collab" in stages:
        timings["collab"] = timed(lambda: collab.run(params, canon, models / "sasrec", metrics / "sasrec.json"), repeat)
    if "identifiers" in stages:
        timings["identifiers"] = timed(lambda: identifiers.run(params, models / "embeddings", models / "sasrec", canon,
                                                               models / "ids", metrics / "ids.json"), repeat)
    timings_path.write_text(json.dumps(timings, indent=2))


def report(root: Path) -> str:
    lines = [f"# identifiers benchmark: {root}"]
    t_path = root / "timings.json"
    if t_path.exists():
        lines.append("| stage | runs | median s |\n| --- | --- | --- |")
        for k, v in json.loads(t_path.read_text()).items():
            lines.append(f"| {k} | {len(v)} | {statistics.median(v):.1f} |")
    s_path = root / "metrics" / "sasrec.json"
    if s_path.exists():
        s = json.loads(s_path.read_text())
        pub = PUBLISHED.get(root.name.replace("gensar_", "").split("_")[0], {})
        lines.append("\n| SASRec-CE (full ranking, test) | Recall@10 | NDCG@10 | Recall@5 | NDCG@5 | epochs |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        lines.append(f"| this run | {s['test/recall@10']:.4f} | {s['test/ndcg@10']:.4f} | {s['test/recall@5']:.4f} "
                     f"| {s['test/ndcg@5']:.4f} | {s['epochs']} |")
        if pub:
            lines.append(f"| published (RecBole) | {pub['recall@10']} | {pub['ndcg@10']} | | | |")
    i_path = root / "metrics" / "ids.json"
    if i_path.exists():
        m = json.loads(i_path.read_text())
        lines.append(f"\nmode {m['mode']}, {m['n_items']} items, SID != CID for {m['share_sid_ne_cid']:.3f} of items, "
                     f"disambiguation size {m['disambiguation_size']}, recon {m['recon']}")
        lines.append("| id | collision rate before | after Sinkhorn | after disambiguation | items moved |")
        lines.append("| --- | --- | --- | --- | --- |")
        for k in ("sid", "cid"):
            if f"{k}_collision_rate_before" in m:
                lines.append(f"| {k} | {m[f'{k}_collision_rate_before']:.4f} | {m[f'{k}_collision_rate_after_sinkhorn']:.4f} "
                             f"| {m[f'{k}_collision_rate_after']:.4f} | {m[f'{k}_sinkhorn_moved']} |")
        lines.append("| level | code usage | perplexity |\n| --- | --- | --- |")
        for lvl, v in m["levels"].items():
            lines.append(f"| {lvl} | {v['usage']:.3f} | {v['perplexity']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", action="store_true", help="run the stages (else only print saved results)")
    ap.add_argument("--stages", default="embed,collab,identifiers")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.run:
        run_all(args.root, args.params, args.repeat, args.stages.split(","))
    print(report(args.root))


if __name__ == "__main__":
    main()
