"""`gensar ...`: the command line for humans.

    gensar recommend --history ITEM [ITEM ...] [--k 10]        next items for a history of clicks
    gensar search "desk lamp" [--history ITEM ...] [--k 10]    items for a query
    gensar serve [--host 127.0.0.1] [--port 8000]               the HTTP service (uvicorn)
    gensar snapshot [--source PATH]                            (re)make the raw snapshot data/
    gensar add-batch PATH [--name NAME]                        append a new batch to data/batches/

All three use the exported model (`--model models/onnx`, onnxruntime). A history item may be
`ITEM` (a recommendation click) or `ITEM=some query` (a search for "some query" that clicked ITEM).
One small function per command; new commands add a subparser and a function.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gensar.config import ConfigError, load_params


def parse_history(values: list[str] | None) -> list[tuple]:
    """`ITEM` -> ('rec', ITEM, None); `ITEM=query text` -> ('search', ITEM, 'query text')."""
    events = []
    for v in values or []:
        item, sep, query = v.partition("=")
        events.append(("search", item, query) if sep else ("rec", item, None))
    return events


def _runtime(args):
    from gensar.serve.runtime import Runtime

    cfg = load_params(args.params).serve
    return Runtime.load(args.model, beams=max(cfg.beams, args.k), normalize=cfg.normalize,
                        provider=cfg.provider, threads=cfg.threads, spin=cfg.spin)


def _print_hits(hits) -> None:
    width = max((len(h.item_id) for h in hits), default=4)
    print(f"{'rank':>4}  {'score':>9}  {'item':<{width}}  title")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:>4}  {h.score:>9.3f}  {h.item_id:<{width}}  {h.title}")


def cmd_recommend(args) -> int:
    from gensar.serve.runtime import UnknownItemsError

    rt = _runtime(args)
    try:
        _print_hits(rt.recommend(parse_history(args.history), args.k))
    except UnknownItemsError as e:
        print(f"gensar recommend: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_suggest(args) -> int:
    from gensar.serve.runtime import UnknownItemsError

    rt = _runtime(args)
    try:
        print(rt.suggest(parse_history(args.history)))
    except UnknownItemsError as e:
        print(f"gensar suggest: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_search(args) -> int:
    from gensar.serve.runtime import UnknownItemsError

    if not args.query.strip():
        print("gensar search: the query must not be empty", file=sys.stderr)
        return 2
    rt = _runtime(args)
    try:
        _print_hits(rt.search(args.query, parse_history(args.history), args.k))
    except UnknownItemsError as e:
        print(f"gensar search: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args) -> int:
    import dataclasses

    import uvicorn

    from gensar.serve.app import create_app

    cfg = load_params(args.params).serve
    cfg = dataclasses.replace(cfg, host=args.host or cfg.host, port=args.port or cfg.port)
    app = create_app(args.model, cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    return 0


def cmd_snapshot(args) -> int:
    import dataclasses

    from gensar.data.snapshot import make_snapshot

    cfg = load_params(args.params).data
    if args.source:
        cfg = dataclasses.replace(cfg, source=args.source)
    out = make_snapshot(cfg, args.out)
    print(f"snapshot of '{cfg.source}' in {out}/; version it with `dvc add {out}` (the flows do this)")
    return 0


def cmd_add_batch(args) -> int:
    from gensar.data.snapshot import BatchError, add_batch, find_batch

    same = find_batch(args.batch, args.out) if Path(args.batch).exists() else None
    if same is not None:
        print(f"batch {args.batch} is already in the snapshot as {same} (same content): nothing added")
        return 0
    try:
        target = add_batch(args.batch, args.out, args.name)
    except BatchError as e:
        raise SystemExit(f"gensar add-batch: {e}") from None
    print(f"batch added as {target}; the incremental flow validates a batch before it adds it: "
          "`python -m flows.incremental --batch PATH`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gensar", description="GenSAR: generative search and recommendation")
    ap.add_argument("--params", default="params.yaml", help="params file (serve section)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what is happening")
    sub = ap.add_subparsers(dest="command", required=True)

    def with_model(p):
        p.add_argument("--model", default="models/onnx", help="export folder written by the export stage")
        return p

    p = with_model(sub.add_parser("recommend", help="recommend items after a history"))
    p.add_argument("--history", nargs="*", default=[], metavar="ITEM[=QUERY]")
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_recommend)

    p = with_model(sub.add_parser("search", help="search items for a query"))
    p.add_argument("query")
    p.add_argument("--history", nargs="*", default=[], metavar="ITEM[=QUERY]")
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_search)

    p = with_model(sub.add_parser("suggest", help="the query a user is expected to type next"))
    p.add_argument("--history", nargs="*", default=[], metavar="ITEM[=QUERY]")
    p.set_defaults(func=cmd_suggest, k=1)

    p = with_model(sub.add_parser("serve", help="run the HTTP service"))
    p.add_argument("--host", default=None, help="default: serve.host")
    p.add_argument("--port", type=int, default=None, help="default: serve.port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("snapshot", help="(re)make the raw snapshot from data.source")
    p.add_argument("--source", default=None, help="default: data.source of the params file")
    p.add_argument("--out", default="data")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("add-batch", help="append an incremental batch to the snapshot (no validation)")
    p.add_argument("batch")
    p.add_argument("--name", default=None)
    p.add_argument("--out", default="data")
    p.set_defaults(func=cmd_add_batch)
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except ConfigError as e:  # a wrong --params path or value: the message, not a traceback
        raise SystemExit(f"gensar {args.command}: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
