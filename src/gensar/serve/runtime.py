"""Serving runtime: the exported GenSAR model on onnxruntime, with constrained beam search in numpy.

Same answers as the PyTorch path (`gensar.model.generate.GenSARModel`, HF `generate` with the
trie constraint), computed with much less work per step: the sessions (`gensar.serve.session`) run
the encoder once per request and the decoder one token per beam with a KV cache; the beam search
(`gensar.serve.beam`) looks every beam up at once in the trie's dense tables
(`gensar.model.trie`). This module is the product API on top: prompts, tokenizer, identifier map,
titles, and the requests.

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

from gensar.model.trie import IdentifierTrie
from gensar.serve.beam import NORMALIZE, beam_search
from gensar.serve.session import OnnxSeq2Seq

logger = logging.getLogger(__name__)

# the graphs' interface (gensar.export.onnx writes it into meta.json; defined here so serving needs no torch)
# /2: fused-kernel graphs whose decoder steps return log-probs of the requested tokens
# /3: generation settings also say how histories render twins and which scores the model was trained on
EXPORT_FORMAT = "gensar-onnx/3"


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
        self.causal = bool(gen.get("causal", False))
        self.model = OnnxSeq2Seq(export_dir, provider, threads, spin)
        self.tokenizer = load_tokenizer(export_dir / "tokenizer")
        # the Rust tokenizer with the same truncation, encoding one source at a time: its batch
        # encoder spreads tiny batches over a thread pool, which costs more than it saves here
        self.backend = self.tokenizer.backend_tokenizer
        self.backend.no_padding()
        self.backend.enable_truncation(self.max_input_tokens)
        from gensar.model import prompts

        # inputs render as in training: histories fitted to max_input_tokens by their oldest clicks
        count = prompts.token_counter(lambda text: self.backend.encode(text, add_special_tokens=False).ids)
        self.prompt_kw = {"history_len": gen["history_len"], "max_query_words": gen["max_query_words"],
                          "twins": gen["history_twins"], "causal": self.causal,
                          "max_tokens": self.max_input_tokens, "count": count}
        self.pad_id = int(gen.get("pad_token_id", self.tokenizer.pad_token_id))
        self.ids = IdentifierMap.load(export_dir / "ids", bool(gen.get("drop_constant_codes", False)),
                                      bool(gen.get("item_tokens", False)), bool(gen.get("history_codes", True)))
        import pandas as pd

        titles = pd.read_parquet(export_dir / "items.parquet", columns=["item_id", "title"])
        self.titles = dict(zip(titles["item_id"].astype(str), titles["title"].astype(str)))
        tries = np.load(export_dir / "trie.npz", allow_pickle=False)
        item_ids = [str(i) for i in tries["item_ids"]]
        self.tries = {space: IdentifierTrie(tries[f"{space}_tokens"], item_ids) for space in ("sid", "cid")}
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
        # rec_first: items (normalize=level): a CID's first code is the mass of the items under it
        self.first_items = None
        if normalize == "level" and gen.get("rec_first", "codes") == "items":
            if self.ids.item_ids != item_ids:
                raise ValueError(f"{export_dir}: trie.npz and ids/ list the items in different orders; re-export")
            rows = np.array(self.tokenizer.convert_tokens_to_ids(self.ids.all_item_tokens()), dtype=np.int64)
            first = self.code_pos["cid"][0][self.id_tokens["cid"][:, 0]]             # [N] local first code
            onehot = np.zeros((len(item_ids), self.code_weights["cid"][0].shape[1]), dtype=np.float32)
            onehot[np.arange(len(item_ids)), first] = 1.0
            self.first_items = (np.ascontiguousarray(self.model.lm_head[rows].T), onehot)
        logger.info("runtime: %s loaded: %d items, beams %d, normalize=%s%s", export_dir, len(item_ids),
                    beams, normalize, ", CID first code from the item rows" if self.first_items else "")

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
        """Token ids like the PyTorch path's tokenizer call (truncation to max_input_tokens, right padding;
        no EOS for a causal encoder)."""
        rows = [self.backend.encode(s, add_special_tokens=not self.causal).ids for s in sources]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask

    def candidate_trie(self, space: str, candidates: Sequence[str]) -> IdentifierTrie:
        """The trie of just these items (the 100-candidate protocol)."""
        items = list(dict.fromkeys(str(c) for c in candidates))
        unknown = [c for c in items if c not in self.item_row]
        if unknown:
            raise UnknownItemsError(unknown)
        return IdentifierTrie(self.id_tokens[space][[self.item_row[c] for c in items]], items)

    def _search(self, ids: np.ndarray, mask: np.ndarray, space: str, trie: IdentifierTrie, beams: int):
        """beam_search over `trie` with what this normalisation needs of the trie's tokens."""
        level_w = code_i = None
        if self.normalize == "allowed":                 # the trie tokens' output columns
            level_w = (self.level_weights[space] if trie is self.tries[space] else
                       [np.ascontiguousarray(self.model.lm_head[v].T) for v in trie.vocab])
        elif self.normalize == "level":                 # where the trie tokens are among their level's codes
            code_i = [pos[v] for pos, v in zip(self.code_pos[space], trie.vocab)]
        return beam_search(self.model, ids, mask, trie, level_w, beams, self.start_id,
                           self.eos_id if self.score_eos else None, self.normalize,
                           self.code_weights[space], code_i, self.first_items if space in self.ids.cid_spaces() else None)

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
