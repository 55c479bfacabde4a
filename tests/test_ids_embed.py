"""Semantic embeddings: the offline MiniLM encoder, the text-hash cache, the embed stage."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from gensar.config import EmbedConfig, Params
from gensar.ids.embed import embed_items, load_encoder
from gensar.stages import embed as embed_stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
CFG = EmbedConfig(batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(CFG.model, "cpu")


def items(texts):
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(len(texts))], "text": texts})


def test_cache_encodes_only_new_or_changed_texts(tmp_path, encoder):
    texts = ["red lipstick matte", "blue stapler", "gel pen black ink", "vitamin c serum"]
    _, v1, encoded = embed_items(items(texts), CFG, tmp_path, encoder=encoder)
    assert encoded == 4 and v1.shape == (4, 384) and v1.dtype == np.float32
    changed = texts[:3] + ["retinol night cream", "argan oil shampoo"]      # item 3 edited, item 4 new
    _, v2, encoded = embed_items(items(changed), CFG, tmp_path, encoder=encoder)
    assert encoded == 2
    assert np.allclose(v2[:3], v1[:3], atol=1e-6)                          # cached rows are identical
    assert not np.allclose(v2[3], v1[3])
    # semantic sanity: the two cosmetics are closer to each other than to office supplies
    sim = v2 @ v2.T
    assert sim[3, 4] > sim[3, 1]


def test_empty_text_is_rejected_with_the_row():
    with pytest.raises(ValueError, match="row 1"):
        embed_items(items(["ok", " "]), CFG, None, encoder=object())


def test_embed_stage_reuses_cache(tmp_path, encoder):
    canon = tmp_path / "canonical"
    canon.mkdir()
    items(["lip balm", "paper clips", "hair dryer"]).to_parquet(canon / "items.parquet")
    out = tmp_path / "emb"
    embed_items(items(["lip balm", "paper clips", "hair dryer"]), CFG, out / "cache", encoder=encoder)  # warm
    params = Params(embed=CFG)
    s = embed_stage.run(params, canonical=canon, out=out)                  # all cached: no model load needed
    assert s["encoded"] == 0 and s["n_items"] == 3
    assert np.load(out / "semantic.npy").shape == (3, 384)
    assert json.loads((out / "item_ids.json").read_text()) == ["i0", "i1", "i2"]


def test_a_vector_depends_only_on_its_text(encoder):
    """Batch-mates do not change a vector's bits: the same texts encoded with others, in another
    order, or alone give identical vectors (a fresh clone and a warm cache agree)."""
    from gensar.ids.embed import encode_texts

    texts = ["red lipstick matte", "blue stapler", "gel pen black ink", "vitamin c serum", "argan oil",
             "a long description of a desk lamp with a flexible arm and warm light", "paper clips", "ink"]
    all_at_once = encode_texts(encoder, texts, batch_size=4)
    again = encode_texts(encoder, texts[::-1] + ["another text that pads a batch differently"], 4)[:len(texts)][::-1]
    alone = np.stack([encode_texts(encoder, [t], 4)[0] for t in texts])
    assert np.array_equal(all_at_once, again) and np.array_equal(all_at_once, alone)
