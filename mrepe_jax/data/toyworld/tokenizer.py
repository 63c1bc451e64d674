"""A word-level tokenizer over ToyWorld's closed vocabulary.

Special ids: ``<pad>`` = 0, ``<bos>`` = 1, ``<unk>`` = 2, ``<eos>`` = 3; words follow from id 4
in sorted order. EOS is deliberately not id 2: CLIP's text pooling has two branches and
``eos_token_id == 2`` selects the legacy "argmax of ids" branch, while any other id selects the
"first EOS token" branch that real checkpoints use, so ToyWorld exercises that one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrepe_jax.data.toyworld.text import caption_vocabulary, split_words

PAD, BOS, UNK, EOS = "<pad>", "<bos>", "<unk>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, UNK, EOS)


class ToyTokenizer:
    """Maps captions to ``(input_ids, attention_mask)``: BOS, words, EOS, then PAD."""

    def __init__(self, words: Sequence[str] | None = None):
        words = tuple(caption_vocabulary() if words is None else words)
        clash = set(words) & set(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"vocabulary words {sorted(clash)} collide with special tokens")
        self._tokens: tuple[str, ...] = SPECIAL_TOKENS + words
        self._ids = {tok: i for i, tok in enumerate(self._tokens)}
        if len(self._ids) != len(self._tokens):
            raise ValueError("vocabulary contains duplicate words")
        self.pad_token_id = self._ids[PAD]
        self.bos_token_id = self._ids[BOS]
        self.unk_token_id = self._ids[UNK]
        self.eos_token_id = self._ids[EOS]

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """All tokens, indexed by id."""
        return self._tokens

    def token_id(self, word: str) -> int:
        return self._ids.get(word, self.unk_token_id)

    def encode(self, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Encode a list of captions to int32 ``input_ids`` and ``attention_mask`` of [B, max_len].

        Over-long captions are truncated to ``max_len - 2`` words so that EOS is always present
        (the text tower pools at the first EOS). Unknown words map to ``<unk>``.
        """
        if isinstance(captions, str):
            raise TypeError("encode expects a list of captions, got a single str; wrap it in a list")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold BOS and EOS, got {max_len}")
        ids = np.full((len(captions), max_len), self.pad_token_id, np.int32)
        mask = np.zeros((len(captions), max_len), np.int32)
        for row, caption in enumerate(captions):
            words = split_words(caption)[:max_len - 2]
            seq = [self.bos_token_id, *(self.token_id(w) for w in words), self.eos_token_id]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Words of one id sequence, up to the first EOS, without special tokens."""
        words = []
        for i in np.asarray(ids).tolist():
            if i == self.eos_token_id:
                break
            if i in (self.pad_token_id, self.bos_token_id):
                continue
            words.append(self._tokens[i])
        return " ".join(words)
