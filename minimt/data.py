"""Corpus -> token ids -> (x, y) batches. Corpora are the text files in the repo's data/ folder;
tokenizers and token ids derived from them are cached in `.cache/` (or $MINIMT_CACHE), keyed by the
corpus content hash and the tokenizer, so a notebook pays for training/encoding once."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from minimt.blending import blending_indices  # noqa: F401  (minimt.data's public names)
from minimt.indexed import IndexedDataset  # noqa: F401
from minimt.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, train_bpe

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder holding <name>.txt corpora: $MINIMT_DATA if set, else the repo's data/."""
    return Path(os.environ.get("MINIMT_DATA", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """The folder for derived artefacts (created on demand): $MINIMT_CACHE if set, else .cache/."""
    path = Path(os.environ.get("MINIMT_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def available_corpora() -> list[str]:
    return sorted(p.stem for p in data_dir().glob("*.txt"))


def corpus_path(name: str) -> Path:
    path = data_dir() / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"unknown corpus {name!r}; available in {data_dir()}: "
                         f"{', '.join(available_corpora()) or '(none)'}; put {name}.txt there, "
                         f"or set $MINIMT_DATA to the folder that holds it")
    return path


def load_corpus(name: str) -> str:
    """The text of data/<name>.txt, e.g. load_corpus("tinyshakespeare") or "lunyu"."""
    return corpus_path(name).read_text(encoding="utf-8")


def corpus_hash(name: str) -> str:
    """Short sha256 of the corpus file's bytes: a cache key that changes when the text does."""
    return hashlib.sha256(corpus_path(name).read_bytes()).hexdigest()[:16]


def _cached(path: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` unless `path` exists; the rename makes concurrent ranks safe."""
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        os.close(fd)
        try:
            build(Path(tmp))
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is for every user
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def load_bpe(corpus_names: str | Sequence[str], vocab_size: int) -> BPETokenizer:
    """A byte-level BPE trained on the named corpora, trained once then read from the cache."""
    names = [corpus_names] if isinstance(corpus_names, str) else list(corpus_names)
    if not names:
        raise ValueError("load_bpe needs at least one corpus name")
    key = "-".join(f"{n}_{corpus_hash(n)}" for n in names)
    path = cache_dir() / f"bpe-{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    _cached(path, lambda tmp: train_bpe([load_corpus(n) for n in names], vocab_size).save(tmp))
    return BPETokenizer.from_file(path)


def encode_corpus(name: str, tokenizer: Tokenizer) -> torch.Tensor:
    """All of data/<name>.txt as token ids, a 1-D LongTensor; cached as .npy per corpus+tokenizer."""
    path = cache_dir() / f"ids-{name}-{corpus_hash(name)}-{tokenizer.identity}.npy"
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32  # half/quarter the disk

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so np.save does not append another ".npy"
            np.save(f, np.array(tokenizer.encode(load_corpus(name)), dtype=dtype))

    ids = np.load(_cached(path, build))
    return torch.from_numpy(ids.astype(np.int64))


class TokenDataset:
    """Token ids split into train (first part) and val (last `val_fraction`), as nanoGPT; samples
    random windows of block_size + 1 tokens as (x, y) language-modelling batches."""

    def __init__(self, ids: torch.Tensor | Sequence[int], val_fraction: float = 0.1):
        ids = torch.as_tensor(ids)
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"ids must be a 1-D sequence of integer token ids, got dtype "
                             f"{ids.dtype} and shape {tuple(ids.shape)}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
        ids = ids.long()
        n_train = int(len(ids) * (1 - val_fraction))
        self.val_fraction = val_fraction
        self.train = ids[:n_train]  # (N_train,)
        self.val = ids[n_train:]  # (N_val,)

    def split(self, split: str) -> torch.Tensor:
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, block_size), y[b, t] = x[b, t+1]: the next-token targets.
        Windows start at uniform random offsets drawn from `generator` (same seed, same batch)."""
        data = self.split(split)
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size={batch_size} and block_size={block_size} must be >= 1")
        if block_size + 1 > len(data):
            raise ValueError(f"block_size={block_size} is too large for the {split} split of "
                             f"{len(data)} tokens (a window needs block_size + 1 tokens); use a "
                             "smaller block_size or a larger corpus/val_fraction")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
        index = starts[:, None] + torch.arange(block_size)  # (B, T)
        x, y = data[index], data[index + 1]  # (B, T), (B, T)
        if device is not None and torch.device(device).type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def __repr__(self) -> str:
        return f"TokenDataset(train={len(self.train)} tokens, val={len(self.val)} tokens)"


def char_dataset(name: str = "tinyshakespeare", val_fraction: float = 0.1,
                 byte_fallback: bool = True) -> tuple[CharTokenizer, TokenDataset]:
    """nanoGPT's shakespeare_char data: a character tokenizer over the whole corpus, and its ids."""
    tokenizer = CharTokenizer(load_corpus(name), byte_fallback=byte_fallback)
    return tokenizer, TokenDataset(encode_corpus(name, tokenizer), val_fraction)


def bpe_dataset(name: str = "tinyshakespeare", vocab_size: int = 4096, val_fraction: float = 0.1,
                tokenizer_corpora: str | Sequence[str] | None = None
                ) -> tuple[BPETokenizer, TokenDataset]:
    """A BPE (trained on `tokenizer_corpora`, default the corpus itself) and the corpus's ids."""
    tokenizer = load_bpe(tokenizer_corpora or name, vocab_size)
    return tokenizer, TokenDataset(encode_corpus(name, tokenizer), val_fraction)
