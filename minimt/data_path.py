"""`--data-path [W1] PREFIX1 [W2 PREFIX2 ...]`: Megatron's train and valid samples, blended, as
a Trainer's data. Each prefix is an indexed dataset (`python -m minimt preprocess`); its documents
are split by --split, each split yields GPT samples (minimt.gpt_samples), and blending_indices
interleaves the datasets by weight. Training reads samples in order (`train_batch`), so every
layout, and a resumed run, reads the same samples at the same step."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .blending import blending_indices, parse_data_path
from .data_checks import check_datasets
from .gpt_samples import GPTSamples, split_ranges
from .indexed import IndexedDataset

SPLITS = ("train", "val")
MARGIN = 1.005  # each dataset builds 0.5% more samples than its share (mid_level_dataset_surplus)


class BlendedSamples:
    """`num_samples` samples of one split, drawn from several datasets by weight."""

    def __init__(self, datasets: list[IndexedDataset], weights: list[float], split: str,
                 split_index: int, num_samples: int, seq_length: int, seed: int):
        self.parts = []
        for ds, w in zip(datasets, weights):
            documents = split_ranges(split, len(ds))[split_index]
            if len(documents) == 0:
                raise ValueError(f"{ds.prefix} has no documents in the {SPLITS[split_index]} part "
                                 f"of --split {split}: give it more documents or another split")
            size = math.ceil(math.ceil(w * num_samples) * MARGIN)  # Megatron's builder's sizes
            self.parts.append(GPTSamples(ds, documents, size, seq_length, seed))
        self.dataset_index, self.dataset_sample_index = blending_indices(weights, num_samples)

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.parts[self.dataset_index[i]][int(self.dataset_sample_index[i])]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(np.stack([self[int(i) % len(self)] for i in indices]))  # (B, T+1)
        return tokens[:, :-1], tokens[:, 1:]                                             # (B, T)


class MegatronData:
    """The Trainer's data from --data-path: `train_batch(first, count)` returns training samples
    first .. first + count in order; `get_batch(split, B, T, generator)` random ones (evaluation)."""

    def __init__(self, data_path: Sequence[str], seq_length: int, train_samples: int,
                 valid_samples: int = 256, split: str = "969,30,1", seed: int = 1234):
        weights, prefixes = parse_data_path(data_path)
        datasets = check_datasets(prefixes, seq_length, split)  # each exists, same vocabulary
        self.seq_length = seq_length
        self.splits = {name: BlendedSamples(datasets, weights, split, i, n, seq_length, seed)
                       for i, (name, n) in enumerate(zip(SPLITS, (train_samples, valid_samples)))}
        self.vocab_size = max(ds.largest_token() for ds in datasets) + 1

    def _check(self, block_size: int) -> None:
        if block_size != self.seq_length:
            raise ValueError(f"block_size {block_size} differs from the samples' seq_length "
                             f"{self.seq_length}: build MegatronData with the model's block_size")

    def train_batch(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits["train"].batch(range(first, first + count))

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(block_size)
        samples = self.splits[split]
        return samples.batch(torch.randint(len(samples), (batch_size,), generator=generator))
