"""Export a GenSAR T5 to ONNX: an encoder graph and one-token decoder graphs with a KV cache.

encoder.onnx
    input_ids [B, S] int64, attention_mask [B, S] int64
    -> encoder_hidden_states [B, S, D]
       cross_key.{i}, cross_value.{i} [B, H, S, d_kv]   for every decoder layer i
    The cross-attention keys and values depend only on the encoder output, so they are computed
    once per request here and never again during decoding.

decoder.onnx and decoder_lse.onnx: one decoding step for R = B * N rows, N beams per request (N may be 1)
    input_ids [R, 1] int64 (the last token of each beam), encoder_attention_mask [B, S] int64,
    cross_key.{i}, cross_value.{i} [B, H, S, d_kv],
    past_key.{i}, past_value.{i} [R, H, T, d_kv]        (T = 0 at the first step)
    -> logp [R, 1, V_t]  log-probabilities of the V_t tokens asked for (the trie's tokens at this depth)
       present_key.{i}, present_value.{i} [R, H, T + 1, d_kv]
    decoder_lse.onnx (`normalize: full`, HF generate's scores) takes token_ids [V_t] int64 and
        returns log_softmax(hidden @ lm_head^T)[..., token_ids]: the softmax over the whole vocabulary.
    decoder.onnx (`normalize: allowed`) takes token_weight [D, V_t] (the output-embedding columns of
        the tokens) and token_mask [R, 1, V_t] bool (the tokens each row's trie node allows) and
        returns the log-softmax over the allowed tokens only: it never touches the [D, vocab] matrix.
    The beams of one request share that request's cross K/V: the N beam queries are the query axis
    of that request's cross attention instead of copying the K/V N times.

Why the graphs are written node by node (and not traced from the HF modules): at R = 20 rows a
decoding step is a chain of tiny matmuls, so per-node overhead is a large part of the cost. Each graph here is the T5 math with onnxruntime's fused CPU kernels
(com.microsoft): `MultiHeadAttention` (q k^T + bias, softmax, @ v, and the KV-cache append, in one
node), `SkipSimplifiedLayerNormalization` (residual add + T5's RMS norm), one matmul for q/k/v,
and the relative position bias looked up in tables computed here once: a decoder layer is 15
nodes, and after onnxruntime's optimisations a decoding step runs 41 kernels for the tiny model
and 101 for t5-small (the traced graphs ran 96 and 248, most of the difference shape arithmetic;
at R = 20 rows a step got ~10% faster; at R = 320 rows no faster: there the fused attention
kernel costs what its unfused ops did). T5 specifics: attention is not
scaled by 1/sqrt(d); the relative position bias of the first layer is shared by all layers; with
tied embeddings the final state is scaled by d_model**-0.5 before the output projection. The
weights are the HF modules' own, and `verify` checks every graph against the HF model.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from gensar.serve.runtime import EXPORT_FORMAT

logger = logging.getLogger(__name__)

NEG_INF = float(np.finfo(np.float32).min)      # HF's additive mask value
MS = "com.microsoft"                           # onnxruntime's contrib-op domain
IR_VERSION = 8                                 # opset 17 needs >= 8; onnxruntime 1.31 reads <= 13


# --------------------------------------------------------------------------------------------
# T5's relative position buckets (same math as HF's T5Attention), evaluated here at export time
# --------------------------------------------------------------------------------------------
def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucketing of `memory_position - query_position`."""
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


def bias_by_offset(attn, offsets: torch.Tensor, bidirectional: bool) -> np.ndarray:
    """[H, len(offsets)]: the position bias of a key `offset` positions after its query."""
    bucket = relative_position_bucket(offsets, bidirectional, attn.relative_attention_num_buckets,
                                      attn.relative_attention_max_distance)
    with torch.no_grad():
        return attn.relative_attention_bias(bucket).T.float().numpy().copy()


# --------------------------------------------------------------------------------------------
# a small ONNX graph builder
# --------------------------------------------------------------------------------------------
class Graph:
    """Nodes, weights, inputs and outputs of one ONNX graph; `op` adds a node and returns its output(s)."""

    def __init__(self, name: str):
        self.name, self.nodes, self.weights, self.inputs, self.outputs = name, [], [], [], []
        self.count = 0

    def input(self, name: str, dtype, shape: list) -> str:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype, shape: list) -> None:
        from onnx import helper

        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def weight(self, name: str, value) -> str:
        """A constant (initializer); float tensors are stored as float32."""
        from onnx import numpy_helper

        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        value = np.asarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        name = f"{name}" if name else f"const_{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def const(self, value) -> str:
        return self.weight("", np.asarray(value, dtype=np.int64) if isinstance(value, (int, list)) else value)

    def op(self, op_type: str, *inputs, outputs: int | list[str] = 1, domain: str = "", **attrs):
        from onnx import helper

        self.count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type}_{self.count}_{j}" for j in range(outputs)]
        self.nodes.append(helper.make_node(op_type, ["" if i is None else i for i in inputs], names,
                                           name=f"{op_type}_{self.count}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, opset: int):
        from onnx import helper

        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                                  producer_name="gensar")
        model.ir_version = IR_VERSION
        return model


def T(linear) -> torch.Tensor:
    """An nn.Linear's weight as the right operand of x @ W: [in, out]."""
    return linear.weight.detach().T


# --------------------------------------------------------------------------------------------
# T5 blocks as graph nodes
# --------------------------------------------------------------------------------------------
def rms_norm(g: Graph, x: str, ln, name: str, opset: int) -> str:
    """T5LayerNorm: x / sqrt(mean(x^2) + eps) * weight (no mean subtraction, no bias).

    Written with standard ops (onnxruntime fuses them into one SimplifiedLayerNormalization node);
    every later norm of a graph comes fused with its residual add (`add_norm`)."""
    square = g.op("Pow", x, g.weight("", np.array(2.0, dtype=np.float32)))
    mean = (g.op("ReduceMean", square, axes=[-1], keepdims=1) if opset < 18
            else g.op("ReduceMean", square, g.const([-1]), keepdims=1))
    std = g.op("Sqrt", g.op("Add", mean, g.weight("", np.array(ln.variance_epsilon, dtype=np.float32))))
    return g.op("Mul", g.op("Div", x, std), g.weight(name, ln.weight))


def add_norm(g: Graph, x: str, delta: str, ln, name: str) -> tuple[str, str]:
    """Residual add and the next RMS norm in one node: x + delta, norm(x + delta)."""
    normed, _, _, x = g.op("SkipSimplifiedLayerNormalization", x, delta, g.weight(name, ln.weight), outputs=4,
                           domain=MS, epsilon=float(ln.variance_epsilon))
    return x, normed


def attention(g: Graph, q: str, k: str, v: str, n_heads: int, bias: str | None = None, key_mask: str | None = None,
              past: tuple[str, str] | None = None, present: list[str] | None = None):
    """softmax(q k^T + bias + mask) v per head, T5-style (scale 1, not 1/sqrt(d)).

    q [B, Sq, H*d]; k, v [B, Sk, H*d] or already split into heads [B, H, Sk, d]; bias [1, H, Sq, Sk];
    key_mask [B, Sk] int32 (0 = padding, which gets HF's most negative float); past = (k, v) cache
    [B, H, T, d], then `present` names the outputs k, v [B, H, T + Sk, d]. Returns [B, Sq, H*d]
    (and the present k, v when a cache is given)."""
    inputs = [q, k, v, None, key_mask, bias] + (list(past) if past else [])
    outputs = [f"attn_{g.count + 1}"] + (present or [])
    return g.op("MultiHeadAttention", *inputs, outputs=outputs, domain=MS, num_heads=n_heads, scale=1.0,
                mask_filter_value=NEG_INF)


def feed_forward(g: Graph, h: str, ff, act: str, name: str) -> str:
    """DenseReluDense (relu) or DenseGatedActDense (act(h wi_0) * (h wi_1)), then wo; `act` is config.dense_act_fn."""
    ops = {"relu": ("Relu", ""), "gelu_new": ("FastGelu", MS), "gelu_pytorch_tanh": ("FastGelu", MS),
           "gelu": ("Gelu", MS)}
    if act not in ops:
        raise NotImplementedError(f"export: T5 feed-forward activation {act!r} is not supported (supported: {sorted(ops)})")
    op, domain = ops[act]
    if hasattr(ff, "wi"):
        a = g.op(op, g.op("MatMul", h, g.weight(f"{name}.wi", T(ff.wi))), domain=domain)
    else:
        a = g.op("Mul", g.op(op, g.op("MatMul", h, g.weight(f"{name}.wi_0", T(ff.wi_0))), domain=domain),
                 g.op("MatMul", h, g.weight(f"{name}.wi_1", T(ff.wi_1))))
    return g.op("MatMul", a, g.weight(f"{name}.wo", T(ff.wo)))


def self_qkv(g: Graph, h: str, attn, name: str) -> list[str]:
    """q, k, v [..., H*d] of a self-attention from one matmul: h @ [Wq | Wk | Wv] ([D, 3 * H*d])."""
    w = torch.cat([T(attn.q), T(attn.k), T(attn.v)], 1)
    return g.op("Split", g.op("MatMul", h, g.weight(name, w)), g.const([attn.inner_dim] * 3), axis=-1, outputs=3)


def feed_forward_block(g: Graph, x: str, h: str, stack, i: int) -> tuple[str, str]:
    """Block i's feed-forward on its normed input h, the residual add, and the norm that opens the
    next block (the stack's final norm after the last one): (x, h) for block i + 1."""
    ff = stack.block[i].layer[-1].DenseReluDense                   # the last layer of a T5 block is its FF
    f = feed_forward(g, h, ff, stack.config.dense_act_fn, f"block.{i}.ff")
    last = i + 1 == len(stack.block)
    ln = stack.final_layer_norm if last else stack.block[i + 1].layer[0].layer_norm
    return add_norm(g, x, f, ln, "final_ln" if last else f"block.{i + 1}.ln_self")


# --------------------------------------------------------------------------------------------
# the exported graphs
# --------------------------------------------------------------------------------------------
def encoder_graph(model, opset: int = 17, causal: bool = False):
    """input_ids, attention_mask -> encoder states and every decoder layer's cross K/V.

    causal (`train.causal`): a key after its query gets HF's most negative float in the position-bias
    table, so each token reads itself and the tokens before it only (`gensar.model.t5.causal_bias`)."""
    from onnx import TensorProto as TP

    cfg, enc = model.config, model.get_encoder()
    h_, d_, n_dec = cfg.num_heads, cfg.d_kv, cfg.num_decoder_layers
    g = Graph("gensar_encoder")
    ids = g.input("input_ids", TP.INT64, ["batch", "src"])
    mask = g.input("attention_mask", TP.INT64, ["batch", "src"])
    key_mask = g.op("Cast", mask, to=TP.INT32)
    # position bias [1, H, S, S]: bias[:, q, k] = table[:, clip(k - q) + M] (T5's buckets are
    # constant beyond max_distance M, so clipping the offset is exact for any length)
    m = enc.block[0].layer[0].SelfAttention.relative_attention_max_distance
    table = bias_by_offset(enc.block[0].layer[0].SelfAttention, torch.arange(-m, m + 1), True).T    # [2M+1, H]
    if causal:
        table[m + 1:] = NEG_INF                                     # offsets k - q > 0 (clipped at M: still > 0)
    table = g.weight("position_bias_by_offset", table)
    s = g.op("Squeeze", g.op("Shape", ids, start=1, end=2), g.const([0]))
    pos = g.op("Range", g.const(0), s, g.const(1))                                  # [S]
    offset = g.op("Sub", g.op("Unsqueeze", pos, g.const([0])), g.op("Unsqueeze", pos, g.const([1])))  # [S, S] k - q
    offset = g.op("Add", g.op("Clip", offset, g.const(-m), g.const(m)), g.const(m))
    # gather whole rows of H values (a gather of single floats along axis 1 is 10x slower), then move H first
    bias = g.op("Transpose", g.op("Unsqueeze", g.op("Gather", table, offset), g.const([0])), perm=[0, 3, 1, 2])  # [1, H, S, S]

    x = g.op("Gather", g.weight("embed_tokens", enc.embed_tokens.weight), ids)      # [B, S, D]
    h = rms_norm(g, x, enc.block[0].layer[0].layer_norm, "block.0.ln_self", opset)
    for i, block in enumerate(enc.block):
        sa = block.layer[0].SelfAttention
        q, k, v = self_qkv(g, h, sa, f"block.{i}.qkv")                                 # [B, S, H*d] each
        a = attention(g, q, k, v, h_, bias=bias, key_mask=key_mask)
        x, h = add_norm(g, x, g.op("MatMul", a, g.weight(f"block.{i}.o", T(sa.o))), block.layer[1].layer_norm,
                        f"block.{i}.ln_ff")
        x, h = feed_forward_block(g, x, h, enc, i)
    g.op("Identity", h, outputs=["encoder_hidden_states"])
    # cross K/V of every decoder layer from one matmul: [B, S, 2L*H*d] -> [B, 2L*H, S, d] -> 2L x [B, H, S, d]
    w = torch.cat([torch.cat([T(b.layer[1].EncDecAttention.k), T(b.layer[1].EncDecAttention.v)], 1)
                   for b in model.get_decoder().block], 1)
    kv = g.op("Reshape", g.op("MatMul", h, g.weight("cross_kv", w)), g.const([0, 0, 2 * n_dec * h_, d_]))
    names = cache_names(n_dec, "cross_key", "cross_value")
    g.op("Split", g.op("Transpose", kv, perm=[0, 2, 1, 3]), g.const([h_] * 2 * n_dec), axis=1, outputs=names)
    g.output("encoder_hidden_states", TP.FLOAT, ["batch", "src", cfg.d_model])
    for n in names:
        g.output(n, TP.FLOAT, ["batch", h_, "src", d_])
    return g.model(opset)


def decoder_graph(model, full_vocab: bool, opset: int = 17, max_steps: int = 64):
    """One decoding step for all beams: last token + caches -> log-probs of chosen tokens + new caches.

    full_vocab: log-softmax over the whole vocabulary, read at `token_ids` (decoder_lse.onnx); else
    logits of `token_weight`'s tokens only, log-softmax over those `token_mask` allows (decoder.onnx).
    max_steps: longest decoded sequence (the self-attention bias table's length).
    """
    from onnx import TensorProto as TP

    cfg, dec = model.config, model.get_decoder()
    h_, d_, inner, n_dec = cfg.num_heads, cfg.d_kv, cfg.num_heads * cfg.d_kv, cfg.num_decoder_layers
    g = Graph("gensar_decoder_lse" if full_vocab else "gensar_decoder")
    ids = g.input("input_ids", TP.INT64, ["rows", 1])
    mask = g.input("encoder_attention_mask", TP.INT64, ["batch", "src"])
    if full_vocab:
        token_ids = g.input("token_ids", TP.INT64, ["tokens"])
    else:
        token_weight = g.input("token_weight", TP.FLOAT, [cfg.d_model, "tokens"])
        token_mask = g.input("token_mask", TP.BOOL, ["rows", 1, "tokens"])
    cross = [g.input(n, TP.FLOAT, ["batch", h_, "src", d_]) for n in cache_names(n_dec, "cross_key", "cross_value")]
    past = [g.input(n, TP.FLOAT, ["rows", h_, "past", d_]) for n in cache_names(n_dec, "past_key", "past_value")]
    key_mask = g.op("Cast", mask, to=TP.INT32)
    # self-attention bias [1, H, 1, T+1] of keys 0..T seen from the new token at position T: distances
    # T..0, a slice of the table stored by decreasing distance (T5's decoder buckets are one-sided)
    sa0 = dec.block[0].layer[0].SelfAttention
    table = bias_by_offset(sa0, -torch.arange(max_steps - 1, -1, -1), bidirectional=False)      # [H, M]
    t = g.op("Shape", past[0], start=2, end=3)                                          # [1] = T
    self_bias = g.op("Slice", g.weight("self_bias_by_distance", table[None, :, None, :]),
                     g.op("Sub", g.const([max_steps - 1]), t), g.const([max_steps]), g.const([3]))
    # the N beam queries of a request against its one cross K/V: [R, 1, H*d] <-> [B, N, H*d]
    by_request = g.op("Concat", g.op("Shape", cross[0], start=0, end=1), g.const([-1, inner]), axis=0)

    x = g.op("Gather", g.weight("embed_tokens", dec.embed_tokens.weight), ids)      # [R, 1, D]
    h = rms_norm(g, x, dec.block[0].layer[0].layer_norm, "block.0.ln_self", opset)
    presents = cache_names(n_dec, "present_key", "present_value")
    for i, block in enumerate(dec.block):
        sa, ca = block.layer[0].SelfAttention, block.layer[1].EncDecAttention
        # self-attention over the cache (no causal mask: the one query is the newest token)
        q, k, v = self_qkv(g, h, sa, f"block.{i}.qkv")                                 # [R, 1, H*d] each
        a, _, _ = attention(g, q, k, v, h_, bias=self_bias, past=(past[2 * i], past[2 * i + 1]),
                            present=presents[2 * i: 2 * i + 2])
        x, h = add_norm(g, x, g.op("MatMul", a, g.weight(f"block.{i}.o", T(sa.o))), block.layer[1].layer_norm,
                        f"block.{i}.ln_cross")
        # cross-attention on the encoder's K/V, computed once per request
        q = g.op("Reshape", g.op("MatMul", h, g.weight(f"block.{i}.cross_q", T(ca.q))), by_request)
        a = g.op("Reshape", attention(g, q, cross[2 * i], cross[2 * i + 1], h_, key_mask=key_mask),
                 g.const([-1, 1, inner]))                                            # [R, 1, H*d]
        x, h = add_norm(g, x, g.op("MatMul", a, g.weight(f"block.{i}.cross_o", T(ca.o))), block.layer[2].layer_norm,
                        f"block.{i}.ln_ff")
        x, h = feed_forward_block(g, x, h, dec, i)
    if _scales_decoder_output(cfg):
        h = g.op("Mul", h, g.weight("output_scale", np.array(cfg.d_model ** -0.5, dtype=np.float32)))
    if full_vocab:
        logits = g.op("MatMul", h, g.weight("lm_head_t", T(model.lm_head)))           # [R, 1, V]
        g.op("Gather", g.op("LogSoftmax", logits, axis=-1), token_ids, axis=-1, outputs=["logp"])
    else:
        logits = g.op("MatMul", h, token_weight)                                      # [R, 1, V_t]
        allowed = g.op("Where", token_mask, logits, g.weight("neg_inf", np.array(-np.inf, dtype=np.float32)))
        g.op("LogSoftmax", allowed, axis=-1, outputs=["logp"])
    g.output("logp", TP.FLOAT, ["rows", 1, "tokens"])
    for n in presents:
        g.output(n, TP.FLOAT, ["rows", h_, "past_plus_one", d_])
    return g.model(opset)


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


def export_onnx(model, out_dir: str | Path, opset: int = 17, causal: bool = False) -> dict[str, Path]:
    """Write encoder.onnx, decoder.onnx and decoder_lse.onnx for `model` into `out_dir` (checked)."""
    import onnx

    if opset < 15:
        raise ValueError(f"export.opset must be >= 15 (Shape with start/end), got {opset}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    graphs = {"encoder": encoder_graph(model, opset, causal), "decoder": decoder_graph(model, False, opset),
              "decoder_lse": decoder_graph(model, True, opset)}
    paths = {}
    for name, graph in graphs.items():
        paths[name] = out_dir / f"{name}.onnx"
        onnx.save(graph, str(paths[name]))
        onnx.checker.check_model(str(paths[name]), full_check=True)
        logger.info("exported %s (%d nodes, %.1f MB), onnx.checker ok", paths[name], len(graph.graph.node),
                    paths[name].stat().st_size / 2**20)
    return paths


def quantize_int8(paths: dict[str, Path]) -> dict[str, Path]:
    """Dynamic int8 quantization of the weights of every graph (in place); returns the same paths."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in paths.values():
        tmp = path.with_suffix(".int8.onnx")
        # onnx shape inference does not know the com.microsoft ops: tensors it cannot type are float
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
        tmp.replace(path)
        logger.info("quantized %s to int8 (%.1f MB)", path, path.stat().st_size / 2**20)
    return paths


def verify(model, out_dir: str | Path, batch: int = 2, beams: int = 3, src_len: int = 9,
           causal: bool = False) -> dict[str, float]:
    """Run the ONNX graphs and the PyTorch model on the same random inputs; max abs differences.

    encoder: against `model.encoder`; decoders: two cached ONNX steps (step 1: one row per request,
    empty cache; step 2: `beams` rows per request) asking for every token of the vocabulary, against
    HF's log_softmax of the model run on the whole prefix (start, tok) for every beam at the last
    position (decoder.onnx with every token allowed is the same softmax).
    """
    import onnxruntime as ort

    from gensar.model.t5 import encode

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
    n_dec, vocab = cfg.num_decoder_layers, cfg.vocab_size
    start = cfg.decoder_start_token_id
    rows = batch * beams
    step_ids = [np.full(batch, start, dtype=np.int64),
                torch.randint(2, vocab, (rows,), generator=g).numpy()]
    empty = np.zeros((batch, cfg.num_heads, 0, cfg.d_kv), dtype=np.float32)
    feed = {"input_ids": step_ids[0][:, None], "encoder_attention_mask": mask.numpy(),
            "token_ids": np.arange(vocab, dtype=np.int64),
            **dict(zip(cache_names(n_dec, "cross_key", "cross_value"), enc[1:])),
            **{n: empty for n in cache_names(n_dec, "past_key", "past_value")}}
    logp0, *present = sess["decoder_lse"].run(None, feed)
    present = [np.repeat(p, beams, axis=0) for p in present]             # every beam continues row b
    feed.update({"input_ids": step_ids[1][:, None], **dict(zip(cache_names(n_dec, "past_key", "past_value"), present))})
    logp1 = sess["decoder_lse"].run(None, feed)[0]
    feed.pop("token_ids")
    feed.update({"token_weight": np.ascontiguousarray(lm_head_matrix(model).T),
                 "token_mask": np.ones((rows, 1, vocab), dtype=bool)})
    allowed1 = sess["decoder"].run(None, feed)[0]

    with torch.no_grad():
        ref_enc = encode(model, ids, mask, causal)
        dec_in = torch.stack([torch.from_numpy(np.repeat(step_ids[0], beams)), torch.from_numpy(step_ids[1])], 1)
        ref = model(encoder_outputs=(ref_enc.repeat_interleave(beams, 0),),
                    attention_mask=mask.repeat_interleave(beams, 0), decoder_input_ids=dec_in).logits
        ref = torch.log_softmax(ref, -1).numpy()                            # [rows, 2, V]
    keep = mask.bool()
    diffs = {
        "encoder": float((torch.from_numpy(enc[0]) - ref_enc)[keep].abs().max()),
        "decoder_step1": float(np.abs(logp0[:, 0] - ref[::beams, 0]).max()),
        "decoder_step2": float(np.abs(logp1[:, 0] - ref[:, 1]).max()),
        "decoder_allowed_step2": float(np.abs(allowed1[:, 0] - ref[:, 1]).max()),
    }
    logger.info("ONNX vs PyTorch max abs diff: %s", diffs)
    return diffs


# --------------------------------------------------------------------------------------------
# the self-contained export folder
# --------------------------------------------------------------------------------------------
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

    ids = IdentifierMap.load(ids_dir, bool(generation.get("drop_constant_codes", False)),
                             bool(generation.get("item_tokens", False)), bool(generation.get("history_codes", True)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    causal = bool(generation.get("causal", False))
    paths = export_onnx(model, out_dir, opset, causal)
    diffs = verify(model, out_dir, causal=causal)
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise RuntimeError(f"{out_dir}: ONNX graphs differ from the PyTorch model by {worst:.3g} "
                           f"(> export.tolerance {tolerance}): {diffs}")
    if quantize:
        quantize_int8(paths)
        diffs_int8 = verify(model, out_dir, causal=causal)
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
        "format": EXPORT_FORMAT,
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

