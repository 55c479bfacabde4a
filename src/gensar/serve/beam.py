"""Constrained beam search over an identifier trie, in numpy, on the onnxruntime decoder steps.

Same answers as the PyTorch path (HF `generate` with the trie constraint): `normalize="full"`
scores with log_softmax over the whole vocabulary read at the trie's tokens of this depth (exactly
HF's); `normalize="level"` (models trained with `train.id_loss: level`) over each depth's level
codes, the training distribution; `normalize="allowed"` over the allowed tokens only, which never
touches the [D, vocab] matrix at the price of scores that differ from HF's.

Beam search (per request, N beams, identifier depth L, scores are summed log-probabilities):

    step 0:   1 row per request (the decoder start token), cache empty
    step t:   cand[b, (beam, tok)] = score[beam] + logp[beam, tok]   for tok allowed by the beam's trie node
              keep the best N candidates of each request; reorder the KV cache by the chosen beams
    step L:   (meta `score_eos`, default) add log p(EOS | identifier), as the PyTorch path scores the
              EOS it forces after a complete identifier
    result:   the N leaves sorted by score, top k

A model trained with `train.rec_first: items` scores a CID's first code as the mass of the items under
it: at step 0 the decoder scores every item row (`first_items`) and `first_code_logp` sums them per code.
"""
from __future__ import annotations

import numpy as np

from gensar.model.trie import IdentifierTrie
from gensar.serve.session import OnnxSeq2Seq

# full: HF's whole-vocabulary log-softmax | allowed: over the trie's allowed tokens | level: over each
# identifier level's codes (models trained with train.id_loss: level); auto: what the export says
NORMALIZE = ("full", "allowed", "level")


def first_code_logp(item_logp: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """[R, N] log p(item), onehot [N, K] (item -> its first code) -> [R, K] log of the items' summed
    probability under each first code (-inf where none is); `gensar.model.levels.first_code_logp`."""
    top = item_logp.max(1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(item_logp - top) @ onehot) + top


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


def beam_search(model: OnnxSeq2Seq, input_ids: np.ndarray, attention_mask: np.ndarray, trie: IdentifierTrie,
                level_weights: list[np.ndarray] | None, num_beams: int, start_id: int, eos_id: int | None,
                normalize: str = "full", code_weights: list[np.ndarray] | None = None,
                code_index: list[np.ndarray] | None = None,
                first_items: tuple[np.ndarray, np.ndarray] | None = None) -> list[list[tuple[str, float]]]:
    """Best `num_beams` identifiers of `trie` for each of the B encoder inputs, best first.

    level_weights[t] (`normalize="allowed"` only): output-embedding columns of trie.vocab[t] [D, V_t]. eos_id: score the EOS that follows a
    complete identifier (as the PyTorch path does), None to skip it. `normalize="level"` (models
    trained with `train.id_loss: level`): code_weights[t] [D, K] are the columns of every code of
    depth t's level and code_index[t] [V_t] the position of each trie token among them; the
    log-softmax runs over the K codes (the training distribution) and EOS is forced (log 1 = 0);
    first_items (`normalize="level"`, a `rec_first: items` model's CID trie): (item columns [D, N], onehot
    [N, K] of each item's first code), depth 0 is then `first_code_logp` of the item softmax.
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
        elif normalize == "level" and t == 0 and first_items is not None:
            every = np.ones((len(tokens), first_items[0].shape[1]), dtype=bool)
            logp, present = model.step(tokens, attention_mask, cross, past, token_weight=first_items[0],
                                       token_mask=every)                      # [R, N] log p(item)
            logp = first_code_logp(logp, first_items[1])[:, code_index[t]]    # [R, V_t]
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
