"""Constrained beam search and the Python API on the PyTorch model.

`GenSARModel` holds the T5, the tokenizer, the identifier map and two prefix tries of identifier
token ids (SID trie for search, CID trie for recommendation), built ONCE. Decoding is HF
`generate(num_beams=B, do_sample=False, num_return_sequences=k, prefix_allowed_tokens_fn=f)` where
`f` walks the trie: after a decoded prefix only the children of its trie node are allowed, and after a
complete identifier only EOS. So every returned sequence is a valid identifier of exactly one item.

Scores are total log-probabilities of the identifier tokens plus EOS (`length_penalty=0`; every
identifier has the same length, so this ranks like the per-token mean). A model trained with
`train.id_loss: level` is decoded with the distribution it was trained on: at each depth a softmax
over that level's codes (`gensar.model.levels.LevelTrieProcessor`), EOS forced with log-probability 0. With `candidates`, a small
trie of just those items is built for the request (the paper's 100-candidate protocol).

    m = GenSARModel.load("models/t5", "models/ids")
    m.recommend(history, k=10)            -> [(item_id, score), ...] best first
    m.search(query, history, k=10)
    m.recommend_batch(histories, k, candidates=None), m.search_batch(queries, histories, k, ...)
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessorList

from gensar.config import TrainConfig
from gensar.model import prompts
from gensar.model.levels import LevelTrieProcessor, LevelVocab, t5_hidden
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import encode
from gensar.model.tokenizer import check_single_tokens
from gensar.model.trie import IdentifierTrie

logger = logging.getLogger(__name__)


class GenSARModel:
    def __init__(self, model, tokenizer, ids: IdentifierMap, cfg: TrainConfig | None = None,
                 beams: int = 30, device: str | torch.device | None = None):
        self.model, self.tokenizer, self.ids = model, tokenizer, ids
        self.cfg = cfg or TrainConfig()
        self.beams = beams
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.eos = tokenizer.eos_token_id
        self.start = model.config.decoder_start_token_id
        # identifier token ids per item, per space; the two tries (built once)
        self.codes: dict[str, dict[str, list[int]]] = {}
        self.tries: dict[str, IdentifierTrie] = {}
        for space in prompts.SPACES:
            seqs = {i: check_single_tokens(tokenizer, ids.tokens_of(i, space)) for i in ids.item_ids}
            self.codes[space] = seqs
            self.tries[space] = IdentifierTrie(list(seqs.values()), list(seqs))
        # identifier-aware scores (train.id_loss: level): each depth is a softmax over its level's codes
        self.levels = (LevelVocab(tokenizer, ids, self.cfg.rec_first == "items") if self.cfg.id_loss == "level"
                       else None)
        self.count = prompts.token_counter(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
        logger.info("generate: tries over %d items (sid depth %d, cid depth %d), scores over %s", len(ids),
                    self.tries["sid"].depth, self.tries["cid"].depth,
                    "each level's codes" if self.levels is not None else "the whole vocabulary")

    @classmethod
    def load(cls, model_dir, ids_dir=None, device="cpu", beams: int = 30) -> GenSARModel:
        """From a saved model directory; the identifier map defaults to the one saved with it."""
        import dataclasses

        from gensar.config import from_dict
        from gensar.model.t5 import load_model

        model, tokenizer, meta = load_model(model_dir, device)
        known = {f.name for f in dataclasses.fields(TrainConfig)}   # tolerate fields added/removed later
        saved = {k: v for k, v in (meta.get("train") or {}).items() if k in known}
        cfg = from_dict(TrainConfig, saved, "train")
        ids = IdentifierMap.for_training(ids_dir or f"{model_dir}/ids", cfg)
        return cls(model, tokenizer, ids, cfg, beams, device)

    # ----------------------------------------------------------------------------------------
    def candidate_trie(self, space: str, candidates: Sequence[str]) -> IdentifierTrie:
        items = [c for c in dict.fromkeys(candidates)]
        missing = [c for c in items if c not in self.codes[space]]
        if missing:
            raise KeyError(f"candidates: {len(missing)} items have no identifier, e.g. {missing[:3]}")
        return IdentifierTrie([self.codes[space][c] for c in items], items)

    @torch.no_grad()
    def generate_items(self, sources: Sequence[str], space: str, k: int,
                       candidates: Sequence[Sequence[str]] | None = None,
                       beams: int | None = None) -> list[list[tuple[str, float]]]:
        """Top-`k` items for each encoder input in `sources`, decoding identifiers of `space`."""
        if not sources:
            return []
        beams = max(beams or self.beams, k)
        tries = ([self.candidate_trie(space, c) for c in candidates] if candidates is not None
                 else [self.tries[space]] * len(sources))
        depth = tries[0].depth
        eos = self.eos

        def allowed(batch_id: int, prefix: torch.Tensor) -> list[int]:
            # prefix: (t,) decoder ids so far, starting with the decoder start token
            nxt = tries[batch_id].allowed_after(prefix[1:].tolist())
            return nxt or [eos]          # complete, finished (EOS emitted) or padding: only EOS

        enc = self.encode_sources(sources)
        self.model.eval()
        if self.levels is not None:
            constrain = {"logits_processor": LogitsProcessorList(
                [LevelTrieProcessor(tries, self.levels.space[space], beams, eos, self.first_items(space))])}
        else:
            constrain = {"prefix_allowed_tokens_fn": allowed}
        out = self.model.generate(
            **self._encoded(enc), num_beams=beams, num_return_sequences=beams, do_sample=False,
            max_new_tokens=depth + 1, length_penalty=0.0, early_stopping=True,
            output_scores=True, return_dict_in_generate=True, **constrain)
        seqs = out.sequences.view(len(sources), beams, -1)[:, :, 1:depth + 1].tolist()  # drop start
        scores = out.sequences_scores.view(len(sources), beams).tolist()
        results = []
        for b in range(len(sources)):
            ranked, seen = [], set()
            for seq, score in zip(seqs[b], scores[b]):
                item = tries[b].item(seq)
                if item is None or item in seen or score == float("-inf"):
                    continue  # fewer valid identifiers than beams: masked beams are dropped
                seen.add(item)
                ranked.append((item, float(score)))
            results.append(ranked[:k])
        return results

    def first_items(self, space: str) -> LevelVocab | None:
        """The item rows that score a CID's first code (`train.rec_first: items`), else None."""
        if self.levels is not None and space in self.levels.item_spaces:
            return self.levels
        return None

    # ----------------------------------------------------------------------------------------
    def encode_sources(self, sources: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask of encoder inputs (a causal model's inputs carry no EOS: they end
        where the request does, as its training inputs)."""
        return self.tokenizer(list(sources), return_tensors="pt", padding=True, truncation=True,
                              max_length=self.cfg.max_input_tokens,
                              add_special_tokens=not self.cfg.causal).to(self.device)

    def _encoded(self, enc) -> dict:
        """`generate` arguments: the inputs, or for a causal encoder its states computed here."""
        if not self.cfg.causal:
            return dict(enc)
        from transformers.modeling_outputs import BaseModelOutput

        states = encode(self.model, enc["input_ids"], enc["attention_mask"], causal=True)
        return {"encoder_outputs": BaseModelOutput(last_hidden_state=states), "attention_mask": enc["attention_mask"]}

    def _kw(self):
        return {"history_len": self.cfg.history_len, "max_query_words": self.cfg.max_query_tokens,
                "twins": self.cfg.history_twins, "causal": self.cfg.causal,
                "max_tokens": self.cfg.max_input_tokens, "count": self.count}

    def sources(self, behavior: str, histories: Sequence[Sequence], queries: Sequence[str] | None = None
                ) -> list[str]:
        """Encoder inputs (inference template) of rec requests, or of search requests with `queries`."""
        if behavior == "rec":
            return [prompts.rec_input(h, self.ids, **self._kw()) for h in histories]
        if queries is None or len(queries) != len(histories):
            raise ValueError(f"search: {0 if queries is None else len(queries)} queries but "
                             f"{len(histories)} histories")
        return [prompts.search_input(q, h, self.ids, **self._kw()) for q, h in zip(queries, histories)]

    def recommend_batch(self, histories: Sequence[Sequence], k: int = 10,
                        candidates: Sequence[Sequence[str]] | None = None, beams: int | None = None):
        return self.generate_items(self.sources("rec", histories), "cid", k, candidates, beams)

    def search_batch(self, queries: Sequence[str], histories: Sequence[Sequence], k: int = 10,
                     candidates: Sequence[Sequence[str]] | None = None, beams: int | None = None):
        return self.generate_items(self.sources("search", histories, queries), "sid", k, candidates, beams)

    @torch.no_grad()
    def level_accuracy(self, sources: Sequence[str], space: str, targets: Sequence[str], batch: int = 64
                       ) -> tuple[list[float], list[float]]:
        """Teacher-forced accuracy of each identifier position, from one forward pass: the share of
        `targets` whose code at depth t is the model's argmax given the true codes before it.
        Returns (free, in_trie): free takes the argmax over the level's codes when the model was
        trained with `id_loss: level`, else over the whole vocabulary; in_trie over the codes the
        identifier trie allows after the true prefix (what constrained decoding chooses from; never
        below the free accuracy)."""
        trie = self.tries[space]
        depth = trie.depth
        groups = self.levels.space[space] if self.levels is not None else None
        correct = np.zeros(depth)
        correct_trie = np.zeros(depth)
        self.model.eval()
        for i in range(0, len(sources), batch):
            enc = self.encode_sources(sources[i:i + batch])
            labels = torch.tensor([self.codes[space][t] for t in targets[i:i + batch]], device=self.device)
            hidden = t5_hidden(self.model, enc["input_ids"], enc["attention_mask"], labels, causal=self.cfg.causal)
            logits = hidden @ self.model.lm_head.weight.T                                # [b, depth, V]
            if self.first_items(space) is not None:      # depth 0 scores the items' mass under each code
                toks = torch.as_tensor(groups[0], device=self.device)
                logits[:, 0] = float("-inf")
                logits[:, 0, toks] = self.levels.first_logp(hidden[:, 0], self.model.lm_head.weight)
            for t in range(depth):
                if groups is None:
                    pred = logits[:, t].argmax(-1)
                else:
                    toks = torch.as_tensor(groups[t], device=self.device)
                    pred = toks[logits[:, t, toks].argmax(-1)]
                correct[t] += (pred == labels[:, t]).sum().item()
                for r, row in enumerate(labels.tolist()):
                    toks = torch.as_tensor(trie.allowed_after(row[:t]), device=self.device)
                    correct_trie[t] += int(toks[logits[r, t, toks].argmax()] == row[t])
        n = max(1, len(sources))
        return (correct / n).tolist(), (correct_trie / n).tolist()

    @torch.no_grad()
    def first_item_ranking(self, sources: Sequence[str], k: int = 10, batch: int = 64) -> list[list[str]]:
        """A `rec_first: items` model's top-k items by the item softmax at the first CID position alone
        (no identifier decoded): what the model knows of the next item before the beam and the lower
        code levels act on it (a diagnostic, `valid/rec/items/*`)."""
        if self.first_items("cid") is None:
            raise ValueError("first_item_ranking needs a model trained with train.rec_first: items")
        out = []
        self.model.eval()
        for i in range(0, len(sources), batch):
            enc = self.encode_sources(sources[i:i + batch])
            start = torch.full((len(enc["input_ids"]), 1), self.start, device=self.device)
            hidden = t5_hidden(self.model, enc["input_ids"], enc["attention_mask"], start, decoder_input_ids=start,
                               causal=self.cfg.causal)                                     # [b, 1, D]
            top = self.levels.item_logits(hidden[:, 0], self.model.lm_head.weight).topk(k, -1).indices   # [b, k]
            out += [[self.ids.item_ids[j] for j in row] for row in top.tolist()]
        return out

    def recommend(self, history: Sequence, k: int = 10, candidates: Sequence[str] | None = None):
        """Top-k (item_id, score) for the next recommendation after `history` (list of events)."""
        return self.recommend_batch([history], k, [candidates] if candidates is not None else None)[0]

    def search(self, query: str, history: Sequence, k: int = 10, candidates: Sequence[str] | None = None):
        """Top-k (item_id, score) for `query` typed by a user with `history`."""
        return self.search_batch([query], [history], k, [candidates] if candidates is not None else None)[0]

    @torch.no_grad()
    def next_query(self, history: Sequence, beams: int = 4, max_new_tokens: int = 24) -> str:
        """The query the model expects the user to type next (free text, unconstrained)."""
        src = prompts.query_input(history, self.ids, **self._kw())
        enc = self.encode_sources([src])
        out = self.model.generate(**self._encoded(enc), num_beams=beams, do_sample=False, max_new_tokens=max_new_tokens)
        return self.tokenizer.decode(out[0], skip_special_tokens=True)
