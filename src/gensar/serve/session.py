"""onnxruntime sessions of a GenSAR export: the encoder and the two decoder-step graphs.

The encoder runs once per request and also returns every decoder layer's cross-attention K/V; a
decoder step runs one token per beam with a KV cache (no re-run over the prefix). `decoder_lse.onnx`
gives HF's whole-vocabulary log-softmax read at the requested tokens; `decoder.onnx` is handed the
output-embedding columns of the tokens to score and renormalises over them only (see
`gensar.serve.beam`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def choose_providers(provider: str = "auto") -> list[str]:
    """Execution providers, explicit: CUDA when onnxruntime-gpu and a GPU are there, else CPU.

    provider: auto | cpu | cuda ('cuda' fails loudly when CUDA cannot be used).
    """
    import onnxruntime as ort

    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"serve.provider must be auto, cpu or cuda, got {provider!r}")
    available = ort.get_available_providers()
    if provider != "cpu" and "CUDAExecutionProvider" in available and _gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "cuda":
        raise RuntimeError(f"serve.provider=cuda but CUDA cannot be used (onnxruntime providers: {available}, "
                           f"GPU present: {_gpu_present()}); install the `gpu` extra on a GPU machine")
    return ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency, but the runtime does not need it
        return Path("/dev/nvidiactl").exists()


class OnnxSeq2Seq:
    """The graphs of an export (see gensar.export.onnx) and the output embedding."""

    def __init__(self, export_dir: str | Path, provider: str = "auto", threads: int = 1, spin: bool = False):
        import onnxruntime as ort

        export_dir = Path(export_dir)
        self.providers = choose_providers(provider)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads      # 0 = onnxruntime's default (all cores)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # spinning worker threads cut latency on an idle machine but burn cores others need on a
        # shared one (measured here: 3x slower with 2 spinning threads under load)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.sessions = {n: ort.InferenceSession(str(export_dir / f"{n}.onnx"), opts, providers=self.providers)
                         for n in ("encoder", "decoder", "decoder_lse")}
        used = self.sessions["decoder"].get_providers()
        logger.info("runtime: onnxruntime %s, providers %s, %s threads%s", ort.__version__, used,
                    threads or "all", ", spinning" if spin else "")
        self.lm_head = np.load(export_dir / "lm_head.npy")                   # [V, D] float32
        self.d_model = self.lm_head.shape[1]
        dec_inputs = self.sessions["decoder"].get_inputs()
        self.cross_names = [i.name for i in dec_inputs if i.name.startswith("cross_")]
        self.past_names = [i.name for i in dec_inputs if i.name.startswith("past_")]
        past_shape = next(i.shape for i in dec_inputs if i.name == self.past_names[0])
        self.n_heads, self.d_kv = int(past_shape[1]), int(past_shape[3])

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """Cross-attention K/V of every decoder layer, each [B, H, S, d_kv]."""
        return self.sessions["encoder"].run(self.cross_names, {"input_ids": input_ids, "attention_mask": attention_mask})

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        empty = np.zeros((rows, self.n_heads, 0, self.d_kv), dtype=np.float32)
        return [empty] * len(self.past_names)

    def step(self, tokens: np.ndarray, attention_mask: np.ndarray, cross: list[np.ndarray], past: list[np.ndarray],
             token_ids: np.ndarray | None = None, token_weight: np.ndarray | None = None,
             token_mask: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder step for R rows: (log-probs [R, V_t], new caches [R, H, T+1, d_kv]).

        token_ids [V_t]: HF's log-softmax over the whole vocabulary, read at these tokens
        (decoder_lse.onnx); or token_weight [D, V_t] (their output-embedding columns) and
        token_mask [R, V_t] (which of them each row may take): log-softmax over the allowed tokens
        only (decoder.onnx; rows with nothing allowed come back as NaN).
        """
        feed = {"input_ids": tokens[:, None], "encoder_attention_mask": attention_mask,
                **dict(zip(self.cross_names, cross)), **dict(zip(self.past_names, past))}
        if token_ids is not None:
            feed["token_ids"] = token_ids
            logp, *present = self.sessions["decoder_lse"].run(None, feed)
        else:
            feed["token_weight"], feed["token_mask"] = token_weight, token_mask[:, None, :]
            logp, *present = self.sessions["decoder"].run(None, feed)
        return logp[:, 0], present
