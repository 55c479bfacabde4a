"""SASRec (Kang & McAuley, ICDM 2018) trained with full softmax cross-entropy over all items.

Two roles: its item embedding table is GenSAR's collaborative embedding (input of the dual RQ-VAE),
and on its own it is the recommendation baseline of the benchmark (full-ranking Recall/NDCG).

Model (the RecBole SASRec layout): item + learned position embeddings -> LayerNorm -> dropout ->
`layers` post-LN transformer blocks with causal self-attention (padding keys masked) -> the hidden
state at each position scored against the (tied) item embedding table. Sequences are left-padded
with item index 0; position ids count so that the last real item always gets position max_len-1.
Loss: cross-entropy over all items at every non-padded position (next-item prediction).

This module: the model, its input layout (`pad_left`) and its checkpoint; the data rules, the metrics
and the training loop are in `gensar.ids.sasrec_train`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gensar.config import CollabConfig


def pad_left(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[n, length] int64: each sequence's last `length` item indices, right-aligned, 0 = padding."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[i, -len(s):] = s
    return out


@dataclass
class SASRecConfig:
    n_items: int                  # real items; index 0 is padding, so the table has n_items + 1 rows
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    inner: int = 256              # feed-forward width
    max_len: int = 50
    dropout: float = 0.5          # hidden and attention dropout (RecBole default for SASRec)

    @classmethod
    def from_collab(cls, cfg: CollabConfig, n_items: int) -> SASRecConfig:
        """The architecture part of the stage's `collab` section (what a checkpoint rebuilds)."""
        return cls(n_items=n_items, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, inner=cfg.inner,
                   max_len=cfg.max_len, dropout=cfg.dropout)


class SelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        assert cfg.hidden % cfg.heads == 0, "hidden must be divisible by heads"
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_drop = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        # x: (B, T, H); mask: (B, 1, T, T) additive float mask (0 or a large negative number)
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)
        q, k, v = (t.view(B, T, self.heads, H // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.drop(self.proj(y))


class Block(nn.Module):
    """Post-LN transformer block (as RecBole's SASRec): x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden, cfg.inner), nn.GELU(), nn.Linear(cfg.inner, cfg.hidden),
                                 nn.Dropout(cfg.dropout))
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x, mask):
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.ffn(x))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T) left-padded item indices, T <= max_len -> hidden states (B, T, H)."""
        B, T = seq.shape
        pos = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=seq.device)  # last item -> max_len-1
        x = self.drop(self.ln(self.item_emb(seq) + self.pos_emb(pos)[None]))
        causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
        allowed = causal[None] & (seq > 0)[:, None, :]          # (B, T, T): query t sees real keys <= t
        mask = torch.zeros(B, 1, T, T, device=seq.device).masked_fill(~allowed[:, None], -1e9)
        for blk in self.blocks:
            x = blk(x, mask)
        return x

    def item_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of all real items for hidden states h (..., H) -> (..., n_items); column j = item j+1."""
        return h @ self.item_emb.weight[1:].T

    def item_embeddings(self) -> np.ndarray:
        """The collaborative embedding table [n_items, H] (row j = item index j+1)."""
        return self.item_emb.weight[1:].detach().cpu().numpy().astype(np.float32)


def save_sasrec(model: SASRec, path, item_ids: list[str], extra: dict | None = None) -> None:
    """model.pt: {'config': SASRecConfig fields, 'state_dict', 'item_ids', ...}; written by the caller atomically."""
    torch.save({"config": vars(model.cfg), "state_dict": model.state_dict(), "item_ids": item_ids,
                **(extra or {})}, path)


def load_sasrec(path, device: str = "cpu") -> tuple[SASRec, list[str]]:
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = SASRec(SASRecConfig(**ckpt["config"])).to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["item_ids"]
