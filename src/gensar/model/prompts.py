"""Encoder inputs and decoder targets: the ONLY place where GenSAR text is formatted.

A user history is a list of events in time order. An event is anything indexable as
`(behavior, item_id, query)`: behavior `'rec'` or `'search'`, the clicked item, and the query text of a
search event (None for a recommendation click); `gensar.model.examples.Event` is one. A bare item
id string is accepted and read as a recommendation click (lossy: prefer full events). At most
`history_len` most recent events are shown (paper: 5). Each event is rendered with behavior tokens:

    recommendation click   ->  <rec> <h0_3><h1_7><c2_1><c3_5><d4_0>          (the item's CID)
    search session         ->  <query> desk lamp <click> <h0_3><h1_7><s2_4><s3_2><d4_0>   (query + SID)

With an identifier map that has item tokens (`train.item_tokens`), a history entry also shows the
item's own token after its identifier (`... <d4_0> <item_B0001>`): one free embedding per item on the
input side, where the codes are shared by many items; targets stay identifiers. Without the history's
codes (`train.history_codes: false`) the item token stands alone, a third of the tokens per click:

    recommendation click   ->  <rec> <item_B0001>
    search session         ->  <query> desk lamp <click> <item_B0001>

An input longer than `train.max_input_tokens` loses its OLDEST clicks, never its end (the query, the
final `<rec>`): given a token counter (`token_counter`), the input functions leave out the oldest
clicks until the input fits (`render_history(max_tokens=...)`).

A task word at the start and the end of every template tells the model which output space to emit
(CID for `recommend`, SID for `search`, text for `query` / `describe`). Training draws one of several
templates per task (`template=None` with an `rng`); inference always uses template 0, so the PyTorch
model, the ONNX runtime and the evaluation all see exactly the same strings.

Public functions (stable interface, used by training, evaluation and the ONNX runtime):
    rec_input(history, ids)              history -> next recommended item (CID)
    search_input(query, history, ids)    history + current query -> clicked item (SID)
    query_input(history, ids)            history -> next query text
    adhoc_input(query)                   query alone -> item (SID)
    text_to_id_input(text, space)        item text -> SID ('sid') or CID ('cid')
    id_to_text_input(item_id, space, ids)  SID/CID -> item text
    id_target(item_id, space, ids)       target string of an identifier
    text_target(text, max_words)         target string of a text (query or item title)
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd

from gensar.ids.tokens import id_tokens, parse_token, vocabulary

REC, QUERY, CLICK = "<rec>", "<query>", "<click>"
ITEM_TOKEN = "<item_{}>"                 # an item's own input token (`train.item_tokens`)
ITEM_ID_OK = re.compile(r"[^\s<>]+")     # item ids that can be written inside one such token
BEHAVIOR_TOKENS = (REC, QUERY, CLICK)
SPACES = ("sid", "cid")


class IdentifierMap:
    """item id <-> identifier tokens, read from `models/ids/{identifiers.parquet,meta.json}`.

    `sid_tokens(item)` / `cid_tokens(item)` give the token strings of an item's semantic and
    collaborative ID; `tokens()` every identifier token the map can use (tokenizer vocabulary).
    `drop_constant_codes` (`train.drop_constant_codes`): a final disambiguation code that is 0 for
    every item of a space (Sinkhorn left no collision) is left out of that space's identifiers.
    `item_tokens` (`train.item_tokens` other than `none`): history entries also show each item's own
    token `<item_{item_id}>` (`item_token`), an input-only token that targets never use;
    `history_codes` (`train.history_codes`) false: they show it instead of the item's identifier.
    """

    def __init__(self, frame: pd.DataFrame, meta: dict, drop_constant_codes: bool = False,
                 item_tokens: bool = False, history_codes: bool = True):
        for col in ("item_id", "sid", "cid"):
            if col not in frame.columns:
                raise ValueError(f"identifier map: column '{col}' missing (have {list(frame.columns)})")
        for key in ("sid_kinds", "cid_kinds", "codebook_size"):
            if key not in meta:
                raise ValueError(f"identifier map meta: key '{key}' missing (have {sorted(meta)})")
        self.meta = dict(meta)
        self.sid_kinds = list(meta["sid_kinds"])
        self.cid_kinds = list(meta["cid_kinds"])
        self.item_ids = [str(i) for i in frame["item_id"]]
        sid, cid = [list(c) for c in frame["sid"]], [list(c) for c in frame["cid"]]
        self.dropped = []
        if drop_constant_codes:
            # a final disambiguation code that is 0 for every item carries nothing: drop it
            for space, codes, kinds in (("sid", sid, self.sid_kinds), ("cid", cid, self.cid_kinds)):
                if kinds and kinds[-1] == "d" and all(c[-1] == 0 for c in codes):
                    for c in codes:
                        c.pop()
                    kinds.pop()
                    self.dropped.append(space)
        self._sid = {i: id_tokens(c, self.sid_kinds) for i, c in zip(self.item_ids, sid)}
        self._cid = {i: id_tokens(c, self.cid_kinds) for i, c in zip(self.item_ids, cid)}
        if len(self._sid) != len(self.item_ids):
            raise ValueError("identifier map: item_id is not unique")
        self.item_tokens, self.history_codes = bool(item_tokens), bool(history_codes)
        if not (self.history_codes or self.item_tokens):
            raise ValueError("identifier map: train.history_codes false needs train.item_tokens random or sasrec "
                             "(a history entry would show nothing of its item)")
        if self.item_tokens:
            bad = [i for i in self.item_ids if not ITEM_ID_OK.fullmatch(i)]
            if bad:
                raise ValueError(f"identifier map: {len(bad)} item ids cannot be item tokens (train.item_tokens needs "
                                 f"ids without whitespace or '<>'), e.g. {bad[:3]}")

    @classmethod
    def load(cls, ids_dir: str | Path, drop_constant_codes: bool = False, item_tokens: bool = False,
             history_codes: bool = True) -> IdentifierMap:
        ids_dir = Path(ids_dir)
        frame = pd.read_parquet(ids_dir / "identifiers.parquet")
        meta = json.loads((ids_dir / "meta.json").read_text())
        return cls(frame, meta, drop_constant_codes, item_tokens, history_codes)

    @classmethod
    def for_training(cls, ids_dir: str | Path, train) -> IdentifierMap:
        """The map as a model trained with `train` (a `TrainConfig`) renders it: THE translation of the
        train.* keys that change rendering (the export writes the same into its `generation` block)."""
        return cls.load(ids_dir, train.drop_constant_codes, train.item_tokens != "none", train.history_codes)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id) -> bool:
        return item_id in self._sid

    def tokens_of(self, item_id: str, space: str) -> list[str]:
        table = self._sid if space == "sid" else self._cid
        try:
            return table[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} has no identifier in the identifier map") from None

    def item_token(self, item_id: str) -> str:
        """The item's own input token (`train.item_tokens`)."""
        if item_id not in self._sid:
            raise KeyError(f"item {item_id!r} has no identifier in the identifier map")
        return ITEM_TOKEN.format(item_id)

    def all_item_tokens(self) -> list[str]:
        """Every item token, in the map's item order; none when the map has no item tokens."""
        return [ITEM_TOKEN.format(i) for i in self.item_ids] if self.item_tokens else []

    def sid_tokens(self, item_id: str) -> list[str]:
        return self.tokens_of(item_id, "sid")

    def cid_tokens(self, item_id: str) -> list[str]:
        return self.tokens_of(item_id, "cid")

    def tokens(self) -> list[str]:
        """Every token either identifier space can use, in a stable order, without duplicates."""
        dis = int(self.meta.get("disambiguation_size", 0) or 0)
        size = int(self.meta["codebook_size"])
        out = vocabulary(self.sid_kinds, size, dis) + vocabulary(self.cid_kinds, size, dis)
        # codes actually used beyond the declared sizes (defensive: a map is the source of truth)
        for table in (self._sid, self._cid):
            for toks in table.values():
                out += toks
        return list(dict.fromkeys(out))

    def level_groups(self) -> dict[str, list[str]]:
        """Every identifier token by level group (`h0`, `s2`, `c3`, `d4`, ...), each in code order: the
        codes one identifier position chooses from (`train.id_loss: level` scores over them)."""
        groups: dict[str, list[tuple[int, str]]] = {}
        for tok in self.tokens():
            kind, level, code = parse_token(tok)
            groups.setdefault(f"{kind}{level}", []).append((code, tok))
        return {g: [t for _, t in sorted(v)] for g, v in groups.items()}

    def space_groups(self, space: str) -> list[str]:
        """The level group of each position of the `space` ('sid' or 'cid') identifiers."""
        kinds = self.sid_kinds if space == "sid" else self.cid_kinds
        return [f"{k}{t}" for t, k in enumerate(kinds)]

    def cid_spaces(self) -> tuple[str, ...]:
        """The spaces whose identifiers are collaborative IDs: ('cid',), or both when the two spaces use
        the same identifiers (`ids.mode` semantic or collaborative: one identifier serves both tasks)."""
        return ("sid", "cid") if self.space_groups("sid") == self.space_groups("cid") else ("cid",)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def clip_words(text: str, max_words: int) -> str:
    """Lowercased text with at most `max_words` whitespace words (keeps inputs short)."""
    return " ".join(str(text).lower().split()[:max_words])


def id_string(item_id: str, space: str, ids: IdentifierMap) -> str:
    """Identifier tokens written without spaces: `<h0_3><h1_7><s2_4><s3_2><d4_0>`."""
    return "".join(ids.tokens_of(item_id, space))


TWINS = ("rec", "search", "both")


def history_clicks(history: Sequence, twins: str = "rec") -> list[list]:
    """The history as clicks, oldest first: each click is the list of its events to render.

    In `queries.mode: paper` one click is two twin events at the same step (its recommendation
    event and its search event). `twins` says what a click with twins shows: `rec` its CID entry,
    `search` its query + SID entry, `both` both entries (still one click). Events without a step
    (API histories of `(behavior, item_id, query)`, bare item ids) are one click each.
    """
    if twins not in TWINS:
        raise ValueError(f"history twins must be one of {', '.join(TWINS)}, got {twins!r}")
    clicks: list[list] = []
    last_step = None
    for ev in history:
        ev = ("rec", ev, None) if isinstance(ev, str) else ev
        step = ev[3] if len(ev) > 3 and ev[3] is not None and ev[3] >= 0 else None
        if step is not None and step == last_step:
            clicks[-1].append(ev)
        else:
            clicks.append([ev])
        last_step = step
    if twins == "both":
        return clicks
    out = []
    for click in clicks:
        chosen = [e for e in click if e[0] == twins] if len(click) > 1 else click
        out.append(chosen[-1:] if chosen else click[:1])
    return out


def render_event(ev, ids: IdentifierMap, max_query_words: int = 16) -> str:
    """One history entry: `<rec> CID` or `<query> words <click> SID` (+ ` <item_X>` with item tokens;
    `<item_X>` in place of the identifier without the history's codes)."""
    behavior, item_id, query = ev[0], ev[1], ev[2]
    if behavior not in ("rec", "search"):
        raise ValueError(f"history event {tuple(ev)!r}: behavior must be 'rec' or 'search'")
    shown = [id_string(item_id, "cid" if behavior == "rec" else "sid", ids)] if ids.history_codes else []
    shown += [ids.item_token(item_id)] if ids.item_tokens else []
    if behavior == "rec":
        return f"{REC} {' '.join(shown)}"
    return f"{QUERY} {clip_words(query or '', max_query_words)} {CLICK} {' '.join(shown)}"


def token_counter(encode: Callable[[str], Sequence[int]]) -> Callable[[str], int]:
    """text -> number of tokens, `encode` being a tokenizer without special tokens; memoised (the same
    click renders the same way in many inputs). Tokens of texts joined by a space add up (the
    tokenizers split on whitespace first), which lets the history be fitted click by click."""
    @lru_cache(maxsize=1 << 18)
    def count(text: str) -> int:
        return len(encode(text))
    return count


def render_history(history: Sequence, ids: IdentifierMap, history_len: int = 5,
                   max_query_words: int = 16, twins: str = "rec", empty: str = "none",
                   max_tokens: int | None = None, count: Callable[[str], int] | None = None) -> str:
    """The `history_len` most recent clicks as behavior-token text (see module docstring). With
    `max_tokens` and `count`: the oldest of them are left out until the rest is at most `max_tokens`."""
    clicks = history_clicks(history, twins)[-history_len:] if history_len > 0 else []
    parts = [" ".join(render_event(ev, ids, max_query_words) for ev in click) for click in clicks]
    if max_tokens is not None and count is not None:
        sizes = [count(part) for part in parts]
        total = sum(sizes)
        while parts and total > max_tokens:
            total -= sizes.pop(0)
            parts.pop(0)
    return " ".join(parts) if parts else empty


def _budget(rest: str, max_tokens: int | None, count: Callable[[str], int] | None, causal: bool) -> int | None:
    """Tokens left for the history in an input whose other text is `rest` (the template filled without
    the history); a bidirectional model's inputs also carry an EOS."""
    if max_tokens is None or count is None:
        return None
    return max_tokens - count(rest) - (0 if causal else 1)


# Causal encoder (`train.causal`): the recommendation input ends with the behavior token of the click to
# come, so the input of a request with history h is exactly the first tokens of the input of a longer
# history that starts with h: one sequence of clicks trains every position (`rec_sequence`).
REC_CAUSAL = "recommend: history: {h} " + REC


def rec_sequence(clicks: Sequence[Sequence], ids: IdentifierMap, n_context: int = 0,
                 max_query_words: int = 16) -> tuple[str, tuple[str | None, ...]]:
    """One causal training input over `clicks` (lists of events, `history_clicks`) and its targets.

    Returns (source, targets): the source renders every click, and `targets[k]` is the CID that
    follows the k-th `<rec>` token of the source (the k-th recommendation click), or None where it is
    not a target (the first `n_context` clicks are history only). What the encoder has read up to
    and including that `<rec>` is exactly `rec_input(clicks before it, causal=True)`, the inference
    input. Search clicks are history only here (their SID is trained by the search task, whose input
    template differs).
    """
    parts, targets, taught = [], [], set(rec_targets(clicks, n_context))
    for k, click in enumerate(clicks):
        if len(click) != 1:
            raise ValueError("rec_sequence: a click must render as one entry (train.causal needs "
                             "train.history_twins rec or search)")
        ev = click[0]
        parts.append(render_event(ev, ids, max_query_words))
        if ev[0] == "rec":
            targets.append(id_string(ev[1], "cid", ids) if k in taught else None)
    return "recommend: history: " + " ".join(parts), tuple(targets)


def rec_targets(clicks: Sequence[Sequence], n_context: int = 0) -> list[int]:
    """Which of a causal rec sequence's clicks are targets: the recommendation clicks after the
    first `n_context` (those are history only). THE rule; `rec_sequence` and the teacher's rows
    (`ExampleBuilder`) both read it."""
    return [k for k, click in enumerate(clicks) if k >= n_context and click[0][0] == "rec"]


# Several templates per task for training; template 0 is THE inference template.
# `{h}` history, `{q}` query, `{t}` item text, `{i}` identifier string.
TEMPLATES: dict[str, list[str]] = {
    "rec": [
        "recommend: history: {h} recommend:",
        "recommend: the user interacted with {h} . what is the next item? recommend:",
        "recommend: {h} next recommendation recommend:",
    ],
    "search": [
        "search: history: {h} query: {q} search:",
        "search: the user interacted with {h} and now searches for {q} search:",
        "search: query: {q} history: {h} search:",
    ],
    "query": [
        "query: history: {h} query:",
        "query: the user interacted with {h} . what will the user search next? query:",
    ],
    "adhoc": [
        "search: query: {q} search:",
        "search: find an item for {q} search:",
    ],
    "text_to_sid": [
        "search: item: {t} search:",
        "search: which item is described as {t} search:",
    ],
    "text_to_cid": [
        "recommend: item: {t} recommend:",
        "recommend: which item is described as {t} recommend:",
    ],
    "sid_to_text": [
        "describe: {i} describe:",
        "describe: what is item {i} describe:",
    ],
    "cid_to_text": [
        "describe: {i} describe:",
        "describe: what is item {i} describe:",
    ],
}


def _pick(task: str, template: int | None, rng: random.Random | None) -> str:
    options = TEMPLATES[task]
    if template is None:
        template = rng.randrange(len(options)) if rng is not None else 0
    return options[template % len(options)]


# The history-reading inputs. `max_tokens` and `count` (both or neither): fit the input to `max_tokens`
# tokens by leaving out the oldest clicks (the model's train.max_input_tokens and its tokenizer).
def rec_input(history: Sequence, ids: IdentifierMap, history_len: int = 5, max_query_words: int = 16,
              template: int | None = 0, rng: random.Random | None = None, twins: str = "rec",
              causal: bool = False, max_tokens: int | None = None, count: Callable[[str], int] | None = None
              ) -> str:
    if causal:    # the one template `rec_sequence` trains; an empty history shows nothing
        budget = _budget(REC_CAUSAL.format(h=""), max_tokens, count, causal)
        h = render_history(history, ids, history_len, max_query_words, twins, "", budget, count)
        return REC_CAUSAL.format(h=h).replace("  ", " ")
    form = _pick("rec", template, rng)
    h = render_history(history, ids, history_len, max_query_words, twins, "none",
                       _budget(form.format(h=""), max_tokens, count, causal), count)
    return form.format(h=h)


def search_input(query: str, history: Sequence, ids: IdentifierMap, history_len: int = 5,
                 max_query_words: int = 16, template: int | None = 0,
                 rng: random.Random | None = None, twins: str = "rec", causal: bool = False,
                 max_tokens: int | None = None, count: Callable[[str], int] | None = None) -> str:
    form, q = _pick("search", template, rng), clip_words(query, max_query_words)
    h = render_history(history, ids, history_len, max_query_words, twins, "none",
                       _budget(form.format(h="", q=q), max_tokens, count, causal), count)
    return form.format(h=h, q=q)


def query_input(history: Sequence, ids: IdentifierMap, history_len: int = 5, max_query_words: int = 16,
                template: int | None = 0, rng: random.Random | None = None, twins: str = "rec",
                causal: bool = False, max_tokens: int | None = None, count: Callable[[str], int] | None = None
                ) -> str:
    form = _pick("query", template, rng)
    h = render_history(history, ids, history_len, max_query_words, twins, "none",
                       _budget(form.format(h=""), max_tokens, count, causal), count)
    return form.format(h=h)


def adhoc_input(query: str, max_query_words: int = 16, template: int | None = 0,
                rng: random.Random | None = None) -> str:
    return _pick("adhoc", template, rng).format(q=clip_words(query, max_query_words))


def text_to_id_input(text: str, space: str, max_words: int = 48, template: int | None = 0,
                     rng: random.Random | None = None) -> str:
    """Alignment input: item text -> identifier of `space` ('sid' or 'cid')."""
    return _pick(f"text_to_{space}", template, rng).format(t=clip_words(text, max_words))


def id_to_text_input(item_id: str, space: str, ids: IdentifierMap, template: int | None = 0,
                     rng: random.Random | None = None) -> str:
    """Alignment input: identifier of `space` -> item text."""
    return _pick(f"{space}_to_text", template, rng).format(i=id_string(item_id, space, ids))


def id_target(item_id: str, space: str, ids: IdentifierMap) -> str:
    return id_string(item_id, space, ids)


def text_target(text: str, max_words: int = 16) -> str:
    return clip_words(text, max_words)
