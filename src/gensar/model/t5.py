"""The backbone: a T5 encoder-decoder built from `params.yaml` (no download), saved with our metadata.

Sizes (`model.size`):
    tiny    d_model 128, 2+2 layers, d_ff 512, 4 heads (d_kv 32)   tests and CPU smoke runs
    small   t5-small dimensions: 512, 6+6 layers, 2048, 8 heads (d_kv 64)
    custom  the `model.*` fields
or `model.pretrained`: a local T5 checkpoint directory (its embeddings are resized to our vocabulary).

Attention is built `eager`: the plain math, which gensar.export.onnx writes out as ONNX graphs and
checks against, parity-tested in tests/test_export_onnx.py. A saved model directory holds `save_pretrained` weights + config, the tokenizer, and
`gensar.json` (model/train configs, identifier meta, data version, vocabulary size).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from gensar.config import ModelConfig
from gensar.io import atomic_path, carry_over

logger = logging.getLogger(__name__)

SIZES = {
    "tiny": {"d_model": 128, "d_ff": 512, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 32},
    "small": {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8, "d_kv": 64},
}
META_FILE = "gensar.json"


def model_dims(cfg: ModelConfig) -> dict:
    if cfg.size == "custom":
        return {"d_model": cfg.d_model, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
                "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads, "d_kv": cfg.d_kv}
    if cfg.size not in SIZES:
        raise ValueError(f"model.size must be tiny, small or custom, got {cfg.size!r}")
    return dict(SIZES[cfg.size])


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int, eos_token_id: int
                ) -> T5ForConditionalGeneration:
    """A freshly initialised T5 (or the local `cfg.pretrained` one) with `vocab_size` embeddings."""
    if cfg.pretrained:
        model = T5ForConditionalGeneration.from_pretrained(cfg.pretrained, attn_implementation="eager")
        model.resize_token_embeddings(vocab_size)
        logger.info("model: loaded %s, embeddings resized to %d", cfg.pretrained, vocab_size)
    else:
        config = T5Config(vocab_size=vocab_size, dropout_rate=cfg.dropout, feed_forward_proj="relu",
                          pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                          decoder_start_token_id=pad_token_id, tie_word_embeddings=True,
                          **model_dims(cfg))
        config._attn_implementation = "eager"
        model = T5ForConditionalGeneration(config)
    model.config.pad_token_id = pad_token_id
    model.config.eos_token_id = eos_token_id
    model.config.decoder_start_token_id = pad_token_id
    # beam search must never silently sample; callers pass it explicitly too
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.decoder_start_token_id = pad_token_id
    n = sum(p.numel() for p in model.parameters())
    logger.info("model: T5 %s, %.2fM parameters, vocabulary %d", cfg.size, n / 1e6, vocab_size)
    return model


def resize_vocab(model: T5ForConditionalGeneration, vocab_size: int) -> int:
    """Grow the (tied) embeddings to `vocab_size`; old rows are kept, new rows are initialised
    to the mean of the old ones. Returns the number of rows added."""
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return 0
    model.resize_token_embeddings(vocab_size, mean_resizing=True)
    return vocab_size - old


def causal_bias(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[B, S] padding mask (1 = token) -> the causal encoder's additive attention mask [B, 1, S, S].

    A token attends to itself and the tokens before it only (`train.causal`), so the encoder state
    at position t depends on the first t + 1 tokens alone: a training example can then score a
    target at every position of a history in one pass (`gensar.model.examples`, rec sequences).
    """
    s = mask.shape[1]
    keep = mask[:, None, None, :].bool() & torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The encoder states [B, S, D]; bidirectional as HF's T5, or causal (`causal_bias`)."""
    if not causal:
        return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    bias = causal_bias(attention_mask, model.get_encoder().embed_tokens.weight.dtype)
    return model.get_encoder()(input_ids=input_ids, attention_mask=bias).last_hidden_state


KEEP = ("checkpoints",)   # what a new version of a model folder takes over from the old one


def save_model(model, tokenizer, out_dir: str | Path, meta: dict, extra: dict | None = None) -> None:
    """Write weights, config, tokenizer and `gensar.json` (+ `extra`: {name: a file or folder to copy,
    or a JSON-able object}) as a new version of `out_dir`, swapped in as a whole.

    Everything is written into a temporary sibling first (`gensar.io.atomic_path`); only `checkpoints/`
    is carried over from the old folder. A crash at any point leaves the old version or the new one,
    never a mix of files from both.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        getattr(model, "module", model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name, value in (extra or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, Path) and value.is_dir():
                shutil.copytree(value, tmp / name)
            elif isinstance(value, Path):
                shutil.copy2(value, tmp / name)
            else:
                (tmp / name).write_text(json.dumps(value, indent=2, default=str) + "\n")
        carry_over(out_dir, tmp, KEEP)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, meta) from a directory written by `save_model`."""
    from gensar.model.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a GenSAR model directory (no {META_FILE})")
    model = T5ForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager")
    model.generation_config.do_sample = False
    tokenizer = load_tokenizer(model_dir)
    meta = json.loads(meta_path.read_text())
    return model.to(device).eval(), tokenizer, meta
