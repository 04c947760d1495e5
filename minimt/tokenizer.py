"""Tokenizers: text <-> integer ids. A byte-level BPE (trained with HF `tokenizers`, as GPT-2) and
a character tokenizer (as nanoGPT's shakespeare_char), behind one small interface. Both round-trip
any Unicode string exactly: `decode(encode(s)) == s`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from .checks import check_int

N_BYTES = 256  # every UTF-8 byte value gets a token, so no text is ever out of vocabulary


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of minimt needs from a tokenizer."""

    vocab_size: int  # ids are 0 .. vocab_size - 1
    identity: str  # short string naming this exact vocabulary (used in cache file names)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _as_id_list(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Accept a list, tuple, numpy array or torch tensor of ids; refuse ids outside the vocabulary."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    ids = [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}); "
                         "were these ids made by another tokenizer?")
    return ids


def _check_text(where: str, text, allow_list: bool) -> None:
    """Training text is a str (or, where allowed, a list of str); bytes and lists get a fix."""
    if isinstance(text, str) or (allow_list and isinstance(text, (list, tuple))
                                 and all(isinstance(t, str) for t in text)):
        return
    kind = "a str or a list of str" if allow_list else "one str"
    if isinstance(text, (list, tuple)):
        bad = next((t for t in text if not isinstance(t, str)), None)
        got = f"a {type(text).__name__} of {type(bad).__name__ if allow_list else 'lines'}"
        fix = ("decode each item: [t.decode('utf-8') for t in items]" if isinstance(bad, bytes)
               else "make every item a str" if allow_list
               else "join the lines first: ''.join(lines) (each keeps its '\\n')")
    else:
        got = type(text).__name__
        fix = "decode it first: text.decode('utf-8')" if isinstance(text, bytes) \
            else "pass the corpus as text, e.g. open(path, encoding='utf-8').read()"
    raise TypeError(f"{where} needs {kind}, got {got}; {fix}")


def _short_hash(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:16]


class CharTokenizer:
    """One token per character of the training text, plus a byte fallback for everything else.

    Rule: the known characters, sorted, get ids 0 .. n_chars-1 (tinyshakespeare: 65 of them, the
    same ids as nanoGPT's shakespeare_char). A character not seen in `text` is written as its
    UTF-8 bytes, byte b getting id n_chars + b (ids n_chars .. n_chars+255). Decoding joins runs of
    byte ids back into UTF-8 (invalid byte runs, which only a sampling model can produce, become
    U+FFFD). `vocab_size` = n_chars + 256. With `byte_fallback=False` there are no byte ids
    (vocab_size = n_chars exactly, as nanoGPT) and an unknown character is an error.
    """

    def __init__(self, text: str, byte_fallback: bool = True):
        _check_text("CharTokenizer(text)", text, allow_list=False)
        self.chars = sorted(set(text))
        self.byte_fallback = byte_fallback
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.n_chars = len(self.chars)
        self.vocab_size = self.n_chars + (N_BYTES if byte_fallback else 0)
        self.identity = f"char{self.vocab_size}-{_short_hash(json.dumps(self.chars))}"

    def encode(self, text: str) -> list[int]:
        try:  # fast path: every character is known
            return [self.stoi[c] for c in text]
        except KeyError:
            pass
        ids = []
        for c in text:
            i = self.stoi.get(c)
            if i is not None:
                ids.append(i)
            elif self.byte_fallback:
                ids.extend(self.n_chars + b for b in c.encode("utf-8"))
            else:
                raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in the vocabulary of "
                                 f"{self.n_chars} characters; use CharTokenizer(..., "
                                 "byte_fallback=True) to encode any text")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out, pending = [], bytearray()  # pending: a run of fallback bytes not yet decoded
        for i in _as_id_list(ids, self.vocab_size):
            if i < self.n_chars:
                if pending:
                    out.append(pending.decode("utf-8", errors="replace"))
                    pending.clear()
                out.append(self.chars[i])
            else:
                pending.append(i - self.n_chars)
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return (f"CharTokenizer(n_chars={self.n_chars}, vocab_size={self.vocab_size}, "
                f"byte_fallback={self.byte_fallback})")


class BPETokenizer:
    """Byte-level BPE (Sennrich et al. 2016, arXiv 1508.07909; byte-level as GPT-2, Radford et al.
    2019): text -> UTF-8 bytes -> merges learned from a corpus. Wraps an HF `tokenizers.Tokenizer`,
    available as `.hf_tokenizer` (e.g. `.id_to_token(i)` shows a merge, 'Ġ' standing for a space)."""

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
        self.hf_tokenizer = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.identity = f"bpe{self.vocab_size}-{_short_hash(hf_tokenizer.to_str())}"

    def encode(self, text: str) -> list[int]:
        return self.hf_tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf_tokenizer.decode(_as_id_list(ids, self.vocab_size))

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as HF JSON (readable back with `BPETokenizer.from_file`)."""
        self.hf_tokenizer.save(str(path))

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, identity={self.identity!r})"


def train_bpe(text: str | list[str], vocab_size: int) -> BPETokenizer:
    """Learn a byte-level BPE with at most `vocab_size` tokens from `text` (a string or a list of
    strings, e.g. one per corpus). The 256 byte tokens come first, so any UTF-8 text encodes; fewer
    than `vocab_size` tokens result when the text runs out of pairs to merge."""
    _check_text("train_bpe(text)", text, allow_list=True)
    check_int("vocab_size", vocab_size, N_BYTES, f": a byte-level BPE needs one token per byte "
              f"value; use vocab_size >= {N_BYTES}")
    texts = [text] if isinstance(text, str) else list(text)
    hf = tokenizers.Tokenizer(models.BPE())
    # add_prefix_space=False: no space is invented in front of the text, so the round trip is exact.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(hf)


@dataclass(frozen=True)
class Compression:
    """How much text one token carries: the numbers to compare tokenizers by."""

    n_chars: int
    n_bytes: int  # UTF-8 bytes
    n_tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / self.n_tokens

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / self.n_tokens

    @property
    def tokens_per_char(self) -> float:
        return self.n_tokens / self.n_chars


def measure_compression(tokenizer: Tokenizer, text: str) -> Compression:
    """Encode `text` and count characters, UTF-8 bytes and tokens."""
    if not text:
        raise ValueError("measure_compression needs a non-empty text")
    return Compression(len(text), len(text.encode("utf-8")), len(tokenizer.encode(text)))
