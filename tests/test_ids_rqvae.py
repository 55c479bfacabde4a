"""Dual RQ-VAE and ablations: shapes, shared codes, k-means init against collapse, training reduces loss."""
import numpy as np
import pytest
import torch

from gensar.config import IdsConfig
from gensar.ids.rqvae import MODES, IdentifierModel, kmeans, train_rqvae

torch.set_num_threads(1)


def tiny_cfg(**kw):
    base = {"shared_levels": 1, "specific_levels": 2, "codebook_size": 8, "shared_dim": 8, "specific_dim": 4,
            "hidden": (16,), "epochs": 20, "batch_size": 32, "device": "cpu"}
    return IdsConfig(**{**base, **kw})


def clustered(n=96, d=12, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    return (centers[rng.integers(k, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_kmeans_finds_separated_clusters():
    x = torch.tensor(clustered(n=120, d=5, k=4, seed=1))
    c = kmeans(x, 4)
    assign = torch.cdist(x, c).argmin(1)
    assert len(torch.unique(assign)) == 4


def test_shared_dim_must_be_twice_specific():
    with pytest.raises(ValueError, match="shared_dim"):
        IdentifierModel(12, 6, tiny_cfg(shared_dim=10))


@pytest.mark.parametrize("mode", MODES)
def test_modes_layout(mode):
    cfg = tiny_cfg(mode=mode, epochs=3)
    model, _ = train_rqvae(clustered(), clustered(d=6, seed=1), cfg)
    codes, residuals = model.encode(clustered(), clustered(d=6, seed=1))
    cols, kinds = model.id_columns(), model.id_kinds()
    assert codes.shape[1] == len(model.quantizers()) == len(residuals)
    assert len(cols["sid"]) == len(cols["cid"]) == 3
    if mode == "gensar":
        assert kinds == {"sid": ["h", "s", "s"], "cid": ["h", "c", "c"]}
        assert cols["sid"][0] == cols["cid"][0]           # the shared level is the same column
    elif mode == "independent":
        assert kinds == {"sid": ["s"] * 3, "cid": ["c"] * 3} and not set(cols["sid"]) & set(cols["cid"])
    else:
        assert cols["sid"] == cols["cid"]


def test_training_reduces_loss_and_uses_codes():
    x_s, x_c = clustered(), clustered(d=6, seed=1)
    _, info = train_rqvae(x_s, x_c, tiny_cfg(epochs=60), log_every=10)
    hist = info["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    first = hist[-1]["levels"]["h0"]
    assert first["usage"] >= 0.5 and first["perplexity"] > 3     # k-means init: no collapse to one code
    assert set(hist[-1]) >= {"recon_sem", "recon_col"}
