"""Inference benchmark: onnxruntime runtime vs PyTorch `generate`, same model, same requests, one run.

Prints, for batch 1 and batch 16 (beam 20 by default): latency p50/p95 per call and throughput of
    torch     GenSARModel (HF generate, constrained by the trie)          the PyTorch reference
    ort-full  Runtime, normalize=full (scores identical to HF's)
    ort-allow Runtime, normalize=allowed (softmax over the allowed tokens only)
and the compute floor of each ONNX variant: the multiply-adds the request needs (encoder, cross K/V,
one decoder step per beam per token with a KV cache; then `allowed` computes the logits of the trie's
tokens at each depth, `full` all logits of the vocabulary, whose log-softmax it reads at the trie's
tokens, plus the step that scores EOS), divided by the matmul throughput measured in the same
run with torch GEMMs of the decoder's shape ([rows, d_model] x [d_model, d_ff], same thread count),
per CPU second, in short bursts between the timed calls (same load as the calls); the ratio
compares the floor with the CPU time of a call (the wall clock of a shared machine also counts
other jobs' turns on the cores; both are printed).

With `--parity N`: top-k agreement of the runtime with PyTorch on N requests (test users of the
canonical data when given, else random histories).

    python benchmarks/inference_bench.py --model models/t5 --ids models/ids --canonical prepared/canonical
    python benchmarks/inference_bench.py --random-tiny      # random tiny T5 over office-sized identifiers
    python benchmarks/inference_bench.py ... --size small    # random t5-small-sized T5, same tokenizer and ids
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------
# a random tiny model with office-sized identifiers (when no trained model is given)
# --------------------------------------------------------------------------------------------
def build_random_tiny(root: Path, n_items: int, codebook: int, seed: int = 0) -> dict:
    from gensar.config import ModelConfig, TrainConfig, to_dict
    from gensar.model.prompts import IdentifierMap
    from gensar.model.t5 import build_model, save_model
    from gensar.model.tokenizer import train_tokenizer

    rng = np.random.default_rng(seed)
    office = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "office" / "office.item.json"
    if office.exists():
        meta = json.loads(office.read_text())
        titles = [v["title"] for v in list(meta.values())[:n_items]]
    else:
        words = ["desk", "lamp", "paper", "pen", "stapler", "ink", "toner", "chair", "folder", "binder", "label", "tape", "marker"]
        titles = [" ".join(rng.choice(words, 4)) for _ in range(n_items)]
    n_items = len(titles)
    item_ids = [str(i) for i in range(n_items)]

    def unique_codes(prefix=None):
        codes = rng.integers(0, codebook, size=(n_items, 4))
        if prefix is not None:
            codes[:, :2] = prefix
        seen, out = {}, []
        for c in map(tuple, codes):
            out.append(list(c) + [seen.get(c, 0)])
            seen[c] = seen.get(c, 0) + 1
        return np.array(out)

    sid = unique_codes()
    cid = unique_codes(sid[:, :2])
    ids_dir, model_dir, canonical = root / "ids", root / "t5", root / "canonical"
    for d in (ids_dir, model_dir, canonical):
        d.mkdir(parents=True)
    pd.DataFrame({"item_id": item_ids, "sid": sid.tolist(), "cid": cid.tolist()}).to_parquet(
        ids_dir / "identifiers.parquet")
    dis = int(max(sid[:, 4].max(), cid[:, 4].max())) + 1
    (ids_dir / "meta.json").write_text(json.dumps({
        "sid_kinds": ["h", "h", "s", "s", "d"], "cid_kinds": ["h", "h", "c", "c", "d"],
        "codebook_size": codebook, "disambiguation_size": dis, "mode": "gensar"}))
    pd.DataFrame({"item_id": item_ids, "title": titles}).to_parquet(canonical / "items.parquet")
    ids = IdentifierMap.load(ids_dir)
    tok = train_tokenizer(titles, ids.tokens(), vocab_size=8000)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size="tiny", dropout=0.0), len(tok), tok.pad_token_id, tok.eos_token_id)
    save_model(model, tok, model_dir, {"train": to_dict(TrainConfig()), "data_version": "random-tiny"})
    return {"model": model_dir, "ids": ids_dir, "canonical": canonical, "titles": titles}


def build_random_size(root: Path, model_dir: Path, size: str, seed: int = 0) -> Path:
    """A randomly initialised T5 of `size` (gensar.model.t5.SIZES) with the tokenizer of `model_dir`, saved
    like models/t5: same vocabulary and identifiers as the trained model, so the same requests and
    tries apply (for latency; its rankings mean nothing)."""
    from gensar.config import ModelConfig, TrainConfig, to_dict
    from gensar.model.t5 import build_model, load_model, save_model

    _, tok, meta = load_model(model_dir)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size=size, dropout=0.0), len(tok), tok.pad_token_id, tok.eos_token_id)
    out = root / f"t5_{size}"
    save_model(model, tok, out, {"train": meta.get("train") or to_dict(TrainConfig()),
                                 "data_version": f"random-{size}"})
    return out


def random_requests(item_ids, titles, n: int, seed: int = 0) -> list[tuple]:
    """(behavior, query, history) with 5-event histories mixing rec clicks and searches."""
    rng = random.Random(seed)
    words = [w.lower() for t in titles for w in t.split() if w.isalpha()][:5000] or ["pen"]
    out = []
    for i in range(n):
        history = []
        for _ in range(5):
            item = rng.choice(item_ids)
            history.append(("search", item, " ".join(rng.sample(words, 3))) if rng.random() < 0.5
                           else ("rec", item, None))
        behavior = "rec" if i % 2 == 0 else "search"
        out.append((behavior, " ".join(rng.sample(words, 3)) if behavior == "search" else None, history))
    return out


def test_requests(canonical: Path, n: int, seed: int = 0) -> list[tuple]:
    """(behavior, query, history) of test events of the canonical data (the evaluation's requests)."""
    from gensar.model.examples import eval_requests, user_events

    inter = pd.read_parquet(canonical / "interactions.parquet")
    queries = pd.read_parquet(canonical / "queries.parquet")
    reqs = eval_requests(user_events(inter, queries), split="test")
    rng = random.Random(seed)
    reqs = rng.sample(reqs, min(n, len(reqs))) if n > 0 else reqs
    return [(r.behavior, r.query, r.history) for r in reqs]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def run_batch(engine, batch: list[tuple], k: int):
    """One call per task group of the batch (rec and search are decoded in separate batches)."""
    out = []
    for kind in ("rec", "search"):
        group = [r for r in batch if r[0] == kind]
        if not group:
            continue
        if kind == "rec":
            out += engine.recommend_batch([r[2] for r in group], k)
        else:
            out += engine.search_batch([r[1] for r in group], [r[2] for r in group], k)
    return out


def time_engines(engines: dict, requests: list[tuple], batch: int, k: int, rounds: int,
                 gemm: tuple[int, int, int] | None = None) -> tuple[dict, dict, list[float]]:
    """Wall-clock and CPU milliseconds of each call, engines interleaved call by call so load noise
    hits all alike. CPU time (this process) is what the compute floor compares with: on a shared
    machine the wall clock also counts the time other jobs hold the cores.

    gemm = (rows, d, f): after each round, a short burst of the floor's GEMM, so its rate is
    measured under the same load as the calls (a machine shared with other jobs changes speed
    by 1.5x within minutes); returns the rate of each burst too."""
    # batches are single-task so a call is one beam search
    by_kind = [[r for r in requests if r[0] == kind] for kind in ("rec", "search")]
    batches = [group[i:i + batch] for group in by_kind for i in range(0, len(group) - batch + 1, batch)]
    batches = (batches * (1 + rounds // max(1, len(batches))))[:rounds]
    wall, cpu = {name: [] for name in engines}, {name: [] for name in engines}
    rates = []
    for name, eng in engines.items():            # warm-up
        run_batch(eng, batches[0], k)
    for b in batches:
        for name, eng in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run_batch(eng, b, k)
            cpu[name].append(1e3 * (time.process_time() - c0))
            wall[name].append(1e3 * (time.perf_counter() - t0))
        if gemm:
            rates.append(gemm_throughput(*gemm, threads=torch.get_num_threads(), seconds=0.05))
    return wall, cpu, rates


def ort_gemm_throughput(rows: int, d: int, f: int, threads: int, seconds: float = 1.0) -> float:
    """The same GEMM as one onnxruntime MatMul node with a constant weight, as in the exported graphs
    (information only: the floor uses the torch rate, which is the higher one here)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((d, f), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, f])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((rows, d), dtype=np.float32)
    return macs_per_cpu_second(lambda: sess.run(None, {"a": a}), rows * d * f, seconds)


def gemm_throughput(rows: int, d: int, f: int, threads: int, seconds: float = 1.0) -> float:
    """Multiply-adds per CPU second of torch float32 GEMMs [rows, d] x [d, f] (median of repeats)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(rows, d), torch.randn(d, f)
    return macs_per_cpu_second(lambda: a @ b, rows * d * f, seconds)


def macs_per_cpu_second(call, macs: int, seconds: float) -> float:
    """Median multiply-adds per CPU second of `call` (which does `macs` of them): 20 warm-up calls,
    then repeats of ~40 M multiply-adds for `seconds` (at least 3 repeats)."""
    for _ in range(20):
        call()
    rates = []
    n = max(1, int(2e6 / macs * 20))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        c0 = time.process_time()
        for _ in range(n):
            call()
        rates.append(n * macs / max(time.process_time() - c0, 1e-9))
    return statistics.median(rates)


def request_macs(cfg, src_len: int, beams: int, trie, full_vocab: bool, score_eos: bool) -> float:
    """Multiply-adds of one constrained beam search with a KV cache (see the module docstring)."""
    d, f, inner = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
    ff = (3 if getattr(cfg, "is_gated_act", False) else 2) * d * f
    s = src_len
    macs = cfg.num_layers * (s * (4 * d * inner + ff) + 2 * s * s * inner)      # encoder
    macs += cfg.num_decoder_layers * 2 * s * d * inner                         # cross K/V
    steps = trie.depth + (1 if score_eos and full_vocab else 0)
    for t in range(steps):
        rows = 1 if t == 0 else beams
        per_row = cfg.num_decoder_layers * (6 * d * inner + ff + 2 * (t + 1) * inner + 2 * s * inner)
        if full_vocab:
            per_row += cfg.vocab_size * d          # all logits: the normaliser, the trie's tokens read from them
        else:
            per_row += len(trie.vocab[t]) * d      # logits of the trie's tokens only
        macs += rows * per_row
    return float(macs)


def pct(xs, q):
    return float(np.percentile(xs, q))


# --------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/t5")
    ap.add_argument("--ids", default="models/ids")
    ap.add_argument("--onnx", default="", help="an existing export; default: export --model to a temp dir")
    ap.add_argument("--canonical", default="prepared/canonical", help="test users for the requests")
    ap.add_argument("--random-tiny", action="store_true", help="random tiny T5, office-sized identifiers")
    ap.add_argument("--size", default="", choices=["", "tiny", "small"],
                    help="time a randomly initialised T5 of this size (small = t5-small dims) with --model's "
                         "tokenizer and --ids identifiers instead of --model itself (latency only)")
    ap.add_argument("--items", type=int, default=2420)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="threads of onnxruntime, torch and the GEMM")
    ap.add_argument("--rounds", type=int, default=40, help="timed calls per engine and batch size")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--parity", type=int, default=0, help="requests for the parity check (0 = skip)")
    ap.add_argument("--skip-torch-batch", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also time an int8-quantized export (export.quantize)")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from gensar.config import Params
    from gensar.model.generate import GenSARModel
    from gensar.serve.runtime import Runtime
    from gensar.stages.export import run as export

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gensar-bench-"))
    canonical = Path(args.canonical)
    if args.random_tiny or not Path(args.model, "gensar.json").exists():
        print(f"model: random tiny T5 ({args.items} items, codebook {args.codebook}) in {work}")
        world = build_random_tiny(work, args.items, args.codebook)
        model_dir, ids_dir, items_dir = world["model"], world["ids"], world["canonical"]
        canonical = Path("/nonexistent")
    else:
        model_dir, ids_dir, items_dir = Path(args.model), Path(args.ids), canonical
    if args.size:
        model_dir = build_random_size(work, model_dir, args.size)
        print(f"model: randomly initialised T5 '{args.size}' over the vocabulary and identifiers of {args.model} "
              f"(latency only) in {model_dir}")
    onnx_dir = Path(args.onnx) if args.onnx else work / "onnx"
    if not args.onnx:
        t0 = time.perf_counter()
        export(Params(), model=model_dir, ids=ids_dir, canonical=items_dir, out=onnx_dir)
        print(f"export: {time.perf_counter() - t0:.1f} s -> {onnx_dir}")

    ref = GenSARModel.load(model_dir, ids_dir, beams=args.beams)
    ort_full = Runtime.load(onnx_dir, beams=args.beams, normalize="full", threads=args.threads)
    ort_allowed = Runtime.load(onnx_dir, beams=args.beams, normalize="allowed", threads=args.threads)
    onnx_engines = {"ort-full": ort_full, "ort-allowed": ort_allowed}
    if args.int8:
        import dataclasses

        p = Params()
        export(dataclasses.replace(p, export=dataclasses.replace(p.export, quantize=True)), model=model_dir,
               ids=ids_dir, canonical=items_dir, out=work / "onnx_int8")
        for norm in ("full", "allowed"):
            onnx_engines[f"ort-{norm}-int8"] = Runtime.load(work / "onnx_int8", beams=args.beams, normalize=norm,
                                                           threads=args.threads)
    cfg = ref.model.config
    n_need = max(args.rounds * max(int(b) for b in args.batches.split(",")), args.parity, 64)
    if (canonical / "interactions.parquet").exists():
        requests = test_requests(canonical, n_need)
        source = f"test events of {canonical}"
    else:
        requests = random_requests(ref.ids.item_ids, list(ort_full.titles.values()), n_need)
        source = "random 5-event histories"
    print(f"requests: {len(requests)} from {source}; beams {args.beams}, k {args.k}, threads {args.threads}, "
          f"T5 d_model {cfg.d_model} layers {cfg.num_layers}+{cfg.num_decoder_layers} d_ff {cfg.d_ff} "
          f"vocab {cfg.vocab_size}, {len(ref.ids)} items; CPU load avg {os.getloadavg()[0]:.1f}")

    if args.parity:
        reqs = requests[:args.parity]
        want = run_batch(ref, reqs, args.k)
        for name, rt in onnx_engines.items():
            got = run_batch(rt, reqs, args.k)
            same = sum([h.item_id for h in g] == [w[0] for w in ws] for g, ws in zip(got, want))
            same_set = sum({h.item_id for h in g} == {w[0] for w in ws} for g, ws in zip(got, want))
            top1 = sum(bool(g) and bool(ws) and g[0].item_id == ws[0][0] for g, ws in zip(got, want))
            diff = max((abs(h.score - w[1]) for g, ws in zip(got, want) for h, w in zip(g, ws)), default=0.0)
            print(f"parity {name:<16} vs torch on {len(reqs)} requests: identical top-{args.k} "
                  f"{same / len(reqs):.2%}, same top-{args.k} set {same_set / len(reqs):.2%}, "
                  f"same top-1 {top1 / len(reqs):.2%}, max |score diff| {diff:.2e}")

    # matmul throughput in this run, at the decoder's GEMM shape
    print("\n| batch | engine | p50 ms | p95 ms | req/s | CPU p50 ms | floor ms | CPU p50 / floor | "
          "speed-up vs torch (p50 wall / CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    src_lens = [len(ort_full.encode_sources([s])[0][0]) for s in _sources(ort_full, requests[:200])]
    for batch in (int(b) for b in args.batches.split(",")):
        engines = {"torch": ref, **onnx_engines}
        if batch > 1 and args.skip_torch_batch:
            engines.pop("torch")
        torch.set_num_threads(args.threads)
        shape = (batch * args.beams, cfg.d_model, cfg.d_ff)
        times, cpu, rates = time_engines(engines, requests, batch, args.k, args.rounds, gemm=shape)
        rate = statistics.median(rates)                 # measured between the calls, same load
        rate_alone = gemm_throughput(*shape, threads=args.threads)
        rate_ort = ort_gemm_throughput(*shape, threads=args.threads)
        s = float(np.mean(src_lens))
        trie = ort_full.tries["cid"]
        floors = {name: batch * request_macs(cfg, round(s), args.beams, trie, name.startswith("ort-full"),
                                             ort_full.score_eos) / rate * 1e3
                  for name in onnx_engines}
        base = statistics.median(times["torch"]) if "torch" in times else None
        base_cpu = statistics.median(cpu["torch"]) if "torch" in cpu else None
        for name, ts in times.items():
            p50, c50 = statistics.median(ts), statistics.median(cpu[name])
            floor = floors.get(name)
            print(f"| {batch} | {name} | {p50:.2f} | {pct(ts, 95):.2f} | {batch * 1e3 / p50:.1f} | {c50:.2f} | "
                  f"{f'{floor:.2f}' if floor else '-'} | {f'{c50 / floor:.2f}' if floor else '-'} | "
                  f"{f'{base / p50:.2f}x / {base_cpu / c50:.2f}x' if base else '-'} |")
        print(f"|   | GEMM [{batch * args.beams}x{cfg.d_model}]x[{cfg.d_model}x{cfg.d_ff}], {args.threads} thread(s): "
              f"{rate / 1e9:.2f} GMAC/s (median of {len(rates)} bursts between the calls; "
              f"{rate_alone / 1e9:.2f} in one 1 s burst after them; onnxruntime MatMul of that shape "
              f"{rate_ort / 1e9:.2f}); request MACs (mean src {s:.0f} tokens): full "
              f"{request_macs(cfg, round(s), args.beams, trie, True, ort_full.score_eos) / 1e6:.1f} M, allowed "
              f"{request_macs(cfg, round(s), args.beams, trie, False, ort_full.score_eos) / 1e6:.1f} M | | | | | | | |")
    print(f"\nCPU load avg at the end {os.getloadavg()[0]:.1f} (2 cores shared with other jobs)")


def _sources(rt, requests):
    from gensar.model import prompts

    out = []
    for behavior, query, history in requests:
        if behavior == "rec":
            out.append(prompts.rec_input(history, rt.ids, **rt.prompt_kw))
        else:
            out.append(prompts.search_input(query, history, rt.ids, **rt.prompt_kw))
    return out


if __name__ == "__main__":
    sys.exit(main())
