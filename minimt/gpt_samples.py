"""Megatron's GPT samples from an indexed dataset: three indices, built once, then every sample is
two look-ups and a slice of the memory-mapped tokens (megatron/core/datasets/gpt_dataset.py).

- document index: every document id once per epoch, shuffled (the order documents are read in);
- sample index: (position in the document index, token offset) where each sample starts: sample i
  starts at token i * seq_length of that concatenated stream and holds seq_length + 1 tokens (the
  inputs and, shifted by one, the targets: neighbouring samples share one token);
- shuffle index: a permutation of the samples (the order training reads them in).
The same files, sequence length, split, sample count and seed give megatron-core's samples."""
from __future__ import annotations

import numpy as np
import torch

from .indexed import IndexedDataset

LAST_EPOCH_THRESHOLD = 0.80  # a final epoch needing fewer than 80% of its samples is shuffled apart


def split_ranges(split: str, num_documents: int) -> list[range]:
    """Megatron's --split "969,30,1": the train, valid and test document ranges (weights
    normalised, book-ends rounded to whole documents)."""
    try:  # a minus sign or a word is refused, not skipped
        weights = [float(w) for w in str(split).replace("/", ",").split(",")]
    except ValueError:
        weights = []
    if not weights or len(weights) > 3 or not all(0 <= w < float("inf") for w in weights) \
            or sum(weights) <= 0:
        raise ValueError(f"--split {split!r} must be 1 to 3 non-negative weights with a positive "
                         "sum, e.g. '969,30,1' (train, valid, test)")
    weights = [w / sum(weights) for w in weights + [0.0] * (3 - len(weights))]
    ends = np.cumsum([0.0] + weights)
    return [range(int(round(a * num_documents)), int(round(b * num_documents)))
            for a, b in zip(ends[:-1], ends[1:])]


def num_epochs(tokens_per_epoch: int, num_samples: int, seq_length: int) -> int:
    """The fewest passes over the documents that hold num_samples * seq_length + 1 tokens."""
    if tokens_per_epoch < 1:
        raise ValueError("these documents hold no tokens: check the split and the data files")
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def document_index(documents: np.ndarray, epochs: int, rng: np.random.RandomState,
                   separate_final_epoch: bool) -> np.ndarray:
    """The document ids repeated `epochs` times and shuffled (the last epoch on its own when
    `separate_final_epoch`, so a part epoch is not spread thin over the whole run); int32."""
    if separate_final_epoch and epochs > 1:
        return np.concatenate([document_index(documents, epochs - 1, rng, False),
                               document_index(documents, 1, rng, False)])
    index = np.tile(np.asarray(documents, dtype=np.int32), epochs)        # (epochs * D,)
    rng.shuffle(index)
    return index


def sample_index(sizes: np.ndarray, doc_index: np.ndarray, seq_length: int,
                 tokens_per_epoch: int, epochs: int) -> np.ndarray:
    """(N + 1, 2) int32: for each sample boundary, (position in doc_index, token offset). Sample i
    spans tokens i * seq_length .. (i + 1) * seq_length (inclusive: one extra token) of the stream."""
    n = (epochs * tokens_per_epoch - 1) // seq_length                       # whole samples
    lengths = sizes[doc_index].astype(np.int64)                             # (epochs * D,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])                 # first token of each
    positions = np.arange(n + 1, dtype=np.int64) * seq_length               # (N + 1,)
    where = np.searchsorted(starts, positions, side="right") - 1            # (N + 1,)
    return np.stack([where, positions - starts[where]], axis=1).astype(np.int32)


def shuffle_index(num_samples: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of range(total): the first num_samples shuffled among themselves, the rest
    (a separate final epoch's samples) among themselves; uint32."""
    first = np.arange(num_samples, dtype=np.uint32)
    rng.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, dtype=np.uint32)
    rng.shuffle(last)
    return np.concatenate([first, last])


class GPTSamples:
    """`num_samples` samples of seq_length + 1 tokens drawn from `documents` of an IndexedDataset,
    in Megatron's order for `seed`; `samples[i]` is an int64 numpy array."""

    def __init__(self, dataset: IndexedDataset, documents: range | np.ndarray, num_samples: int,
                 seq_length: int, seed: int = 1234):
        if seq_length < 2 or num_samples < 1:
            raise ValueError(f"seq_length={seq_length} must be >= 2 and num_samples={num_samples} "
                             ">= 1")
        self.dataset, self.seq_length = dataset, seq_length
        documents = np.asarray(documents, dtype=np.int32)
        tokens = int(dataset.sequence_lengths[documents].sum())
        epochs = num_epochs(tokens, num_samples, seq_length)
        separate = False
        if epochs > 1:  # does the last epoch contribute too few samples to mix with the others?
            before = ((epochs - 1) * tokens - 1) // seq_length
            per_epoch = (tokens - 1) // seq_length
            separate = num_samples - before < int(LAST_EPOCH_THRESHOLD * per_epoch)
        rng = np.random.RandomState(seed)
        self.document_index = document_index(documents, epochs, rng, separate)
        self.sample_index = sample_index(dataset.sequence_lengths, self.document_index,
                                         seq_length, tokens, epochs)
        total = len(self.sample_index) - 1
        self.shuffle_index = shuffle_index(before if separate else total, total, rng)
        self.num_samples, self.epochs = num_samples, epochs

    def __len__(self) -> int:
        return len(self.shuffle_index)

    def __getitem__(self, i: int) -> np.ndarray:
        j = int(self.shuffle_index[i])
        (first, offset), (last, end) = self.sample_index[j], self.sample_index[j + 1]
        parts = []
        for k in range(first, last + 1):
            doc = int(self.document_index[k])
            start = int(offset) if k == first else 0
            parts.append(self.dataset.get(doc, start, int(end) + 1 - start) if k == last
                         else self.dataset.get(doc, start))
        return np.concatenate(parts).astype(np.int64)                       # (seq_length + 1,)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (len(indices), seq_length): inputs and next-token targets."""
        tokens = torch.from_numpy(np.stack([self[int(i)] for i in indices]))  # (B, T + 1)
        return tokens[:, :-1], tokens[:, 1:]
