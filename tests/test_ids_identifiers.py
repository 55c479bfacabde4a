"""The identifiers stage end to end (tiny): unique SIDs/CIDs in every mode, meta, incremental stability."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gensar.config import IdsConfig, Params
from gensar.ids.tokens import id_tokens
from gensar.stages import identifiers as ids_stage

torch.set_num_threads(1)


def write_inputs(root, n_items, seed=0):
    """Canonical items plus embed/collab outputs (clustered random embeddings, so codes collide)."""
    rng = np.random.default_rng(seed)
    item_ids = [f"i{k}" for k in range(n_items)]
    canon, emb, col = root / "canonical", root / "emb", root / "sasrec"
    for d in (canon, emb, col):
        d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": item_ids, "text": [f"t{k}" for k in item_ids]}).to_parquet(canon / "items.parquet")
    centers = rng.normal(size=(5, 16))
    np.save(emb / "semantic.npy", (centers[rng.integers(5, size=n_items)] + 0.05 * rng.normal(size=(n_items, 16))).astype(np.float32))
    np.save(col / "collab.npy", rng.normal(size=(n_items, 6)).astype(np.float32))
    (emb / "item_ids.json").write_text(json.dumps(item_ids))
    (col / "item_ids.json").write_text(json.dumps(item_ids[::-1]))      # other order: must be aligned by id
    np.save(col / "collab.npy", np.load(col / "collab.npy")[::-1].copy())
    return canon, emb, col


def params(mode):
    return Params(ids=IdsConfig(mode=mode, shared_levels=1, specific_levels=1, codebook_size=4, shared_dim=8,
                                specific_dim=4, hidden=(16,), epochs=5, batch_size=32, device="cpu", cpu_threads=1))


@pytest.mark.parametrize("mode", ["gensar", "semantic", "collaborative", "independent"])
def test_identifiers_unique_in_every_mode(tmp_path, mode):
    canon, emb, col = write_inputs(tmp_path, 60)
    r = ids_stage.run(params(mode), embeddings=emb, collab=col, canonical=canon, out=tmp_path / "ids",
                      metrics=tmp_path / "ids.json")
    table = pd.read_parquet(tmp_path / "ids" / "identifiers.parquet")
    meta = json.loads((tmp_path / "ids" / "meta.json").read_text())
    sid, cid = np.array(table["sid"].tolist()), np.array(table["cid"].tolist())
    assert len({tuple(s) for s in sid}) == 60 and len({tuple(c) for c in cid}) == 60
    assert sid.shape == (60, 3) and meta["sid_kinds"][-1] == "d" and meta["mode"] == mode
    # 60 items in 4 x 4 = 16 base codes: collisions were there and were resolved
    assert r["sid_collision_rate_before"] > 0 and r["sid_collision_rate_after"] == 0
    assert id_tokens(sid[0], meta["sid_kinds"])[0].startswith("<")
    if mode == "gensar":
        assert meta["sid_kinds"] == ["h", "s", "d"] and meta["cid_kinds"] == ["h", "c", "d"]
        assert (sid[:, 0] == cid[:, 0]).all()                 # shared codes are shared
    if mode in ("semantic", "collaborative"):
        assert (sid == cid).all()
    m = json.loads((tmp_path / "ids.json").read_text())
    assert {"levels", "recon", "share_sid_ne_cid", "seconds", "cid_collision_rate_before"} <= set(m)


def test_incremental_assignment_keeps_old_identifiers(tmp_path):
    canon, emb, col = write_inputs(tmp_path / "v1", 40)
    ids_stage.run(params("gensar"), embeddings=emb, collab=col, canonical=canon, out=tmp_path / "ids1",
                  metrics=tmp_path / "m1.json")
    old = pd.read_parquet(tmp_path / "ids1" / "identifiers.parquet")
    # v2: the same 40 items (embeddings re-drawn: the old codes must not move) plus 25 new ones
    canon2, emb2, col2 = write_inputs(tmp_path / "v2", 65, seed=1)
    r = ids_stage.run(params("gensar"), embeddings=emb2, collab=col2, canonical=canon2, out=tmp_path / "ids2",
                      metrics=tmp_path / "m2.json", previous=tmp_path / "ids1")
    new = pd.read_parquet(tmp_path / "ids2" / "identifiers.parquet")
    assert r["n_assigned"] == 25
    merged = new.set_index("item_id")
    for it, s, c in zip(old["item_id"], old["sid"], old["cid"]):
        assert list(merged.loc[it, "sid"]) == list(s) and list(merged.loc[it, "cid"]) == list(c)
    assert new["sid"].map(tuple).nunique() == 65 and new["cid"].map(tuple).nunique() == 65


def test_a_crash_between_files_leaves_the_previous_identifiers(tmp_path, monkeypatch):
    canon, emb, col = write_inputs(tmp_path, 40)
    out = tmp_path / "ids"
    ids_stage.run(params("gensar"), embeddings=emb, collab=col, canonical=canon, out=out, metrics=tmp_path / "m.json")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    canon2, emb2, col2 = write_inputs(tmp_path / "v2", 50, seed=1)

    def killed(*args, **kwargs):   # the process dies after identifiers.parquet and meta.json were written
        raise KeyboardInterrupt("killed between files")
    monkeypatch.setattr(ids_stage, "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        ids_stage.run(params("gensar"), embeddings=emb2, collab=col2, canonical=canon2, out=out,
                      metrics=tmp_path / "m.json")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # all three files: the old version
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no half-written folder


def test_incremental_params_keep_the_identifiers_found_in_out(tmp_path):
    import dataclasses

    from gensar.config import IncrementalConfig

    canon, emb, col = write_inputs(tmp_path / "v1", 40)
    out = tmp_path / "ids"
    ids_stage.run(params("gensar"), embeddings=emb, collab=col, canonical=canon, out=out, metrics=tmp_path / "m.json")
    old = pd.read_parquet(out / "identifiers.parquet")
    canon2, emb2, col2 = write_inputs(tmp_path / "v2", 50, seed=1)
    warm = dataclasses.replace(params("gensar"), incremental=IncrementalConfig(enabled=True))
    r = ids_stage.run(warm, embeddings=emb2, collab=col2, canonical=canon2, out=out, metrics=tmp_path / "m.json")
    new = pd.read_parquet(out / "identifiers.parquet").set_index("item_id")
    assert r["n_assigned"] == 10
    assert all(list(new.loc[i, "sid"]) == list(s) for i, s in zip(old["item_id"], old["sid"]))
