"""Identifier tokens: the only thing the generative model knows about the RQ-VAE.

An identifier is a fixed-length tuple of codes. Position `l` of an identifier has a kind:
`h` shared level, `s` semantic-specific level, `c` collaborative-specific level, `d` final
disambiguation code. The token of code `k` at position `l` is `<{kind}{l}_{k}>`, e.g. the semantic
ID (12, 200, 7, 99, 0) of a 2+2 GenSAR map with a disambiguation code is
`<h0_12> <h1_200> <s2_7> <s3_99> <d4_0>`, and its collaborative ID shares the first two tokens.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

TOKEN = re.compile(r"^<([a-z])(\d+)_(\d+)>$")


def code_token(kind: str, level: int, code: int) -> str:
    return f"<{kind}{level}_{int(code)}>"


def parse_token(token: str) -> tuple[str, int, int]:
    """(kind, level, code) of an identifier token `<{kind}{level}_{code}>`."""
    m = TOKEN.match(token)
    if m is None:
        raise ValueError(f"{token!r} is not an identifier token (<kind level _ code>, e.g. <h0_12>)")
    return m.group(1), int(m.group(2)), int(m.group(3))


def id_tokens(codes: Sequence[int], kinds: Sequence[str]) -> list[str]:
    """Tokens of one identifier; `kinds[l]` is the kind of position `l`."""
    if len(codes) != len(kinds):
        raise ValueError(f"identifier {tuple(codes)} has {len(codes)} codes, kinds say {len(kinds)}")
    return [code_token(k, l, c) for l, (k, c) in enumerate(zip(kinds, codes))]


def vocabulary(kinds: Sequence[str], codebook_size: int, disambiguation_size: int) -> list[str]:
    """Every token an identifier with these position kinds can use, in a stable order."""
    out = []
    for level, kind in enumerate(kinds):
        n = disambiguation_size if kind == "d" else codebook_size
        out += [code_token(kind, level, c) for c in range(n)]
    return out
