"""The trainer: SIGKILL + resume gives the uninterrupted result, DDP with 2 gloo processes, warm start,
learning-rate schedule, length-bucketed batches."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gensar.config import ModelConfig
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model, load_model, resize_vocab, save_model
from gensar.model.tokenizer import extend_tokenizer, load_tokenizer, train_tokenizer
from gensar.model.train import length_batches, n_length_batches, warmup_cosine
from tests.test_model_data import make_tiny_dataset, write_tiny_ids

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
TINY = {"model": {"size": "tiny", "vocab_size": 200, "dropout": 0.1},   # dropout on: RNG state matters
        "train": {"epochs": 3, "batch_size": 16, "eval_beams": 4, "eval_users": 2, "patience": 9,
                  "device": "cpu", "history_len": 3,
                  "tasks": {"rec": 1.0, "search": 1.0, "query": 0.3, "adhoc": 0.3, "align": 0.25}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    paths = make_tiny_dataset(root, n_users=8, n_items=12, steps=(4, 6))
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    return {**paths, "params": params, "root": root}


def stage_cmd(data, out: Path, *extra, launcher=(sys.executable, "-m", "gensar.stages.train")) -> list[str]:
    return [*launcher, "--params", str(data["params"]), "--canonical", str(data["canonical"]),
            "--ids", str(data["ids"]), "--out", str(out), "--metrics", str(out.parent / f"{out.name}.json"),
            "--live", str(out.parent / f"{out.name}_live"), *extra]


def run_stage(cmd, timeout=240) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_sigkill_then_resume_equals_uninterrupted_run(data):
    full, killed = data["root"] / "full", data["root"] / "killed"
    run_stage(stage_cmd(data, full))

    proc = subprocess.Popen(stage_cmd(data, killed), env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before the first checkpoint was seen"
    assert not (killed / "model.safetensors").exists()          # it really died mid-run
    epoch_at_kill = torch.load(ckpt, weights_only=False)["epoch"]
    assert epoch_at_kill < TINY["train"]["epochs"] - 1

    res = run_stage(stage_cmd(data, killed))
    assert f"resuming from {ckpt} after epoch {epoch_at_kill}" in res.stderr
    a, b = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    ma = json.loads((data["root"] / "full.json").read_text())
    mb = json.loads((data["root"] / "killed.json").read_text())
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (full, killed))
    assert [r["train/loss"] for r in ha] == [r["train/loss"] for r in hb] and len(hb) == 3
    assert ma["valid/ndcg@10"] == mb["valid/ndcg@10"] and mb["epochs_run"] == 3
    # DVCLive curves: one point per epoch, even though the killed run was replayed
    loss_tsv = (data["root"] / "killed_live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(loss_tsv.strip().splitlines()) == 1 + 3


def test_ddp_two_gloo_processes(data):
    out = data["root"] / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "gensar.stages.train")
    res = run_stage(stage_cmd(data, out, "--set", "train.epochs=1", launcher=launcher), timeout=300)
    assert "rank0 gensar.model.train INFO ddp: rank 0/2 joined (gloo)" in res.stderr
    assert "rank1 gensar.model.train INFO ddp: rank 1/2 joined (gloo)" in res.stderr
    assert "train: rank 1/2 on cpu" in res.stderr
    metrics = json.loads((data["root"] / "ddp.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 1
    from gensar.model.generate import GenSARModel

    gm = GenSARModel.load(out, beams=4)
    assert len(gm.recommend([("rec", "I001", None)], k=3)) == 3


def test_save_model_swaps_the_folder_whole_and_keeps_checkpoints(data, tmp_path, monkeypatch):
    ids = IdentifierMap.load(data["ids"])
    tok = train_tokenizer(["office desk lamp", "gel pen"] * 3, ids.tokens(), 200)
    model = build_model(ModelConfig(size="tiny"), len(tok), tok.pad_token_id, tok.eos_token_id)
    out = tmp_path / "t5"
    save_model(model, tok, out, {"v": 1}, extra={"history.json": [{"step": 1}]})
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"resume state")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)            # a new version of the weights
    real = type(tok).save_pretrained

    def killed(self, *args, **kwargs):                             # dies after the weights were written
        raise KeyboardInterrupt("killed between files")
    monkeypatch.setattr(type(tok), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tok, out, {"v": 2}, extra={"history.json": [{"step": 2}]})
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["t5"]        # no temporary folder left behind

    monkeypatch.setattr(type(tok), "save_pretrained", real)
    save_model(model, tok, out, {"v": 2}, extra={"history.json": [{"step": 2}]})
    assert json.loads((out / "gensar.json").read_text()) == {"v": 2}
    assert json.loads((out / "history.json").read_text()) == [{"step": 2}]
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"resume state"   # carried over
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]   # the new weights


def test_warm_start_keeps_old_embedding_rows(data, tmp_path):
    ids = IdentifierMap.load(data["ids"])
    tok = train_tokenizer(["office desk lamp", "gel pen"] * 3, ids.tokens(), 200)
    model = build_model(ModelConfig(size="tiny"), len(tok), tok.pad_token_id, tok.eos_token_id)
    old_dir = tmp_path / "old"
    save_model(model, tok, old_dir, {})
    old_rows = model.get_input_embeddings().weight.detach().clone()
    old_vocab = tok.get_vocab()

    # a new identifier map with a larger codebook: new identifier tokens appear
    new_ids = IdentifierMap.load(write_tiny_ids(tmp_path / "ids2", ids.item_ids + ["I900"], seed=3, codebook=6))
    tok2 = load_tokenizer(old_dir)
    added = extend_tokenizer(tok2, new_ids.tokens())
    model2, _, _ = load_model(old_dir)
    assert added > 0 and resize_vocab(model2, len(tok2)) == added
    emb = model2.get_input_embeddings().weight
    assert emb.shape[0] == old_rows.shape[0] + added
    assert torch.equal(emb[: old_rows.shape[0]], old_rows)                 # old rows unchanged
    assert model2.lm_head.weight.data_ptr() == emb.data_ptr()              # still tied
    assert all(tok2.convert_tokens_to_ids(t) == i for t, i in old_vocab.items())
    assert tok2.convert_tokens_to_ids("<h0_5>") >= len(old_vocab)

    # the stage warm-starts from a trained model directory with a new identifier map
    from gensar.config import load_params
    from gensar.stages.train import run

    params = load_params(data["params"], {"train.epochs": 1})
    res = run(params, data["canonical"], new_ids_dir := tmp_path / "ids2", tmp_path / "warm",
              tmp_path / "warm.json", None, init=old_dir)
    assert res["vocab_size"] == len(tok2) and (tmp_path / "warm" / "model.safetensors").exists()
    assert IdentifierMap.load(tmp_path / "warm" / "ids").item_ids == IdentifierMap.load(new_ids_dir).item_ids


def test_warmup_then_cosine_schedule():
    total, warmup = 100, 10
    lrs = [warmup_cosine(s, warmup, total) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] < 0.01


def test_length_batches_cover_the_epoch_with_little_padding():
    import numpy as np

    lengths = np.random.default_rng(0).integers(10, 130, size=5000)
    batches = length_batches(lengths, 64, seed=0, epoch=3, window=8)
    idx = np.concatenate(batches)
    assert sorted(idx.tolist()) == list(range(5000))              # every example once
    assert len(batches) == n_length_batches(5000, 64, window=8)
    # padding to the longest input of each batch: bucketed wastes far less than random batches
    padded = sum(len(b) * lengths[b].max() for b in batches)
    rand = np.random.default_rng(1).permutation(5000)
    padded_random = sum(64 * lengths[rand[i:i + 64]].max() for i in range(0, 5000, 64))
    assert lengths.sum() / padded > 0.9 > lengths.sum() / padded_random
    # a seeded function of (seed, epoch): same again, different next epoch
    again = length_batches(lengths, 64, seed=0, epoch=3, window=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not np.array_equal(np.concatenate(length_batches(lengths, 64, seed=0, epoch=4, window=8)), idx)
    # DDP: disjoint ranks with the same number of steps
    r0, r1 = (length_batches(lengths, 64, 0, 3, rank=r, world=2, window=8) for r in (0, 1))
    assert len(r0) == len(r1) == n_length_batches(5000, 64, world=2, window=8)
    assert not set(np.concatenate(r0)) & set(np.concatenate(r1))
    # fewer batches than ranks: every rank still gets a share
    tiny = [length_batches(lengths[:10], 64, 0, 0, rank=r, world=2) for r in (0, 1)]
    assert [sum(map(len, t)) for t in tiny] == [5, 5] and n_length_batches(10, 64, world=2) == 1


def test_checkpoint_of_other_training_code_is_not_resumed(data, tmp_path, monkeypatch, caplog):
    """A finished checkpoint is reused only by the same code: after a code change the stage trains anew."""
    import logging

    from gensar.config import load_params
    from gensar.stages import train as stage

    params = load_params(data["params"], {"train.epochs": 1})
    args = (params, data["canonical"], data["ids"], tmp_path / "t5", tmp_path / "m.json", None)
    stage.run(*args)
    caplog.set_level(logging.INFO, logger="gensar.model.train")
    stage.run(*args)                                            # same code: resumes the finished run
    assert "resuming" in caplog.text and "starting fresh" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(stage, "_code_version", lambda: "other-code")
    stage.run(*args)
    assert "written by another configuration, data or training code" in caplog.text
    assert "starting fresh" in caplog.text
