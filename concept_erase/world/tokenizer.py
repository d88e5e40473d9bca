"""A CLIP tokenizer for the shapes world, built from a local vocabulary (no hub download).

CLIP's byte-pair encoding splits a word into characters (the last one marked ``</w>``) and merges
pairs in rank order. The merges written here rebuild every world word from its characters left to
right, so each known word is one token; an unknown word falls back to single characters.
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer

from .vocab import WORDS

__all__ = ["build_tokenizer", "MAX_LENGTH"]

MAX_LENGTH = 16  # captions are at most ~11 tokens; 16 keeps the text encoder and cross-attention cheap
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair merge loop: repeatedly join the adjacent pair of lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def _vocab_and_merges(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens: list[str] = [BOS, EOS]
    chars = string.ascii_lowercase + string.digits + ",.'!?-"
    tokens += list(chars) + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Merge whatever the existing rules leave of this word, left to right. New rules rank after
        # all existing ones, so words already reduced to one token are not affected.
        pieces = _bpe(word, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks.setdefault(pair, len(ranks))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            tokens.append(pieces[0])
    assert all(len(_bpe(w, ranks)) == 1 for w in words)  # internal invariant, not user input
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, sorted(ranks, key=ranks.get)


def build_tokenizer() -> CLIPTokenizer:
    """The world tokenizer: every world word is a single token.

    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a red circle").input_ids)
    ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>']
    """
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
