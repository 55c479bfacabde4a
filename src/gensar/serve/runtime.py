"""Serving runtime: the exported GenSAR model on onnxruntime, with constrained beam search in numpy.

Same answers as the PyTorch path (`gensar.model.generate.GenSARModel`, HF `generate` with a trie
`prefix_allowed_tokens_fn`), computed with much less work per step:

- the encoder runs once per request and also returns every decoder layer's cross-attention K/V;
- the decoder runs one token per beam per step with a KV cache (no re-run over the prefix);
- `normalize="full"` (default) runs `decoder_lse.onnx`: log_softmax over the whole vocabulary, read
  at the trie's tokens of this depth, so scores are exactly HF's (log_softmax, then the constraint
  mask); `normalize="allowed"` runs `decoder.onnx`, which is handed the gathered output-embedding
  columns W_t [D, V_t] of the trie's tokens (V_t ~ codebook size, not the vocabulary) and the
  allowed mask, and renormalises over the allowed tokens only: it never touches the [D, vocab]
  matrix (the compute floor of constrained decoding), at the price of scores (and sometimes
  rankings) that differ from HF's;
- the trie is a dense child table per depth: one lookup gives every beam's allowed tokens and,
  after the top-k (over the allowed candidates only), its next node.

Beam search (per request, N beams, identifier depth L, scores are summed log-probabilities):

    step 0:   1 row per request (the decoder start token), cache empty
    step t:   cand[b, (beam, tok)] = score[beam] + logp[beam, tok]   for tok allowed by the beam's trie node
              keep the best N candidates of each request; reorder the KV cache by the chosen beams
    step L:   (meta `score_eos`, default) add log p(EOS | identifier), as the PyTorch path scores the
              EOS it forces after a complete identifier
    result:   the N leaves sorted by score, top k

    rt = Runtime.load("models/onnx")
    rt.recommend(history, k=10)          -> [Hit(item_id, title, score), ...] best first
    rt.search(query, history, k=10)
    rt.recommend_batch(histories, ks), rt.search_batch(queries, histories, ks)   (one beam search per batch)

`history` is a list of events `(behavior, item_id, query)` as in `gensar.model.prompts`; an empty
history is a cold-start user and is served like any other.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

# the graphs' interface (gensar.export.onnx writes it into meta.json; defined here so serving needs no torch)
# /2: fused-kernel graphs whose decoder steps return log-probs of the requested tokens
# /3: generation settings also say how histories render twins and which scores the model was trained on
EXPORT_FORMAT = "gensar-onnx/3"
# full: HF's whole-vocabulary log-softmax | allowed: over the trie's allowed tokens | level: over each
# identifier level's codes (models trained with train.id_loss: level); auto: what the export says
NORMALIZE = ("full", "allowed", "level")


class Hit(NamedTuple):
    item_id: str
    title: str
    score: float


class UnknownItemsError(ValueError):
    """A history names item ids the served identifier map does not know."""

    def __init__(self, unknown: Sequence[str]):
        self.unknown = list(unknown)
        shown = ", ".join(repr(u) for u in self.unknown[:5])
        more = f" (and {len(self.unknown) - 5} more)" if len(self.unknown) > 5 else ""
        super().__init__(f"unknown item ids in history: {shown}{more}")


# --------------------------------------------------------------------------------------------
# onnxruntime sessions
# --------------------------------------------------------------------------------------------
def choose_providers(provider: str = "auto") -> list[str]:
    """Execution providers, explicit: CUDA when onnxruntime-gpu and a GPU are there, else CPU.

    provider: auto | cpu | cuda ('cuda' fails loudly when CUDA cannot be used).
    """
    import onnxruntime as ort

    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"serve.provider must be auto, cpu or cuda, got {provider!r}")
    available = ort.get_available_providers()
    if provider != "cpu" and "CUDAExecutionProvider" in available and _gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "cuda":
        raise RuntimeError(f"serve.provider=cuda but CUDA cannot be used (onnxruntime providers: {available}, "
                           f"GPU present: {_gpu_present()}); install the `gpu` extra on a GPU machine")
    return ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency, but the runtime does not need it
        return Path("/dev/nvidiactl").exists()


class OnnxSeq2Seq:
    """The graphs of an export (see gensar.export.onnx) and the output embedding."""

    def __init__(self, export_dir: str | Path, provider: str = "auto", threads: int = 1, spin: bool = False):
        import onnxruntime as ort

        export_dir = Path(export_dir)
        self.providers = choose_providers(provider)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads      # 0 = onnxruntime's default (all cores)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # spinning worker threads cut latency on an idle machine but burn cores others need on a
        # shared one (measured here: 3x slower with 2 spinning threads under load)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.sessions = {n: ort.InferenceSession(str(export_dir / f"{n}.onnx"), opts, providers=self.providers)
                         for n in ("encoder", "decoder", "decoder_lse")}
        used = self.sessions["decoder"].get_providers()
        logger.info("runtime: onnxruntime %s, providers %s, %s threads%s", ort.__version__, used,
                    threads or "all", ", spinning" if spin else "")
        self.lm_head = np.load(export_dir / "lm_head.npy")                   # [V, D] float32
        self.d_model = self.lm_head.shape[1]
        dec_inputs = self.sessions["decoder"].get_inputs()
        self.cross_names = [i.name for i in dec_inputs if i.name.startswith("cross_")]
        self.past_names = [i.name for i in dec_inputs if i.name.startswith("past_")]
        past_shape = next(i.shape for i in dec_inputs if i.name == self.past_names[0])
        self.n_heads, self.d_kv = int(past_shape[1]), int(past_shape[3])

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """Cross-attention K/V of every decoder layer, each [B, H, S, d_kv]."""
        return self.sessions["encoder"].run(self.cross_names, {"input_ids": input_ids, "attention_mask": attention_mask})

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        empty = np.zeros((rows, self.n_heads, 0, self.d_kv), dtype=np.float32)
        return [empty] * len(self.past_names)

    def step(self, tokens: np.ndarray, attention_mask: np.ndarray, cross: list[np.ndarray], past: list[np.ndarray],
             token_ids: np.ndarray | None = None, token_weight: np.ndarray | None = None,
             token_mask: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder step for R rows: (log-probs [R, V_t], new caches [R, H, T+1, d_kv]).

        token_ids [V_t]: HF's log-softmax over the whole vocabulary, read at these tokens
        (decoder_lse.onnx); or token_weight [D, V_t] (their output-embedding columns) and
        token_mask [R, V_t] (which of them each row may take): log-softmax over the allowed tokens
        only (decoder.onnx; rows with nothing allowed come back as NaN).
        """
        feed = {"input_ids": tokens[:, None], "encoder_attention_mask": attention_mask,
                **dict(zip(self.cross_names, cross)), **dict(zip(self.past_names, past))}
        if token_ids is not None:
            feed["token_ids"] = token_ids
            logp, *present = self.sessions["decoder_lse"].run(None, feed)
        else:
            feed["token_weight"], feed["token_mask"] = token_weight, token_mask[:, None, :]
            logp, *present = self.sessions["decoder"].run(None, feed)
        return logp[:, 0], present


# --------------------------------------------------------------------------------------------
# the trie as per-depth tables (vectorised decoding)
# --------------------------------------------------------------------------------------------
class TrieTables:
    """A prefix trie of fixed-length identifiers, as dense numpy tables per depth.

    At depth t every trie node has a local index; `vocab[t]` are the token ids that occur at
    position t of any identifier (the only tokens whose logits are ever needed there), and
    `children[t][node, j]` is the node of depth t+1 reached from `node` by token `vocab[t][j]`, or
    the "dead" node of depth t+1 when the trie does not allow that token. Each depth has one dead
    node (index = number of nodes, its row all dead) for beams that ran out of valid continuations.
    Leaves (depth L) are items. One table lookup per step gives every beam's allowed tokens and,
    after the top-k, its children: no search in the decoding loop.
    """

    def __init__(self, sequences: np.ndarray, item_ids: Sequence[str]):
        seqs = np.asarray(sequences, dtype=np.int64)
        if seqs.ndim != 2 or len(seqs) != len(item_ids) or len(seqs) == 0:
            raise ValueError(f"trie: need one fixed-length token sequence per item, got shape {seqs.shape} "
                             f"for {len(item_ids)} items")
        self.depth = seqs.shape[1]
        self.vocab, self.children, self.n_nodes = [], [], []
        node = np.zeros(len(seqs), dtype=np.int64)          # each item's trie node at depth t
        n_nodes = 1
        for t in range(self.depth):
            vocab, tok = np.unique(seqs[:, t], return_inverse=True)
            keys, child = np.unique(node * len(vocab) + tok, return_inverse=True)   # one key per child node
            children = np.full((n_nodes + 1, len(vocab)), len(keys), dtype=np.int32)  # all dead ...
            children[keys // len(vocab), keys % len(vocab)] = np.arange(len(keys))   # ... but the trie's edges
            self.vocab.append(vocab)
            self.children.append(children)
            self.n_nodes.append(n_nodes)
            node, n_nodes = child.reshape(-1), len(keys)
        if n_nodes != len(seqs):
            _, first, counts = np.unique(node, return_index=True, return_counts=True)
            dup = first[counts > 1][0]
            raise ValueError(f"trie: identifier {seqs[dup].tolist()} names {counts.max()} items, "
                             f"e.g. {item_ids[dup]!r}")
        self.leaf_item = np.empty(n_nodes + 1, dtype=object)
        self.leaf_item[node] = [str(i) for i in item_ids]
        self.leaf_item[n_nodes] = None

    def __len__(self) -> int:
        return len(self.leaf_item) - 1

    def dead(self, t: int) -> int:
        return self.n_nodes[t] if t < self.depth else len(self.leaf_item) - 1

    def allowed(self, t: int, node: np.ndarray) -> np.ndarray:
        """[..., |vocab[t]|] bool: the tokens of depth t each node allows."""
        return self.children[t][node] != self.dead(t + 1)

    def child(self, t: int, node: np.ndarray, tok_local: np.ndarray) -> np.ndarray:
        """Nodes at depth t+1 reached from `node` (depth t) along local token `tok_local`."""
        return self.children[t][node, tok_local]


# --------------------------------------------------------------------------------------------
# constrained beam search
# --------------------------------------------------------------------------------------------
def best_candidates(allowed: np.ndarray, score: np.ndarray, logp: np.ndarray, b: int, keep: int):
    """The `keep` best allowed (row, token) candidates of each of the b requests, best first.

    allowed, logp [R, V_t] with R = b * per rows (a request's rows are contiguous); a candidate's
    score is score[row] + logp[row, token]. Only the allowed pairs are scored and ranked (a
    partition over the dense [per * V_t] row, mostly -inf ties, is 10x slower). Returns flat
    (source row, local token, score) [b * keep]; a request with fewer allowed candidates than
    `keep` is padded with its first row, token 0 and score -inf (dead beams).
    """
    v = allowed.shape[1]
    flat = np.flatnonzero(allowed)                                    # row * V_t + token, grouped by request
    values = logp.take(flat) + score[flat // v]
    bounds = np.searchsorted(flat, np.arange(1, b) * (len(allowed) // b) * v) if b > 1 else ()
    picked, picked_values = [], []
    for i, (lo, hi) in enumerate(zip((0, *bounds), (*bounds, len(flat)))):
        part = values[lo:hi]
        best = np.argpartition(part, len(part) - keep)[len(part) - keep:] if len(part) > keep else np.arange(len(part))
        best = best[np.argsort(-part[best], kind="stable")] + lo                # best first, as HF's topk
        picked.append(flat[best])
        picked_values.append(values[best])
        if len(best) < keep:                                                    # dead beams
            first_row = i * (len(allowed) // b)
            picked.append(np.full(keep - len(best), first_row * v))
            picked_values.append(np.full(keep - len(best), -np.inf, dtype=np.float32))
    src, tok = np.divmod(np.concatenate(picked), v)
    return src, tok, np.concatenate(picked_values)


def beam_search(model: OnnxSeq2Seq, input_ids: np.ndarray, attention_mask: np.ndarray, trie: TrieTables,
                level_weights: list[np.ndarray] | None, num_beams: int, start_id: int, eos_id: int | None,
                normalize: str = "full", code_weights: list[np.ndarray] | None = None,
                code_index: list[np.ndarray] | None = None) -> list[list[tuple[str, float]]]:
    """Best `num_beams` identifiers of `trie` for each of the B encoder inputs, best first.

    level_weights[t] (`normalize="allowed"` only): output-embedding columns of trie.vocab[t] [D, V_t]. eos_id: score the EOS that follows a
    complete identifier (as the PyTorch path does), None to skip it. `normalize="level"` (models
    trained with `train.id_loss: level`): code_weights[t] [D, K] are the columns of every code of
    depth t's level and code_index[t] [V_t] the position of each trie token among them; the
    log-softmax runs over the K codes (the training distribution) and EOS is forced (log 1 = 0).
    Returns per request a list of (item_id, summed log-probability); beams that found no valid
    identifier are dropped.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    b = input_ids.shape[0]
    full = normalize == "full"
    cross = model.encode(input_ids, attention_mask)
    past = model.empty_cache(b)
    tokens = np.full(b, start_id, dtype=np.int64)
    node = np.zeros(b, dtype=np.int64)                  # trie node of each row (depth t)
    score = np.zeros(b, dtype=np.float32)               # summed log-probs of each row
    per = 1                                             # rows per request (1 at step 0, then <= N)
    for t in range(trie.depth):
        vocab = trie.vocab[t]
        allowed = trie.allowed(t, node)                                       # [R, V_t]
        if full:
            logp, present = model.step(tokens, attention_mask, cross, past, token_ids=vocab)
        elif normalize == "level":
            every = np.ones((len(tokens), code_weights[t].shape[1]), dtype=bool)
            logp, present = model.step(tokens, attention_mask, cross, past, token_weight=code_weights[t],
                                       token_mask=every)
            logp = logp[:, code_index[t]]                                     # [R, V_t]
        else:
            logp, present = model.step(tokens, attention_mask, cross, past, token_weight=level_weights[t],
                                       token_mask=allowed)
        keep = min(num_beams, per * len(vocab))
        src, tok_local, score = best_candidates(allowed, score, logp, b, keep)   # [B * keep] each
        node = trie.child(t, node[src], tok_local)                            # dead where nothing was allowed
        node[~np.isfinite(score)] = trie.dead(t + 1)
        tokens = vocab[tok_local]
        past = [p[src] for p in present]                                      # reorder the KV cache
        per = keep
    if eos_id is not None and full:
        # score the EOS after the identifier too: add log p(EOS | identifier)
        logp, _ = model.step(tokens, attention_mask, cross, past, token_ids=np.array([eos_id], dtype=np.int64))
        score = score + logp[:, 0]
    # (normalize="allowed" or "level": EOS is the only allowed token there, log 1 = 0)
    score = score.reshape(b, per)
    items = trie.leaf_item[node].reshape(b, per)
    out = []
    for i in range(b):
        order = np.argsort(-score[i], kind="stable")
        out.append([(items[i, j], float(score[i, j])) for j in order if np.isfinite(score[i, j])])
    return out


# --------------------------------------------------------------------------------------------
# the product API
# --------------------------------------------------------------------------------------------
class Runtime:
    """recommend / search on an export folder (`models/onnx`), the same API as GenSARModel."""

    def __init__(self, export_dir: str | Path, beams: int = 20, normalize: str = "auto",
                 provider: str = "auto", threads: int = 1, spin: bool = False):
        from gensar.model.prompts import IdentifierMap
        from gensar.model.tokenizer import load_tokenizer

        export_dir = Path(export_dir)
        meta_path = export_dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: not an ONNX export of GenSAR (no meta.json); "
                                    f"run `python -m gensar.stages.export`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{meta_path}: export format {self.meta.get('format')!r}, this runtime reads "
                             f"{EXPORT_FORMAT!r}; re-run `python -m gensar.stages.export`")
        self.export_dir = export_dir
        gen = self.meta["generation"]
        if normalize == "auto":              # the scores the model was trained to give
            normalize = gen.get("normalize", "full")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be auto or one of {', '.join(NORMALIZE)}, got {normalize!r}")
        self.beams, self.normalize = beams, normalize
        self.start_id, self.eos_id = gen["decoder_start_token_id"], gen["eos_token_id"]
        self.score_eos = bool(gen.get("score_eos", True))
        self.max_input_tokens = gen["max_input_tokens"]
        self.prompt_kw = {"history_len": gen["history_len"], "max_query_words": gen["max_query_words"],
                          "twins": gen["history_twins"]}
        self.model = OnnxSeq2Seq(export_dir, provider, threads, spin)
        self.tokenizer = load_tokenizer(export_dir / "tokenizer")
        # the Rust tokenizer with the same truncation, encoding one source at a time: its batch
        # encoder spreads tiny batches over a thread pool, which costs more than it saves here
        self.backend = self.tokenizer.backend_tokenizer
        self.backend.no_padding()
        self.backend.enable_truncation(self.max_input_tokens)
        self.pad_id = int(gen.get("pad_token_id", self.tokenizer.pad_token_id))
        self.ids = IdentifierMap.load(export_dir / "ids", bool(gen.get("drop_constant_codes", False)))
        import pandas as pd

        titles = pd.read_parquet(export_dir / "items.parquet", columns=["item_id", "title"])
        self.titles = dict(zip(titles["item_id"].astype(str), titles["title"].astype(str)))
        tries = np.load(export_dir / "trie.npz", allow_pickle=False)
        item_ids = [str(i) for i in tries["item_ids"]]
        self.tries = {space: TrieTables(tries[f"{space}_tokens"], item_ids) for space in ("sid", "cid")}
        self.id_tokens = {space: tries[f"{space}_tokens"] for space in ("sid", "cid")}   # [n_items, L]
        self.item_row = {item: i for i, item in enumerate(item_ids)}
        # output-embedding columns of each depth's tokens (normalize=allowed scores only those)
        self.level_weights = {space: [np.ascontiguousarray(self.model.lm_head[v].T) for v in trie.vocab]
                              for space, trie in self.tries.items()}
        # every code of each depth's level (normalize=level scores over those) and where the trie's tokens are
        groups = self.ids.level_groups()
        self.code_weights, self.code_pos = {}, {}
        for space in self.tries:
            codes = [np.array(self.tokenizer.convert_tokens_to_ids(groups[g]), dtype=np.int64)
                     for g in self.ids.space_groups(space)]
            self.code_weights[space] = [np.ascontiguousarray(self.model.lm_head[c].T) for c in codes]
            self.code_pos[space] = []                   # token id -> its index among its depth's codes
            for c in codes:
                pos = np.full(len(self.tokenizer), -1, dtype=np.int64)
                pos[c] = np.arange(len(c))
                self.code_pos[space].append(pos)
        logger.info("runtime: %s loaded: %d items, beams %d, normalize=%s", export_dir, len(item_ids),
                    beams, normalize)

    @classmethod
    def load(cls, export_dir: str | Path = "models/onnx", **kw) -> Runtime:
        return cls(export_dir, **kw)

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def check_history(self, history: Sequence) -> None:
        """Raise UnknownItemsError when an event names an item the identifier map does not know."""
        unknown = [ev[1] for ev in history if ev[1] not in self.ids]
        if unknown:
            raise UnknownItemsError(list(dict.fromkeys(unknown)))

    # ----------------------------------------------------------------------------------------
    def encode_sources(self, sources: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids like the PyTorch path's tokenizer call (truncation to max_input_tokens, right padding)."""
        rows = [self.backend.encode(s).ids for s in sources]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask

    def candidate_trie(self, space: str, candidates: Sequence[str]) -> TrieTables:
        """The trie of just these items (the 100-candidate protocol)."""
        items = list(dict.fromkeys(str(c) for c in candidates))
        unknown = [c for c in items if c not in self.item_row]
        if unknown:
            raise UnknownItemsError(unknown)
        return TrieTables(self.id_tokens[space][[self.item_row[c] for c in items]], items)

    def _search(self, ids: np.ndarray, mask: np.ndarray, space: str, trie: TrieTables, beams: int):
        """beam_search over `trie` with what this normalisation needs of the trie's tokens."""
        level_w = code_i = None
        if self.normalize == "allowed":                 # the trie tokens' output columns
            level_w = (self.level_weights[space] if trie is self.tries[space] else
                       [np.ascontiguousarray(self.model.lm_head[v].T) for v in trie.vocab])
        elif self.normalize == "level":                 # where the trie tokens are among their level's codes
            code_i = [pos[v] for pos, v in zip(self.code_pos[space], trie.vocab)]
        return beam_search(self.model, ids, mask, trie, level_w, beams, self.start_id,
                           self.eos_id if self.score_eos else None, self.normalize,
                           self.code_weights[space], code_i)

    def generate_items(self, sources: Sequence[str], space: str, ks: Sequence[int],
                       beams: int | None = None, candidates: Sequence[Sequence[str]] | None = None
                       ) -> list[list[Hit]]:
        """Top-k hits of each source; with `candidates`, each request ranks only its own items
        (one beam search per request over the trie of its candidates)."""
        if not sources:
            return []
        beams = max(beams or self.beams, max(ks))
        ids, mask = self.encode_sources(sources)
        t0 = time.perf_counter()
        if candidates is None:
            ranked = self._search(ids, mask, space, self.tries[space], beams)
        else:
            ranked = [self._search(ids[i:i + 1], mask[i:i + 1], space, self.candidate_trie(space, c), beams)[0]
                      for i, c in enumerate(candidates)]
        logger.debug("runtime: %d %s requests in %.1f ms", len(sources), space, 1e3 * (time.perf_counter() - t0))
        return [[Hit(item, self.titles.get(item, ""), score) for item, score in r[:k]] for r, k in zip(ranked, ks)]

    def recommend_batch(self, histories: Sequence[Sequence], ks: int | Sequence[int] = 10,
                        beams: int | None = None, candidates: Sequence[Sequence[str]] | None = None
                        ) -> list[list[Hit]]:
        from gensar.model import prompts

        ks = [ks] * len(histories) if isinstance(ks, int) else list(ks)
        for h in histories:
            self.check_history(h)
        sources = [prompts.rec_input(h, self.ids, **self.prompt_kw) for h in histories]
        return self.generate_items(sources, "cid", ks, beams, candidates)

    def search_batch(self, queries: Sequence[str], histories: Sequence[Sequence],
                     ks: int | Sequence[int] = 10, beams: int | None = None,
                     candidates: Sequence[Sequence[str]] | None = None) -> list[list[Hit]]:
        from gensar.model import prompts

        if len(queries) != len(histories):
            raise ValueError(f"search_batch: {len(queries)} queries but {len(histories)} histories")
        ks = [ks] * len(queries) if isinstance(ks, int) else list(ks)
        for h in histories:
            self.check_history(h)
        sources = [prompts.search_input(q, h, self.ids, **self.prompt_kw) for q, h in zip(queries, histories)]
        return self.generate_items(sources, "sid", ks, beams, candidates)

    def suggest_batch(self, histories: Sequence[Sequence], max_new_tokens: int = 24) -> list[str]:
        """The query each user is expected to type next (the model's next-query task), as text."""
        from gensar.model import prompts

        if not histories:
            return []
        for h in histories:
            self.check_history(h)
        sources = [prompts.query_input(h, self.ids, **self.prompt_kw) for h in histories]
        rows = self.greedy_tokens(sources, max_new_tokens)
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    def greedy_tokens(self, sources: Sequence[str], max_new_tokens: int = 24) -> np.ndarray:
        """[B, <= max_new_tokens] token ids, EOS-padded: greedy decoding over the whole vocabulary, like
        HF `generate(num_beams=1)` (parity-tested); one decoder step per token for every request."""
        ids, mask = self.encode_sources(sources)
        cross, past = self.model.encode(ids, mask), self.model.empty_cache(len(sources))
        vocab = np.arange(self.model.lm_head.shape[0], dtype=np.int64)
        tokens = np.full(len(sources), self.start_id, dtype=np.int64)
        out = np.full((len(sources), max_new_tokens), self.eos_id, dtype=np.int64)
        done = np.zeros(len(sources), dtype=bool)
        for t in range(max_new_tokens):
            logp, past = self.model.step(tokens, mask, cross, past, token_ids=vocab)   # [B, V]
            tokens = np.where(done, self.eos_id, logp.argmax(1)).astype(np.int64)
            out[:, t] = tokens
            done |= tokens == self.eos_id
            if done.all():
                return out[:, : t + 1]
        return out

    def suggest(self, history: Sequence) -> str:
        """The query the user with `history` is expected to type next (empty history: the most likely query)."""
        return self.suggest_batch([history])[0]

    def recommend(self, history: Sequence, k: int = 10) -> list[Hit]:
        """Top-k items to recommend after `history` (events; empty = cold start), best first."""
        return self.recommend_batch([history], [k])[0]

    def search(self, query: str, history: Sequence, k: int = 10) -> list[Hit]:
        """Top-k items for `query` typed by a user with `history`, best first."""
        return self.search_batch([query], [history], [k])[0]
