"""Query suggestions (`POST /suggest`): how often the model's next-query output is the query the user
typed next, beside the baselines a search box would use without it. Prints a Markdown table.

    python benchmarks/suggest_bench.py --canonical W/prepared/canonical --candidates W/prepared/candidates \
        --onnx W/variants/gensar-joint/onnx [--split test] [--max-users 0]

Cases: every search event of the split (the same cases, histories and user sampling as the evaluate
stage). A suggestion hits when it equals the real query text (both lowercase, whitespace collapsed).
Baselines, fitted on the training split only:

    most frequent query      the query typed most often in training
    most frequent next query after the user's last query, the query that most often followed it in
                             training sequences (else the most frequent query)
    repeat the last query    the user's last query in the history (else the most frequent query)
"""
from __future__ import annotations

import argparse
import collections
import itertools
import time

import pandas as pd
from tqdm.auto import tqdm

from gensar.eval.evaluate import load_eval_data
from gensar.serve.runtime import Runtime


def norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def last_query(history) -> str | None:
    queries = [ev[2] for ev in history if ev[0] == "search" and ev[2]]
    return norm(queries[-1]) if queries else None


def fit_baselines(canonical: str) -> tuple[str, dict[str, str]]:
    """(most frequent training query, {query: the query that most often followed it})."""
    inter = pd.read_parquet(f"{canonical}/interactions.parquet")
    texts = pd.read_parquet(f"{canonical}/queries.parquet").set_index("query_id")["text"].map(norm)
    train = inter[(inter["split"] == "train") & (inter["behavior"] == "search")].sort_values(["user_id", "step"])
    seq = train.assign(q=train["query_id"].map(texts))
    top = seq["q"].value_counts().index[0]
    follow = collections.defaultdict(collections.Counter)
    for _, g in seq.groupby("user_id", sort=False):
        qs = g["q"].tolist()
        for a, b in itertools.pairwise(qs):
            follow[a][b] += 1
    return top, {a: c.most_common(1)[0][0] for a, c in follow.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-users", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    data = load_eval_data(args.canonical, args.candidates, args.split, args.max_users)
    cases = data.task_cases("search")
    truth = [norm(q) for q in data.case_queries(cases)]
    histories = cases["history"].tolist()
    top, follow = fit_baselines(args.canonical)

    rt = Runtime.load(args.onnx, threads=args.threads)
    t0 = time.perf_counter()
    model = []
    for s in tqdm(range(0, len(histories), args.batch), desc="suggest", unit="batch"):
        model += [norm(q) for q in rt.suggest_batch(histories[s:s + args.batch])]
    seconds = time.perf_counter() - t0

    rows = {
        "GenSAR next-query (greedy, ONNX runtime)": model,
        "most frequent query": [top] * len(truth),
        "most frequent next query after the last one": [follow.get(last_query(h), top) for h in histories],
        "repeat the last query": [last_query(h) or top for h in histories],
    }
    print(f"{len(truth)} {args.split} search cases; {len(set(truth))} distinct queries; model "
          f"{len(truth) / seconds:.0f} suggestions/s ({args.threads} thread)\n")
    print("| suggestion | hit rate (exact query) | hits |\n| --- | --- | --- |")
    for name, guess in rows.items():
        hits = sum(g == t for g, t in zip(guess, truth))
        print(f"| {name} | {hits / len(truth):.4f} | {hits} |")
    print("\nexamples (model / real):")
    for g, t in list(zip(model, truth))[:5]:
        print(f"  {g!r} / {t!r}")


if __name__ == "__main__":
    main()
