"""The GenSAR tokenizer: word pieces for text, one token per identifier code and behavior.

Built offline with `tokenizers` (WordPiece, lowercase, accents stripped) from the corpus the model
reads: item texts, queries and the prompt templates; the vocabulary is chosen deterministically
(`wordpiece_vocab`), so the same data always gives the same token ids. Every identifier token of the map (`<h0_12>`, `<s2_7>`, ...) and the
behavior tokens (`<rec>`, `<query>`, `<click>`) are added as special tokens, so each is exactly ONE
token id and is never split or lowercased. The result is a `PreTrainedTokenizerFast` with T5's
conventions (`<pad>` = 0 is also the decoder start, `</s>` appended to every sequence) and is saved
with `save_pretrained` next to the model.

Identifier tokens added later (warm start with a new identifier map) get new ids at the end of the
vocabulary; the ids of existing tokens never change (`extend_tokenizer`).
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from gensar.model.prompts import BEHAVIOR_TOKENS, TEMPLATES

logger = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def _special(tok: str) -> AddedToken:
    return AddedToken(tok, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def train_tokenizer(texts: Iterable[str], id_tokens: Sequence[str], vocab_size: int = 8000,
                    pretrained: str = "") -> PreTrainedTokenizerFast:
    """A tokenizer for `texts` plus every identifier and behavior token.

    `pretrained`: a local tokenizer directory to start from instead of training one (its word pieces
    are kept; identifier and behavior tokens are added the same way).
    """
    if pretrained:
        tok = AutoTokenizer.from_pretrained(pretrained)
        logger.info("tokenizer: loaded %s (%d tokens)", pretrained, len(tok))
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": PAD})
        if tok.eos_token is None:
            tok.add_special_tokens({"eos_token": EOS})
    else:
        backend = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=50))
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        # the prompt templates' words and punctuation are part of every input: count them too
        template_text = [t.replace("{", " ").replace("}", " ") for ts in TEMPLATES.values() for t in ts] * 3
        vocab = wordpiece_vocab(itertools.chain((t for t in texts if t), template_text),
                                backend.normalizer, backend.pre_tokenizer, vocab_size)
        backend.model = models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=50)
        eos_id = backend.token_to_id(EOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS,
                                      unk_token=UNK, model_max_length=512)
        logger.info("tokenizer: WordPiece with %d word pieces", backend.get_vocab_size())
    added = extend_tokenizer(tok, list(BEHAVIOR_TOKENS) + list(id_tokens))
    logger.info("tokenizer: %d tokens in all (%d behavior/identifier tokens added)", len(tok), added)
    return tok


def wordpiece_vocab(texts: Iterable[str], normalizer, pre_tokenizer, vocab_size: int,
                    max_piece: int = 12) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: special tokens, every character (word-initial and `##`
    continuation), then the word pieces that save the most tokens.

    A piece of n >= 2 characters seen inside a word of count c saves about c * (n - 1) tokens over
    characters; pieces are ranked by that (ties by the piece itself) and the top ones kept. Greedy
    longest-match WordPiece works with any such vocabulary. (The `tokenizers` WordPiece trainer
    gives a different vocabulary in every process, which would break resume and reproducibility.)
    """
    words: Counter = Counter()
    for text in texts:
        for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            words[w] += 1
    chars = sorted({ch for w in words for ch in w})
    base = [PAD, EOS, UNK] + chars + [f"##{ch}" for ch in chars]
    gain: Counter = Counter()
    for w, c in words.items():
        if len(w) > 50:
            continue
        for i in range(len(w)):
            prefix = "##" if i else ""
            for j in range(i + 2, min(len(w), i + max_piece) + 1):
                gain[prefix + w[i:j]] += c * (j - i - 1)
    ranked = sorted(gain.items(), key=lambda kv: (-kv[1], kv[0]))
    pieces = [p for p, _ in ranked[: max(0, vocab_size - len(base))]]
    return {tok: i for i, tok in enumerate(base + pieces)}


def extend_tokenizer(tok: PreTrainedTokenizerFast, tokens: Sequence[str]) -> int:
    """Add `tokens` that are not in the vocabulary yet as special tokens; return how many were new.

    New tokens get ids `len(tok)`, `len(tok)+1`, ...: existing ids are unchanged (warm start relies
    on this to keep the old embedding rows).
    """
    vocab = tok.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if new:
        tok.add_tokens([_special(t) for t in new], special_tokens=True)
    return len(new)


def check_single_tokens(tok: PreTrainedTokenizerFast, tokens: Sequence[str]) -> list[int]:
    """Token id of each of `tokens`; raises when one is missing or would be split."""
    ids = tok.convert_tokens_to_ids(list(tokens))
    unk = tok.unk_token_id
    bad = [t for t, i in zip(tokens, ids) if i is None or (i == unk and t != tok.unk_token)]
    if bad:
        raise ValueError(f"tokenizer: {len(bad)} identifier tokens are not single tokens, e.g. {bad[:5]}")
    return ids


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path))
