"""Identifier-aware output: each identifier position is a softmax over its own level's codes.

An identifier token `<{kind}{level}_{code}>` can only ever appear at position `level` of an
identifier of its kind (`gensar.ids.tokens`). Scoring it against the whole vocabulary (~10k word
pieces + identifier tokens) makes the model spend most of its output compute, and most of what it
must learn, on ruling out text it can never emit there. With `train.id_loss: level`:

    training   the target token at an identifier position is scored against the K codes of its
               level only (K = codebook size, 256):  logits = h_t @ E[level tokens]^T   [n, K]
               (E is the tied output embedding); text targets keep the whole vocabulary; the EOS
               that follows an identifier is not scored (decoding forces it)
    decoding   log_softmax over the same K codes at each depth, then the trie's mask
               (`LevelTrieProcessor` for HF `generate`, `normalize="level"` in the onnxruntime
               runtime), so training and serving score exactly the same distribution.

With `train.rec_first: items` the first code of a collaborative ID (CID, recommendation) is not a
softmax of its own: the decoder's first state scores every item row (the item tokens of
`train.item_tokens`, tied output embedding), and a first code's probability is the mass of the items
under it,

    p(item | x)  = softmax(h_0 @ E[item tokens]^T)                        [n, N]
    p(c_0 = c)   = sum of p(item) over the items whose CID starts with c  [n, K]   (`first_code_logp`)

trained with the clicked item as label (a full softmax over items, as SASRec-CE's) and decoded from the
marginals; the lower levels stay per-level codes. A CID target is known by its whole token sequence
(`LevelVocab.item_of`), so rec targets, the teacher's drawn paths and text -> CID alignment all train it.

`LevelVocab` holds, per level group (`h0`, `h1`, `s2`, `c2`, ..., `d4`; `IdentifierMap.level_groups`),
the token ids of its codes in code order, the inverse lookups token id -> (group, local index), and
`space[sid|cid][t]`: the group token ids of identifier position t.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from gensar.model.prompts import IdentifierMap
from gensar.model.tokenizer import check_single_tokens


def first_code_logp(item_logits: torch.Tensor, first_code: torch.Tensor, width: int) -> torch.Tensor:
    """[n, N] item logits, first_code [N] (local index of each item's first CID code) -> [n, width]
    log p(c_0 = c): log of the summed item probabilities under each code (-inf where no item is)."""
    lp = torch.log_softmax(item_logits.float(), -1)                       # [n, N]
    # a logsumexp per code: shift by the code's best item (detached: the result does not depend on it), so
    # every used code sums >= 1 (no underflow to log 0, no 0/0 in the gradient); unused codes stay -inf
    idx = first_code.expand(len(lp), -1)
    top = torch.full((len(lp), width), float("-inf"), device=lp.device).scatter_reduce(1, idx, lp.detach(), "amax")
    mass = torch.zeros_like(top).index_add_(1, first_code, (lp - top.gather(1, idx)).exp())
    return mass.log() + top                                               # [n, width]


class LevelVocab:
    """Token ids of every identifier level group, and token id -> group / local index tables; with
    `first_items` (`train.rec_first: items`) the item rows that score a CID's first code: `item_tokens`
    [N] their token ids, `item_first` [N] each item's first CID code (local index), `item_of` a CID's
    token ids -> item index."""

    def __init__(self, tokenizer, ids: IdentifierMap, first_items: bool = False):
        by_group = ids.level_groups()
        self.names = sorted(by_group, key=lambda g: (int(g[1:]), g[0]))
        self.groups: list[np.ndarray] = []
        vocab = len(tokenizer)
        self.group_of = np.full(vocab, -1, dtype=np.int64)        # token id -> level group (-1: text)
        self.local_of = np.zeros(vocab, dtype=np.int64)           # token id -> index inside its group
        for g, name in enumerate(self.names):
            tid = np.array(check_single_tokens(tokenizer, by_group[name]), dtype=np.int64)
            self.groups.append(tid)
            self.group_of[tid] = g
            self.local_of[tid] = np.arange(len(tid))
        self.eos = tokenizer.eos_token_id
        self._torch: dict = {}
        # space -> the group token ids of each identifier position
        self.space = {space: [self.groups[self.names.index(g)] for g in ids.space_groups(space)]
                      for space in ("sid", "cid")}
        self.item_tokens = self.item_first = None
        self.item_spaces: tuple[str, ...] = ()     # the spaces decoded from the item rows (`IdentifierMap.cid_spaces`)
        self.item_of: dict[tuple[int, ...], int] = {}
        if first_items:
            if not ids.item_tokens:
                raise ValueError("train.rec_first: items scores the item rows: it needs train.item_tokens random or sasrec")
            self.item_tokens = np.array(check_single_tokens(tokenizer, ids.all_item_tokens()), dtype=np.int64)
            cids = [check_single_tokens(tokenizer, ids.cid_tokens(i)) for i in ids.item_ids]
            self.item_first = self.local_of[[c[0] for c in cids]]
            self.item_of = {tuple(c): n for n, c in enumerate(cids)}
            self.item_spaces = ids.cid_spaces()
        self.cid_depth = len(self.space["cid"])

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        key = str(device)
        if key not in self._torch:
            self._torch[key] = (torch.as_tensor(self.group_of, device=device),
                                torch.as_tensor(self.local_of, device=device),
                                [torch.as_tensor(g, device=device) for g in self.groups])
        return self._torch[key]

    def item_label(self, target: list[int]) -> int:
        """The item index of a target that is a CID (its token ids, EOS or not), else -1."""
        return self.item_of.get(tuple(target[:self.cid_depth]), -1)

    def item_logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """hidden [n, D] first decoder states -> [n, N] the scores of the item rows of `weight` [V, D]."""
        return hidden @ weight[torch.as_tensor(self.item_tokens, device=hidden.device)].T

    def first_from_items(self, item_logits: torch.Tensor) -> torch.Tensor:
        """[n, N] item scores -> [n, K] log p(c_0): `first_code_logp` over this map's first CID codes."""
        first = torch.as_tensor(self.item_first, device=item_logits.device)
        return first_code_logp(item_logits, first, len(self.space["cid"][0]))

    def first_logp(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """hidden [n, D] first decoder states of CID targets -> [n, K] log p(c_0) from the item rows."""
        return self.first_from_items(self.item_logits(hidden, weight))

    # ----------------------------------------------------------------------------------------
    def loss(self, hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
             label_smoothing: float = 0.0, soft: torch.Tensor | None = None, distill: float = 0.0,
             items: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the scored target positions.

        hidden [B, T, D]: decoder outputs already scaled as T5 scales them before `lm_head`;
        labels [B, T] (-100 = padding); weight [V, D]: the output embedding. Identifier positions
        are scored over their level's codes, text positions over the whole vocabulary; the EOS right
        after an identifier token is skipped. `soft` [B, T, width]: a teacher's distribution over the
        level's codes where a row is not all zero (`gensar.model.distill`); there the position's loss
        is (1 - distill) * CE(label) + distill * CE(soft). `items` [B, T] (`rec_first: items`): the
        item index at the first position of each CID target (-1 elsewhere); there the hard loss is the
        cross-entropy of the clicked item over every item row, and `soft` is matched by the first-code
        marginals of that item distribution.
        """
        group_of, local_of, groups = self.tensors(labels.device)
        y = labels.reshape(-1)                                             # [B*T]
        h = hidden.reshape(-1, hidden.shape[-1])                           # [B*T, D]
        g = torch.where(y >= 0, group_of[y.clamp(min=0)], torch.full_like(y, -2))   # -2 padding, -1 text
        prev = torch.cat([torch.full_like(labels[:, :1], -100), labels[:, :-1]], 1).reshape(-1)
        after_id = (y == self.eos) & (prev >= 0) & (group_of[prev.clamp(min=0)] >= 0)
        g = torch.where(after_id, torch.full_like(g, -2), g)
        total, count = hidden.new_zeros(()), 0
        if items is not None and self.item_tokens is not None:
            it = items.reshape(-1)
            sel = (it >= 0).nonzero().squeeze(1)
            g = torch.where(it >= 0, torch.full_like(g, -2), g)                 # scored here, not by its code
            if len(sel):
                logits = self.item_logits(h[sel], weight)                     # [n, N]
                ce = F.cross_entropy(logits, it[sel], reduction="none", label_smoothing=label_smoothing)
                if soft is not None and distill:
                    q = soft.reshape(-1, soft.shape[-1])[sel, :len(self.space["cid"][0])]   # [n, K]
                    logp = self.first_from_items(logits).clamp(min=-1e4)      # no items: -inf, q = 0 there
                    soft_ce = -(q * logp).sum(-1)
                    ce = torch.where(q.sum(-1) > 0, (1 - distill) * ce + distill * soft_ce, ce)
                total = total + ce.sum()
                count += len(sel)
        for gi, toks in enumerate(groups):
            sel = (g == gi).nonzero().squeeze(1)
            if len(sel):
                logits = h[sel] @ weight[toks].T                          # [n_g, K]
                ce = F.cross_entropy(logits, local_of[y[sel]], reduction="none", label_smoothing=label_smoothing)
                if soft is not None and distill:
                    q = soft.reshape(-1, soft.shape[-1])[sel, :len(toks)]  # [n_g, K]
                    taught = q.sum(-1) > 0
                    soft_ce = -(q * torch.log_softmax(logits, -1)).sum(-1)
                    ce = torch.where(taught, (1 - distill) * ce + distill * soft_ce, ce)
                total = total + ce.sum()
                count += len(sel)
        sel = (g == -1).nonzero().squeeze(1)
        if len(sel):
            logits = h[sel] @ weight.T                                     # [n_text, V]
            total = total + F.cross_entropy(logits, y[sel], reduction="sum", label_smoothing=label_smoothing)
            count += len(sel)
        return total / max(count, 1)


def t5_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              decoder_input_ids: torch.Tensor | None = None, decoder_mask: torch.Tensor | None = None,
              cross_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """T5's decoder outputs for teacher forcing, scaled as `T5ForConditionalGeneration` scales them
    before `lm_head` ([B, T, D]); the same computation as its forward, without the full logits.
    `causal`: the causal encoder (`gensar.model.t5.encode`); the optional decoder inputs and masks are
    those of packed causal rec sequences (`gensar.model.train.Collate`)."""
    from gensar.model.t5 import encode

    enc = encode(model, input_ids, attention_mask, causal)
    return decoder_hidden(model, enc, cross_mask if cross_mask is not None else attention_mask, labels,
                          decoder_input_ids, decoder_mask)


def decoder_hidden(model, states: torch.Tensor, encoder_mask: torch.Tensor, labels: torch.Tensor,
                   decoder_input_ids: torch.Tensor | None = None, decoder_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """`t5_hidden` given the encoder states [B, S, D] (e.g. one request's states repeated for many
    target paths): the decoder's outputs [B, T, D], scaled as before `lm_head`."""
    dec_in = decoder_input_ids if decoder_input_ids is not None else model._shift_right(labels)
    dec = model.decoder(input_ids=dec_in, attention_mask=decoder_mask, encoder_hidden_states=states,
                        encoder_attention_mask=encoder_mask).last_hidden_state
    if model.config.scale_decoder_outputs:
        dec = dec * (model.model_dim ** -0.5)
    return dec


class Seq2SeqLoss(torch.nn.Module):
    """The training objective as a module (so DDP wraps one forward): HF's full-vocabulary loss, or
    the identifier-aware loss of `LevelVocab` when `levels` is given. `packed` holds the extra inputs
    of a batch with causal rec sequences (decoder_input_ids and the two masks of `Collate`); `causal`
    says the encoder is causal (`train.causal`); `soft` and `distill` are the teacher's targets and
    their weight (`train.distill`)."""

    def __init__(self, model, levels: LevelVocab | None = None, label_smoothing: float = 0.0, causal: bool = False,
                 distill: float = 0.0):
        super().__init__()
        self.model, self.levels, self.label_smoothing, self.causal = model, levels, label_smoothing, causal
        self.distill = distill

    def forward(self, input_ids, attention_mask, labels, soft=None, items=None, **packed):
        if self.levels is None and not self.label_smoothing and not packed and not self.causal:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        hidden = t5_hidden(self.model, input_ids, attention_mask, labels, causal=self.causal, **packed)
        if self.levels is None:          # whole vocabulary, our cross-entropy (HF's loss has no smoothing)
            logits = hidden @ self.model.lm_head.weight.T
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100, label_smoothing=self.label_smoothing)
        return self.levels.loss(hidden, labels, self.model.lm_head.weight, self.label_smoothing, soft, self.distill,
                                items)


class LevelTrieProcessor(LogitsProcessor):
    """Constrained decoding for HF `generate` with identifier-aware scores.

    At depth t (tokens decoded after the start token) every row gets log_softmax over its level's
    codes (the training distribution), then -inf outside the children of its trie node; after a
    complete identifier only EOS, with log-probability 0. `tries[b]` is the trie of request b
    (rows are request-major, `beams` rows per request). `first` (a CID trie of a `rec_first: items`
    model): the `LevelVocab` whose item rows give depth 0's scores, `first_code_logp`.
    """

    def __init__(self, tries, level_groups: list[np.ndarray], beams: int, eos: int, first: LevelVocab | None = None):
        self.tries, self.beams, self.eos = tries, beams, eos
        self.level_groups = [torch.as_tensor(g) for g in level_groups]
        self.first = first

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - 1                                          # identifier tokens so far
        out = torch.full_like(scores, float("-inf"))
        if t >= len(self.level_groups):
            out[:, self.eos] = 0.0
            return out
        toks = self.level_groups[t].to(scores.device)
        if t == 0 and self.first is not None:                               # the items' mass under each code
            items = torch.as_tensor(self.first.item_tokens, device=scores.device)
            level = self.first.first_from_items(scores[:, items])           # [R, K]
        else:
            level = torch.log_softmax(scores[:, toks], dim=-1)              # [R, K]
        mask = torch.zeros_like(scores, dtype=torch.bool)
        prefixes = input_ids[:, 1:].tolist()
        for row, prefix in enumerate(prefixes):
            allowed = self.tries[row // self.beams].allowed_after(prefix)
            if allowed:
                mask[row, torch.as_tensor(allowed, dtype=torch.long)] = True
        out[:, toks] = level
        out = out.masked_fill(~mask, float("-inf"))
        dead = ~mask.any(1)              # finished or invalid prefix: only EOS, as the trie rule of `full`
        out[dead, self.eos] = 0.0
        return out


def projected_rows(vectors: np.ndarray, d_model: int, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[n, d] vectors -> [n, d_model] embedding rows: `vectors @ P` with P a fixed Gaussian projection
    [d, d_model] (vectors close in their own space start close in the T5's), centred and scaled to `std`."""
    vec = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    proj = torch.randn(vec.shape[1], d_model, generator=gen) / vec.shape[1] ** 0.5
    rows = vec @ proj
    rows = rows - rows.mean(0)
    return rows / rows.std().clamp(min=1e-8) * std


@torch.no_grad()
def init_code_embeddings(model, levels: LevelVocab, codebooks: dict[str, np.ndarray], seed: int = 0) -> list[str]:
    """Start identifier-token embeddings from the RQ-VAE codebooks (`train.init_codes`).

    The rows of level group `name` become `projected_rows(codebooks[name])`. Returns the groups
    initialised; groups without a codebook (the disambiguation code) keep their random rows.
    """
    weight = model.get_input_embeddings().weight                          # [V, D], tied to lm_head
    std = weight.std()
    gen = torch.Generator().manual_seed(seed)
    done = []
    for name, codebook in codebooks.items():
        if name not in levels.names:
            continue
        toks = torch.as_tensor(levels.groups[levels.names.index(name)])
        rows = projected_rows(np.asarray(codebook)[:len(toks)], weight.shape[1], std, gen)      # [K, D]
        weight[toks[:len(rows)]] = rows.to(weight.dtype)
        done.append(name)
    return done


@torch.no_grad()
def init_item_embeddings(model, tokenizer, ids: IdentifierMap, vectors: dict[str, np.ndarray], seed: int = 0) -> int:
    """Start item-token embeddings (`train.item_tokens: sasrec`) from `vectors` (item id -> SASRec-CE's
    item vector), through `projected_rows`; items without a vector keep their random rows. Returns the
    number of rows set."""
    items = [i for i in ids.item_ids if i in vectors]
    if not items or not ids.item_tokens:
        return 0
    weight = model.get_input_embeddings().weight                          # [V, D], tied to lm_head
    toks = torch.as_tensor(check_single_tokens(tokenizer, [ids.item_token(i) for i in items]))
    rows = projected_rows(np.stack([vectors[i] for i in items]), weight.shape[1], weight.std(),
                          torch.Generator().manual_seed(seed + 1))                         # [n, D]
    weight[toks] = rows.to(weight.dtype)
    return len(items)
