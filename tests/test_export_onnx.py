"""ONNX export of a tiny randomly initialised GenSAR T5: graphs, numerics, the serving folder, the stage.

`tiny_world` (conftest.py) builds the real components at tiny size (tokenizer trained on the items'
text, identifier map with shared + specific + disambiguation codes, T5 from `gensar.model.t5`), saved
in the same layout as the pipeline's `models/t5`, `models/ids`, `prepared/canonical`.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_world

from gensar.config import Params
from gensar.export.onnx import export_onnx, verify


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(2)
    return tiny_world(tmp_path_factory.mktemp("world"))


# --------------------------------------------------------------------------------------------
def test_graphs_match_pytorch_and_have_dynamic_axes(world, tmp_path):
    paths = export_onnx(world["model"], tmp_path, opset=17)
    for path in paths.values():
        onnx.checker.check_model(str(path), full_check=True)
    diffs = verify(world["model"], tmp_path, batch=3, beams=4, src_len=11)
    assert max(diffs.values()) < 1e-4, diffs
    # a decoding step is a chain of tiny ops, so its node count is its cost: fused attention (one
    # node per attention, KV-cache append included) and no shape arithmetic per layer
    cfg = world["model"].config
    for name in ("decoder", "decoder_lse"):
        nodes = [n.op_type for n in onnx.load(str(paths[name])).graph.node]
        assert nodes.count("MultiHeadAttention") == 2 * cfg.num_decoder_layers
        assert len(nodes) <= 15 * cfg.num_decoder_layers + 20, (name, len(nodes))
    # dynamic batch and sequence axes: a shape never seen at export time runs and agrees with torch
    enc = ort.InferenceSession(str(paths["encoder"]), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(3, 150, size=(5, 23))
    out = enc.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    cfg = world["model"].config
    assert out[0].shape == (5, 23, cfg.d_model)
    assert len(out) == 1 + 2 * cfg.num_decoder_layers
    assert out[1].shape == (5, cfg.num_heads, 23, cfg.d_kv)
    with torch.no_grad():
        ref = world["model"].get_encoder()(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    assert np.abs(out[0] - ref).max() < 1e-4


def test_export_folder_is_self_contained(world, tmp_path):
    from gensar.export.onnx import write_export

    gen = {"history_len": 5, "max_query_words": 16, "max_input_tokens": 128, "history_twins": "rec",
           "normalize": "full"}
    meta = write_export(world["model"], world["tokenizer"], world["ids_dir"], world["items"], tmp_path / "onnx",
                        gen, {"data": "d1", "identifiers": "i1", "model": "m1"})
    out = tmp_path / "onnx"
    for name in ("encoder.onnx", "decoder.onnx", "decoder_lse.onnx", "lm_head.npy", "trie.npz", "items.parquet",
                 "meta.json", "tokenizer/tokenizer.json", "ids/identifiers.parquet", "ids/meta.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "meta.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["versions"] == {"data": "d1", "identifiers": "i1", "model": "m1"}
    assert meta["generation"]["eos_token_id"] == world["tokenizer"].eos_token_id
    assert max(meta["verification_max_abs_diff"].values()) < 1e-4
    # trie tokens are the tokenizer's ids of the identifier tokens, in identifier-map order
    trie = np.load(out / "trie.npz")
    first = world["ids"].item_ids[0]
    assert trie["item_ids"][0] == first
    assert trie["sid_tokens"][0].tolist() == world["tokenizer"].convert_tokens_to_ids(world["ids"].sid_tokens(first))
    assert trie["cid_tokens"].shape == (len(world["ids"]), 5)
    lm = np.load(out / "lm_head.npy")
    assert np.array_equal(lm, world["model"].lm_head.weight.detach().numpy())


def test_export_stage_writes_models_onnx(world, tmp_path):
    from gensar.stages.export import run

    params = Params()
    out = tmp_path / "models" / "onnx"
    summary = run(params, model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=out)
    meta = json.loads((out / "meta.json").read_text())
    assert summary["n_items"] == len(world["ids"]) == meta["n_items"]
    assert meta["versions"]["data"] == "tiny-test"            # the data version the model was trained on
    assert len(meta["versions"]["model"]) == 12 and len(meta["versions"]["identifiers"]) == 12
    assert summary["max_abs_diff"] < params.export.tolerance
    # a failing export (missing input) names the file and leaves the previous output untouched
    before = (out / "meta.json").read_text()
    with pytest.raises(FileNotFoundError, match="items.parquet"):
        run(params, model=world["model_dir"], ids=world["ids_dir"], canonical=tmp_path / "nowhere", out=out)
    assert (out / "meta.json").read_text() == before


def test_quantized_export_is_smaller_and_close(world, tmp_path):
    from gensar.stages.export import run

    params = Params()
    params = dataclasses.replace(params, export=dataclasses.replace(params.export, quantize=True))
    run(params, model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=tmp_path / "q")
    run(Params(), model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=tmp_path / "f")
    size = lambda d: sum((d / f"{n}.onnx").stat().st_size for n in ("encoder", "decoder"))
    assert size(tmp_path / "q") < 0.5 * size(tmp_path / "f")
    assert json.loads((tmp_path / "q" / "meta.json").read_text())["quantized"] is True
    # int8 weights change the numbers a little, not the graph: logits stay close to fp32
    causal = json.loads((tmp_path / "q" / "meta.json").read_text())["generation"]["causal"]
    diffs = verify(world["model"], tmp_path / "q", causal=causal)
    assert max(diffs.values()) < 0.5, diffs
