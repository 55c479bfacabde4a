"""Export a GenSAR T5 to ONNX: an encoder graph and a one-token decoder graph with a KV cache.

encoder.onnx
    input_ids [B, S] int64, attention_mask [B, S] int64
    -> encoder_hidden_states [B, S, D]
       cross_key.{i}, cross_value.{i} [B, H, S, d_kv]   for every decoder layer i
    The cross-attention keys and values depend only on the encoder output, so they are computed
    once per request here and never again during decoding.

decoder.onnx   (one decoding step for R = B * N rows, N beams per request; N may be 1)
    input_ids [R] int64 (the last token of each beam), encoder_attention_mask [B, S] int64,
    token_weight [D, V_t] (output-embedding columns of the tokens to score),
    cross_key.{i}, cross_value.{i} [B, H, S, d_kv],
    past_key.{i}, past_value.{i} [R, H, T, d_kv]        (T = 0 at the first step)
    -> logits [R, V_t]  hidden @ token_weight
       hidden [R, D]    final decoder state, scaled by d_model**-0.5 when the model ties its
                        embeddings (HF does the same before lm_head)
       present_key.{i}, present_value.{i} [R, H, T + 1, d_kv]
    The beams of one request share that request's cross K/V: the N beam queries are folded into
    the query-length axis of the cross attention instead of copying the K/V N times.

decoder_lse.onnx   the same step, plus logsumexp [R]: the log-normaliser of the full-vocabulary
    softmax, which HF `generate` applies before the constraint mask (exact parity needs it).

Constrained decoding only needs the logits of the few identifier tokens the trie allows, so the
runtime passes the gathered output-embedding columns of the trie's tokens at the current depth
(~ codebook size instead of the vocabulary) and skips the [D, vocab] matmul entirely with
`decoder.onnx` when it renormalises over the allowed tokens.

The attention is written out here (T5 attention: no 1/sqrt(d) scaling, a learned relative position
bias from the first layer shared by all layers) instead of tracing the HF modules, whose cache
objects and mask helpers do not export cleanly; the linear layers, norms and feed-forward blocks
are the HF modules themselves, so the weights are exactly the trained ones.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

NEG_INF = torch.finfo(torch.float32).min


# --------------------------------------------------------------------------------------------
# T5 pieces, written out
# --------------------------------------------------------------------------------------------
def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucketing of `memory_position - query_position` (same math as HF's T5Attention)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # log-spaced buckets for larger distances; clamp(min=1) keeps log() finite where is_small
    large = max_exact + (torch.log(relative_position.clamp(min=1).float() / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).to(torch.long)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


def position_bias(attn, query_pos: torch.Tensor, key_pos: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """Relative position bias [1, H, q, k] from the first layer's `relative_attention_bias`."""
    rel = key_pos[None, :] - query_pos[:, None]                          # [q, k]
    bucket = relative_position_bucket(rel, bidirectional, attn.relative_attention_num_buckets,
                                      attn.relative_attention_max_distance)
    return attn.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, S, H * d] -> [B, H, S, d]"""
    b, s, _ = x.shape
    return x.view(b, s, n_heads, -1).transpose(1, 2)


def attend(q, k, v, bias):
    """softmax(q k^T + bias) v; T5 does not scale by 1/sqrt(d)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] of 1/0 -> [B, 1, 1, S] of 0/-inf (the most negative float, as HF)."""
    return (1.0 - attention_mask[:, None, None, :].float()) * NEG_INF


# --------------------------------------------------------------------------------------------
# the exported graphs
# --------------------------------------------------------------------------------------------
class EncoderGraph(nn.Module):
    """input_ids, attention_mask -> encoder states and every decoder layer's cross K/V.

    q/k/v of each encoder layer are one matmul, and so are the cross K/V of all decoder layers.
    """

    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()
        self.n_heads, self.n_dec = model.config.num_heads, model.config.num_decoder_layers

        def fused(*linears):
            return nn.Parameter(torch.cat([lin.weight for lin in linears], 0).T.contiguous())

        self.qkv = nn.ParameterList([fused(b.layer[0].SelfAttention.q, b.layer[0].SelfAttention.k,
                                           b.layer[0].SelfAttention.v) for b in self.encoder.block])
        self.cross_kv = fused(*[lin for b in model.get_decoder().block
                                for lin in (b.layer[1].EncDecAttention.k, b.layer[1].EncDecAttention.v)])

    def forward(self, input_ids, attention_mask):
        enc, h_ = self.encoder, self.n_heads
        x = enc.embed_tokens(input_ids)                                  # [B, S, D]
        b, s = input_ids.shape
        pos = torch.arange(s, device=x.device)
        bias = position_bias(enc.block[0].layer[0].SelfAttention, pos, pos, bidirectional=True)
        bias = bias + additive_mask(attention_mask)                      # [B, H, S, S]
        for i, block in enumerate(enc.block):
            sa = block.layer[0]
            q, k, v = split_heads(sa.layer_norm(x) @ self.qkv[i], 3 * h_).chunk(3, dim=1)   # [B, H, S, d]
            out = attend(q, k, v, bias)                                  # [B, H, S, d]
            x = x + sa.SelfAttention.o(out.transpose(1, 2).reshape(b, s, -1))
            x = block.layer[-1](x)                                       # norm + feed-forward + residual
        x = enc.final_layer_norm(x)
        kv = split_heads(x @ self.cross_kv, 2 * self.n_dec * h_).chunk(2 * self.n_dec, dim=1)
        return (x, *kv)


class DecoderStepGraph(nn.Module):
    """One decoding step for all beams: last token + caches -> logits of chosen tokens + new caches.

    `token_weight` [D, V_t] holds the output-embedding columns of the only tokens whose logits
    are needed (the trie's tokens at this depth), so the graph never does the [D, vocab] matmul
    unless `with_logsumexp` asks for the full-vocabulary log-normaliser (max, exp, sum, log written
    out: onnxruntime's ReduceLogSumExp is 3x slower here).

    At R = 20 rows a step is a chain of tiny matmuls, so the number of graph nodes is most of the
    cost: rows stay a flat [R, D] matrix (reshapes with constant shapes), q/k/v are one matmul, and
    the relative position bias is a lookup in a table precomputed for every decoding distance.
    """

    def __init__(self, model, with_logsumexp: bool = False, max_steps: int = 64):
        super().__init__()
        cfg = model.config
        self.decoder = model.get_decoder()
        self.n_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.scale = cfg.d_model ** -0.5 if _scales_decoder_output(cfg) else 1.0
        self.qkv = nn.ParameterList([
            nn.Parameter(torch.cat([b.layer[0].SelfAttention.q.weight, b.layer[0].SelfAttention.k.weight,
                                    b.layer[0].SelfAttention.v.weight], 0).T.contiguous())
            for b in self.decoder.block])                                # [D, 3 * inner] per layer
        # bias_by_distance[h, dist]: self-attention bias of a key `dist` tokens before the query
        dist = torch.arange(max_steps)
        attn0 = self.decoder.block[0].layer[0].SelfAttention
        with torch.no_grad():
            table = position_bias(attn0, dist[:1] + max_steps - 1, max_steps - 1 - dist, bidirectional=False)
        self.register_buffer("bias_by_distance", table[0, :, 0, :].contiguous())    # [H, max_steps]
        self.lm_head_t = nn.Parameter(model.lm_head.weight.T.contiguous()) if with_logsumexp else None

    def forward(self, input_ids, encoder_attention_mask, token_weight, *caches):
        dec, n_layers = self.decoder, len(self.decoder.block)
        h_, d_ = self.n_heads, self.d_kv
        cross, past = caches[: 2 * n_layers], caches[2 * n_layers:]
        b = encoder_attention_mask.shape[0]
        x = dec.embed_tokens(input_ids)                                  # [R, D]
        t = past[0].shape[2]                                             # tokens already decoded
        self_bias = self.bias_by_distance[:, t - torch.arange(t + 1)][:, None, :]        # [H, 1, T+1]
        cross_mask = additive_mask(encoder_attention_mask)               # [B, 1, 1, S]
        presents = []
        for i, block in enumerate(dec.block):
            # self-attention over the cache (no causal mask needed: the one query is the newest token)
            sa = block.layer[0]
            q, k, v = (sa.layer_norm(x) @ self.qkv[i]).view(-1, 3 * h_, 1, d_).chunk(3, dim=1)  # [R, H, 1, d]
            k = torch.cat([past[2 * i], k], dim=2)                       # [R, H, T+1, d]
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            out = attend(q, k, v, self_bias)                             # [R, H, 1, d]
            x = x + sa.SelfAttention.o(out.view(-1, h_ * d_))
            # cross-attention: the N beams of a request are N queries against its one K/V
            ca = block.layer[1]
            q = ca.EncDecAttention.q(ca.layer_norm(x)).view(b, -1, h_, d_).transpose(1, 2)  # [B, H, N, d]
            out = attend(q, cross[2 * i], cross[2 * i + 1], cross_mask)  # [B, H, N, d]
            x = x + ca.EncDecAttention.o(out.transpose(1, 2).reshape(-1, h_ * d_))
            x = block.layer[-1](x)
        hidden = dec.final_layer_norm(x) * self.scale                    # [R, D]
        logits = hidden @ token_weight                                   # [R, V_t]
        if self.lm_head_t is None:
            return (logits, hidden, *presents)
        full = hidden @ self.lm_head_t                                   # [R, V]
        m = full.max(dim=-1, keepdim=True).values
        lse = (full - m).exp().sum(-1).log() + m[:, 0]                   # [R]
        return (logits, hidden, lse, *presents)


def _scales_decoder_output(config) -> bool:
    # transformers 5 names it `scale_decoder_outputs`; older versions scale when embeddings are tied
    return bool(getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True)))


def lm_head_matrix(model) -> np.ndarray:
    """Output embedding [V, D] as float32 (rows are gathered by the runtime for allowed tokens)."""
    return model.lm_head.weight.detach().float().cpu().numpy().copy()


# --------------------------------------------------------------------------------------------
# export + verification
# --------------------------------------------------------------------------------------------
def cache_names(n_layers: int, prefix_k: str, prefix_v: str) -> list[str]:
    return [n for i in range(n_layers) for n in (f"{prefix_k}.{i}", f"{prefix_v}.{i}")]


def _dummy_inputs(model, batch: int = 2, beams: int = 3, src_len: int = 7, past_len: int = 2):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, cfg.vocab_size, (batch, src_len), generator=g)
    mask = torch.ones(batch, src_len, dtype=torch.long)
    mask[0, -2:] = 0
    rows = batch * beams
    n_dec = cfg.num_decoder_layers
    cross = [torch.randn(batch, cfg.num_heads, src_len, cfg.d_kv, generator=g) for _ in range(2 * n_dec)]
    past = [torch.randn(rows, cfg.num_heads, past_len, cfg.d_kv, generator=g) for _ in range(2 * n_dec)]
    dec_ids = torch.randint(2, cfg.vocab_size, (rows,), generator=g)
    return ids, mask, dec_ids, cross, past


def export_onnx(model, out_dir: str | Path, opset: int = 17) -> dict[str, Path]:
    """Write encoder.onnx, decoder.onnx and decoder_lse.onnx for `model` into `out_dir` (checked)."""
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    n_dec = model.config.num_decoder_layers
    ids, mask, dec_ids, cross, past = _dummy_inputs(model)
    cross_names = cache_names(n_dec, "cross_key", "cross_value")
    past_names = cache_names(n_dec, "past_key", "past_value")
    present_names = cache_names(n_dec, "present_key", "present_value")
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "decoder", "decoder_lse")}
    token_weight = torch.randn(model.config.d_model, 11)

    with torch.no_grad():
        _export(EncoderGraph(model), (ids, mask), paths["encoder"], opset,
                inputs=["input_ids", "attention_mask"], outputs=["encoder_hidden_states", *cross_names],
                axes={"input_ids": {0: "batch", 1: "src"}, "attention_mask": {0: "batch", 1: "src"},
                      "encoder_hidden_states": {0: "batch", 1: "src"},
                      **{n: {0: "batch", 2: "src"} for n in cross_names}})
        for name, with_lse in (("decoder", False), ("decoder_lse", True)):
            outputs = ["logits", "hidden", *(["logsumexp"] if with_lse else []), *present_names]
            _export(DecoderStepGraph(model, with_lse), (dec_ids, mask, token_weight, *cross, *past), paths[name],
                    opset, inputs=["input_ids", "encoder_attention_mask", "token_weight", *cross_names, *past_names],
                    outputs=outputs,
                    axes={"input_ids": {0: "rows"}, "encoder_attention_mask": {0: "batch", 1: "src"},
                          "token_weight": {1: "tokens"}, "logits": {0: "rows", 1: "tokens"}, "hidden": {0: "rows"},
                          **({"logsumexp": {0: "rows"}} if with_lse else {}),
                          **{n: {0: "batch", 2: "src"} for n in cross_names},
                          **{n: {0: "rows", 2: "past"} for n in past_names},
                          **{n: {0: "rows", 2: "past_plus_one"} for n in present_names}})
    for name, path in paths.items():
        onnx.checker.check_model(str(path), full_check=True)
        logger.info("exported %s (%.1f MB), onnx.checker ok", path, path.stat().st_size / 2**20)
    return paths


def _export(module, args, path: Path, opset: int, inputs, outputs, axes) -> None:
    # The TorchScript exporter gives compact graphs with plain dynamic axes for these small
    # hand-written modules; the model must use eager attention (see docs/STACK: dynamo + sdpa fails).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def quantize_int8(paths: dict[str, Path]) -> dict[str, Path]:
    """Dynamic int8 quantization of the weights of every graph (in place); returns the same paths."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in paths.values():
        tmp = path.with_suffix(".int8.onnx")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        tmp.replace(path)
        logger.info("quantized %s to int8 (%.1f MB)", path, path.stat().st_size / 2**20)
    return paths


def verify(model, out_dir: str | Path, batch: int = 2, beams: int = 3, src_len: int = 9) -> dict[str, float]:
    """Run the ONNX graphs and the PyTorch model on the same random inputs; max abs differences.

    encoder: against `model.encoder`; decoder: two cached ONNX steps (scoring every token of the
    vocabulary) against the HF model run on the whole prefix (start, tok) for every beam, comparing
    the logits at the last position; logsumexp: against torch.logsumexp of the HF logits.
    """
    import onnxruntime as ort

    out_dir = Path(out_dir)
    cfg = model.config
    model = model.eval().float()
    sess = {n: ort.InferenceSession(str(out_dir / f"{n}.onnx"), providers=["CPUExecutionProvider"])
            for n in ("encoder", "decoder", "decoder_lse")}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, cfg.vocab_size, (batch, src_len), generator=g)
    mask = torch.ones(batch, src_len, dtype=torch.long)
    mask[-1, src_len // 2:] = 0
    enc = sess["encoder"].run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    n_dec = cfg.num_decoder_layers
    start = cfg.decoder_start_token_id
    rows = batch * beams
    step_ids = [np.full(batch, start, dtype=np.int64),
                torch.randint(2, cfg.vocab_size, (rows,), generator=g).numpy()]
    # step 1: one row per request, empty cache; step 2: N beams per request
    empty = np.zeros((batch, cfg.num_heads, 0, cfg.d_kv), dtype=np.float32)
    feed = {"input_ids": step_ids[0], "encoder_attention_mask": mask.numpy(),
            "token_weight": np.ascontiguousarray(lm_head_matrix(model).T),
            **dict(zip(cache_names(n_dec, "cross_key", "cross_value"), enc[1:])),
            **{n: empty for n in cache_names(n_dec, "past_key", "past_value")}}
    logits0, _, lse0, *present = sess["decoder_lse"].run(None, feed)
    present = [np.repeat(p, beams, axis=0) for p in present]             # every beam continues row b
    feed.update({"input_ids": step_ids[1], **dict(zip(cache_names(n_dec, "past_key", "past_value"), present))})
    logits1, _, lse1, *_ = sess["decoder_lse"].run(None, feed)
    plain = sess["decoder"].run(None, feed)[0]

    with torch.no_grad():
        ref_enc = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        dec_in = torch.stack([torch.from_numpy(np.repeat(step_ids[0], beams)), torch.from_numpy(step_ids[1])], 1)
        ref = model(encoder_outputs=(ref_enc.repeat_interleave(beams, 0),),
                    attention_mask=mask.repeat_interleave(beams, 0), decoder_input_ids=dec_in).logits
    keep = mask.bool()
    diffs = {
        "encoder": float((torch.from_numpy(enc[0]) - ref_enc)[keep].abs().max()),
        "decoder_step1": float(np.abs(logits0 - ref[::beams, 0].numpy()).max()),
        "decoder_step2": float(np.abs(logits1 - ref[:, 1].numpy()).max()),
        "decoder_plain_vs_lse": float(np.abs(plain - logits1).max()),
        "logsumexp": float(max(np.abs(lse0 - torch.logsumexp(ref[::beams, 0], -1).numpy()).max(),
                               np.abs(lse1 - torch.logsumexp(ref[:, 1], -1).numpy()).max())),
    }
    logger.info("ONNX vs PyTorch max abs diff: %s", diffs)
    return diffs


# --------------------------------------------------------------------------------------------
# the self-contained export folder
# --------------------------------------------------------------------------------------------
def file_version(*paths: str | Path) -> str:
    """Short content hash of files (a version string that changes exactly when the bytes do)."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def identifier_token_ids(tokenizer, ids, space: str) -> np.ndarray:
    """[n_items, L] token ids of every item's identifier of `space`, in `ids.item_ids` order."""
    from gensar.model.tokenizer import check_single_tokens

    return np.array([check_single_tokens(tokenizer, ids.tokens_of(i, space)) for i in ids.item_ids],
                    dtype=np.int64)


def write_export(model, tokenizer, ids_dir: str | Path, items, out_dir: str | Path, generation: dict, versions: dict,
                 opset: int = 17, quantize: bool = False, tolerance: float = 1e-3, score_eos: bool = True) -> dict:
    """Write the whole serving folder into `out_dir` (a fresh directory) and return its meta.

    out_dir/
        encoder.onnx decoder.onnx decoder_lse.onnx   the graphs (int8 weights when `quantize`)
        lm_head.npy        output embedding [V, D] float32 (columns of token_weight are gathered from it)
        tokenizer/         save_pretrained tokenizer
        ids/               identifiers.parquet + meta.json (the identifier map the model was trained on)
        trie.npz           item_ids, sid_tokens, cid_tokens: token ids of every identifier [n, L]
        items.parquet      item_id, title (what responses show)
        meta.json          versions, dimensions, generation settings, verification diffs

    score_eos: whether a hit's score includes log p(EOS | identifier), as GenSARModel's scores do
    (it decodes depth + 1 tokens, the last one constrained to EOS); the runtime reads it from meta.json.

    Raises when the fp32 graphs differ from PyTorch by more than `tolerance` (max abs logit diff).
    """
    import shutil

    from gensar.model.prompts import IdentifierMap

    ids = IdentifierMap.load(ids_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = export_onnx(model, out_dir, opset)
    diffs = verify(model, out_dir)
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise RuntimeError(f"{out_dir}: ONNX graphs differ from the PyTorch model by {worst:.3g} "
                           f"(> export.tolerance {tolerance}): {diffs}")
    if quantize:
        quantize_int8(paths)
        diffs_int8 = verify(model, out_dir)
        logger.info("int8 export vs PyTorch fp32: %s", diffs_int8)
    np.save(out_dir / "lm_head.npy", lm_head_matrix(model))
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    (out_dir / "ids").mkdir()
    for name in ("identifiers.parquet", "meta.json"):
        shutil.copyfile(Path(ids_dir) / name, out_dir / "ids" / name)
    np.savez(out_dir / "trie.npz", item_ids=np.array(ids.item_ids, dtype=str),
             sid_tokens=identifier_token_ids(tokenizer, ids, "sid"),
             cid_tokens=identifier_token_ids(tokenizer, ids, "cid"))
    known = items[items["item_id"].isin(set(ids.item_ids))]
    missing = len(ids) - len(known)
    if missing:
        logger.warning("export: %d identified items have no row in the items table (served without title)",
                       missing)
    known[["item_id", "title"]].to_parquet(out_dir / "items.parquet", index=False)
    cfg = model.config
    meta = {
        "format": "gensar-onnx/1",
        "versions": versions,
        "model": {k: getattr(cfg, k) for k in ("d_model", "d_ff", "num_layers", "num_decoder_layers",
                                                 "num_heads", "d_kv", "vocab_size")},
        "generation": {"decoder_start_token_id": int(cfg.decoder_start_token_id),
                       "eos_token_id": int(tokenizer.eos_token_id), "pad_token_id": int(tokenizer.pad_token_id),
                       "score_eos": bool(score_eos), **generation},
        "n_items": len(ids),
        "opset": opset,
        "quantized": bool(quantize),
        "verification_max_abs_diff": diffs,
        "files": sorted(p.name for p in out_dir.iterdir()),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta

