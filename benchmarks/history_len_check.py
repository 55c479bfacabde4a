"""Does a trained model read the whole history? Validate it with several inference history lengths.

The same validation requests (the trainer's sample of `--users` validation users), the same model; only
`train.history_len` at inference changes (and `max_input_tokens`, so that no input is cut). Prints rec
NDCG@10 / Recall@10 and the in-trie level accuracies per length.

    python benchmarks/history_len_check.py --model RUN/t5 --work OFFICE_WORK --users 1000 --lens 5,10,20
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from code_ceiling import valid_rec_requests  # the sibling script (benchmarks/ is sys.path[0])

from gensar.model.generate import GenSARModel
from gensar.model.train import validate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained model directory (gensar.json, ids/)")
    ap.add_argument("--work", required=True, help="prepared work dir (prepared/canonical)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="train.seed: the trainer's validation sample")
    ap.add_argument("--lens", default="5,10,20", help="history lengths (clicks) to try")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    reqs = valid_rec_requests(args.work, args.users, args.seed)
    gm = GenSARModel.load(args.model, beams=20)
    base = gm.cfg
    print(f"{len(reqs)} rec requests; the model was trained with history_len {base.history_len}\n")
    print("| history_len | rec N@10 | rec R@10 | in-trie acc l0/l1/l2/l3 | seconds |\n|---|---|---|---|---|")
    for n in (int(x) for x in args.lens.split(",")):
        gm.cfg = dataclasses.replace(base, history_len=n, max_input_tokens=max(base.max_input_tokens, 16 * n))
        t0 = time.perf_counter()
        out = validate(gm, reqs, beams=20, show=False)
        acc = "/".join(f"{out[f'rec/acc_trie/l{t}']:.3f}" for t in range(4))
        print(f"| {n} | {out['rec/ndcg@10']:.4f} | {out['rec/recall@10']:.4f} | {acc} | {time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
