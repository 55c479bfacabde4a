"""Residual-quantised VAEs for item identifiers: GenSAR's dual RQ-VAE and the ablation variants.

GenSAR (mode `gensar`), with d_s = ids.specific_dim and shared_dim = 2 * d_s (paper: 64 = 2 * 32):

    z_s = E_s(x_s)                  (n, d_s)      semantic embedding -> latent
    z_c = E_c(x_c)                  (n, d_s)      collaborative embedding -> latent
    z   = [z_s ; z_c]               (n, 2 d_s)    concatenation
    shared levels l = 1..L_m quantise z:        r_1 = z,  e_l = C^h_l[argmin_k |r_l - C^h_l[k]|],  r_{l+1} = r_l - e_l
    the residual r = r_{L_m+1} is split in halves r^s = r[:, :d_s], r^c = r[:, d_s:]
    L_n semantic levels quantise r^s with codebooks C^s_l, L_n collaborative levels quantise r^c with C^c_l
    zq  = sum_l e^h_l + [sum_l e^s_l ; sum_l e^c_l]          (n, 2 d_s)  the quantised latent
    x_s' = D_s(zq[:, :d_s]),  x_c' = D_c(zq[:, d_s:])        two decoders, each reads its own half

So the semantic half of the latent is coded by (shared codes, semantic codes) = the semantic ID and
the collaborative half by (shared codes, collaborative codes) = the collaborative ID.

Loss = mse(x_s', x_s) + mse(x_c', x_c) + sum over every level of ( |sg[r_l] - e_l|^2 + beta |r_l - sg[e_l]|^2 ),
with the straight-through estimator zq_st = z + sg(zq - z) feeding the decoders. Each codebook is
initialised by k-means on the residuals it sees for the full training data (avoids codebook collapse).

Ablations (`ids.mode`): `semantic` (TIGER: one RQ-VAE over x_s with L_m + L_n levels, CID = SID),
`collaborative` (one RQ-VAE over x_c, SID = CID), `independent` (two RQ-VAEs with L_m + L_n levels
each, no shared codes). Single RQ-VAEs use a latent of shared_dim.

Inputs are standardised per matrix (centre, divide by the global RMS) so that the two reconstruction
terms have comparable scales; the statistics are stored with the model for incremental encoding.
"""
from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gensar.config import IdsConfig
from gensar.device import resolve_device
from gensar.logs import progress

logger = logging.getLogger(__name__)

MODES = ("gensar", "semantic", "collaborative", "independent")


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means, (n, d) -> (k, d) centroids. Empty clusters are re-seeded from random points;
    with fewer points than clusters, points are repeated with a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    if len(x) < k:
        reps = x[torch.randint(len(x), (k - len(x),), generator=g)]
        x = torch.cat([x, reps + 1e-3 * x.std().clamp_min(1e-6) * torch.randn(reps.shape, generator=g)])
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = counts == 0
        c = torch.where(empty[:, None], x[torch.randint(len(x), (k,), generator=g)], sums / counts.clamp_min(1)[:, None])
    return c


class Quantizer(nn.Module):
    """One codebook level: nearest code, codebook + commitment loss."""

    def __init__(self, size: int, dim: int, beta: float):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(size, dim) * 0.01)
        self.beta = beta

    def distances(self, r: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (n, size) of residuals r (n, dim) to every code."""
        return (r.pow(2).sum(1, keepdim=True) - 2 * r @ self.codebook.T + self.codebook.pow(2).sum(1)[None])

    def forward(self, r: torch.Tensor):
        idx = self.distances(r).argmin(1)                      # (n,)
        e = self.codebook[idx]                                  # (n, dim)
        loss = F.mse_loss(e, r.detach()) + self.beta * F.mse_loss(r, e.detach())
        return e, idx, loss


class ResidualQuantizer(nn.Module):
    """`levels` quantizers applied to successive residuals."""

    def __init__(self, levels: int, size: int, dim: int, beta: float):
        super().__init__()
        self.levels = nn.ModuleList(Quantizer(size, dim, beta) for _ in range(levels))

    def forward(self, r: torch.Tensor):
        """r (n, dim) -> quantised sum (n, dim), codes (n, levels), loss, residuals [levels x (n, dim)]."""
        q, codes, loss, residuals = torch.zeros_like(r), [], r.new_zeros(()), []
        for level in self.levels:
            residuals.append(r)
            e, idx, l = level(r)
            q, loss = q + e, loss + l
            codes.append(idx)
            r = r - e.detach()
        return q, torch.stack(codes, 1) if codes else r.new_zeros((len(r), 0), dtype=torch.long), loss, residuals

    @torch.no_grad()
    def kmeans_init(self, r: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Initialise every level from the data residuals; returns the final residual."""
        for i, level in enumerate(self.levels):
            level.codebook.data.copy_(kmeans(r, level.codebook.shape[0], seed=seed + i).to(r.device))
            r = r - level.codebook[level.distances(r).argmin(1)]
        return r


class RQVAE(nn.Module):
    """One input, one encoder, `levels` residual levels, one decoder (TIGER-style)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent: int, levels: int, size: int, beta: float):
        super().__init__()
        self.enc = mlp([in_dim, *hidden, latent])
        self.rq = ResidualQuantizer(levels, size, latent, beta)
        self.dec = mlp([latent, *reversed(hidden), in_dim])

    def forward(self, x: torch.Tensor) -> dict:
        z = self.enc(x)
        zq, codes, qloss, residuals = self.rq(z)
        x_rec = self.dec(z + (zq - z).detach())                # straight-through
        rec = F.mse_loss(x_rec, x)
        return {"loss": rec + qloss, "recon": [rec], "codes": codes, "residuals": residuals}

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, seed: int = 0):
        self.rq.kmeans_init(self.enc(x), seed)


class DualRQVAE(nn.Module):
    """GenSAR's RQ-VAE: shared levels over [z_s; z_c], then semantic and collaborative levels on the halves."""

    def __init__(self, sem_dim: int, col_dim: int, cfg: IdsConfig):
        super().__init__()
        d = cfg.specific_dim
        if cfg.shared_dim != 2 * d:
            raise ValueError(f"ids.shared_dim ({cfg.shared_dim}) must be 2 * ids.specific_dim ({d}): the shared "
                             "levels quantise the concatenation of the two specific latents")
        self.d = d
        self.enc_s, self.enc_c = mlp([sem_dim, *cfg.hidden, d]), mlp([col_dim, *cfg.hidden, d])
        self.shared = ResidualQuantizer(cfg.shared_levels, cfg.codebook_size, 2 * d, cfg.beta)
        self.sem = ResidualQuantizer(cfg.specific_levels, cfg.codebook_size, d, cfg.beta)
        self.col = ResidualQuantizer(cfg.specific_levels, cfg.codebook_size, d, cfg.beta)
        self.dec_s = mlp([d, *reversed(cfg.hidden), sem_dim])
        self.dec_c = mlp([d, *reversed(cfg.hidden), col_dim])

    def forward(self, x_s: torch.Tensor, x_c: torch.Tensor) -> dict:
        z = torch.cat([self.enc_s(x_s), self.enc_c(x_c)], 1)                  # (n, 2d)
        qh, codes_h, loss_h, res_h = self.shared(z)
        r = z - qh.detach()
        qs, codes_s, loss_s, res_s = self.sem(r[:, :self.d])
        qc, codes_c, loss_c, res_c = self.col(r[:, self.d:])
        zq = qh + torch.cat([qs, qc], 1)
        zq = z + (zq - z).detach()                                             # straight-through
        rec_s = F.mse_loss(self.dec_s(zq[:, :self.d]), x_s)
        rec_c = F.mse_loss(self.dec_c(zq[:, self.d:]), x_c)
        return {"loss": rec_s + rec_c + loss_h + loss_s + loss_c, "recon": [rec_s, rec_c],
                "codes": torch.cat([codes_h, codes_s, codes_c], 1), "residuals": res_h + res_s + res_c}

    @torch.no_grad()
    def kmeans_init(self, x_s, x_c, seed: int = 0):
        z = torch.cat([self.enc_s(x_s), self.enc_c(x_c)], 1)
        r = self.shared.kmeans_init(z, seed)
        self.sem.kmeans_init(r[:, :self.d], seed + 100)
        self.col.kmeans_init(r[:, self.d:], seed + 200)


class IdentifierModel(nn.Module):
    """The RQ-VAE(s) of one `ids.mode`, with a common interface for training and code assignment.

    `encode` returns the concatenated code matrix of every level; `id_columns()` says which of its
    columns make the SID and the CID, `id_kinds()` their token kinds and `quantizers()` each level's
    quantizer (the identifiers stage reads the last level's codebook for Sinkhorn re-assignment).
    """

    def __init__(self, sem_dim: int, col_dim: int, cfg: IdsConfig):
        super().__init__()
        if cfg.mode not in MODES:
            raise ValueError(f"ids.mode must be one of {MODES}, got {cfg.mode!r}")
        self.mode, self.cfg = cfg.mode, cfg
        L = cfg.shared_levels + cfg.specific_levels
        single = lambda dim: RQVAE(dim, cfg.hidden, cfg.shared_dim, L, cfg.codebook_size, cfg.beta)
        if self.mode == "gensar":
            self.dual = DualRQVAE(sem_dim, col_dim, cfg)
        if self.mode in ("semantic", "independent"):
            self.rq_s = single(sem_dim)
        if self.mode in ("collaborative", "independent"):
            self.rq_c = single(col_dim)
        # input standardisation (set by `fit_scaling`, saved with the weights)
        self.register_buffer("mu_s", torch.zeros(sem_dim))
        self.register_buffer("mu_c", torch.zeros(col_dim))
        self.register_buffer("scale", torch.ones(2))

    # ---- inputs ------------------------------------------------------------------------------
    def fit_scaling(self, x_s: torch.Tensor, x_c: torch.Tensor):
        self.mu_s.copy_(x_s.mean(0))
        self.mu_c.copy_(x_c.mean(0))
        self.scale.copy_(torch.stack([(x_s - self.mu_s).pow(2).mean().sqrt(),
                                      (x_c - self.mu_c).pow(2).mean().sqrt()]).clamp_min(1e-8))

    def scaled(self, x_s, x_c):
        return (x_s - self.mu_s) / self.scale[0], (x_c - self.mu_c) / self.scale[1]

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x_s: torch.Tensor, x_c: torch.Tensor) -> dict:
        """Standardised inputs -> loss, recon terms {'sem','col'}, codes (n, n_codes), residuals."""
        if self.mode == "gensar":
            o = self.dual(x_s, x_c)
            return {**o, "recon": {"sem": o["recon"][0], "col": o["recon"][1]}}
        outs, recon = [], {}
        if self.mode in ("semantic", "independent"):
            outs.append(self.rq_s(x_s))
            recon["sem"] = outs[-1]["recon"][0]
        if self.mode in ("collaborative", "independent"):
            outs.append(self.rq_c(x_c))
            recon["col"] = outs[-1]["recon"][0]
        return {"loss": sum(o["loss"] for o in outs), "recon": recon,
                "codes": torch.cat([o["codes"] for o in outs], 1),
                "residuals": [r for o in outs for r in o["residuals"]]}

    @torch.no_grad()
    def kmeans_init(self, x_s, x_c, seed: int = 0):
        if self.mode == "gensar":
            self.dual.kmeans_init(x_s, x_c, seed)
        if self.mode in ("semantic", "independent"):
            self.rq_s.kmeans_init(x_s, seed)
        if self.mode in ("collaborative", "independent"):
            self.rq_c.kmeans_init(x_c, seed + 1000)

    def quantizers(self) -> list[tuple[str, Quantizer]]:
        """Every level in the column order of `codes`, with a name like 'h0', 's1', 'c3'."""
        if self.mode == "gensar":
            d = self.dual
            return ([(f"h{i}", q) for i, q in enumerate(d.shared.levels)]
                    + [(f"s{i + len(d.shared.levels)}", q) for i, q in enumerate(d.sem.levels)]
                    + [(f"c{i + len(d.shared.levels)}", q) for i, q in enumerate(d.col.levels)])
        out = []
        if self.mode in ("semantic", "independent"):
            out += [(f"s{i}", q) for i, q in enumerate(self.rq_s.rq.levels)]
        if self.mode in ("collaborative", "independent"):
            out += [(f"c{i}", q) for i, q in enumerate(self.rq_c.rq.levels)]
        return out

    def id_columns(self) -> dict[str, list[int]]:
        """Which columns of `codes` make the SID and the CID (before the disambiguation code)."""
        m, n = self.cfg.shared_levels, self.cfg.specific_levels
        L = m + n
        if self.mode == "gensar":
            return {"sid": list(range(m)) + list(range(m, m + n)),
                    "cid": list(range(m)) + list(range(m + n, m + 2 * n))}
        if self.mode == "semantic" or self.mode == "collaborative":
            return {"sid": list(range(L)), "cid": list(range(L))}
        return {"sid": list(range(L)), "cid": list(range(L, 2 * L))}

    def id_kinds(self) -> dict[str, list[str]]:
        """Position kinds of each identifier (tokens.py), without the trailing 'd'."""
        names = [n for n, _ in self.quantizers()]
        return {k: [names[c][0] for c in cols] for k, cols in self.id_columns().items()}

    @torch.no_grad()
    def encode(self, x_s: np.ndarray, x_c: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, list[np.ndarray]]:
        """Raw (unstandardised) embeddings -> codes (n, n_codes) and per-level residuals [(n, dim)]."""
        self.eval()
        dev = self.scale.device
        codes, residuals = [], []
        for i in range(0, len(x_s), batch_size):
            xs, xc = self.scaled(torch.as_tensor(x_s[i:i + batch_size], device=dev),
                                 torch.as_tensor(x_c[i:i + batch_size], device=dev))
            o = self(xs, xc)
            codes.append(o["codes"].cpu().numpy())
            residuals.append([r.cpu().numpy() for r in o["residuals"]])
        return np.concatenate(codes), [np.concatenate(rs) for rs in zip(*residuals)]


# --------------------------------------------------------------------------------------------
def code_usage(codes: np.ndarray, size: int) -> tuple[float, float]:
    """Share of the codebook used and perplexity exp(H) of the code distribution of one level."""
    p = np.bincount(codes, minlength=size) / max(len(codes), 1)
    nz = p[p > 0]
    return float((p > 0).mean()), float(math.exp(-(nz * np.log(nz)).sum()))


def level_stats(model: IdentifierModel, codes: np.ndarray) -> dict[str, dict[str, float]]:
    size = model.cfg.codebook_size
    out = {}
    for j, (name, _) in enumerate(model.quantizers()):
        usage, ppl = code_usage(codes[:, j], size)
        out[name] = {"usage": round(usage, 4), "perplexity": round(ppl, 2)}
    return out


def train_rqvae(x_s: np.ndarray, x_c: np.ndarray, cfg: IdsConfig, log_every: int = 25) -> tuple[IdentifierModel, dict]:
    """Fit the identifier model of `cfg.mode` on semantic (n, d_s) and collaborative (n, d_c) embeddings."""
    if len(x_s) != len(x_c):
        raise ValueError(f"semantic embeddings have {len(x_s)} rows, collaborative {len(x_c)}")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = IdentifierModel(x_s.shape[1], x_c.shape[1], cfg).to(device)
    xs_raw = torch.as_tensor(x_s, dtype=torch.float32, device=device)
    xc_raw = torch.as_tensor(x_c, dtype=torch.float32, device=device)
    model.fit_scaling(xs_raw, xc_raw)
    xs, xc = model.scaled(xs_raw, xc_raw)
    model.kmeans_init(xs, xc, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    n, history = len(xs), []
    for epoch in progress(range(1, cfg.epochs + 1), desc="rq-vae", disable=cfg.epochs < 10):
        model.train()
        for idx in torch.randperm(n, generator=g).split(cfg.batch_size):
            idx = idx.to(device)
            o = model(xs[idx], xc[idx])
            opt.zero_grad(set_to_none=True)
            o["loss"].backward()
            opt.step()
        if epoch % log_every == 0 or epoch == cfg.epochs:
            model.eval()
            with torch.no_grad():
                o = model(xs, xc)
            rec = {"epoch": epoch, "loss": float(o["loss"]), **{f"recon_{k}": float(v) for k, v in o["recon"].items()},
                   "levels": level_stats(model, o["codes"].cpu().numpy())}
            history.append(rec)
            logger.info("rq-vae epoch %d loss %.4f recon %s perplexity %s", epoch, rec["loss"],
                        {k: round(float(v), 4) for k, v in o["recon"].items()},
                        {k: v["perplexity"] for k, v in rec["levels"].items()})
    return model.eval(), {"history": history}
