"""Blending datasets as Megatron does (`--data-path 0.5 A 0.3 B 0.2 C`): sample by sample, draw
from the dataset whose count lags its share the most, so every prefix of the blend is as close
to the weights as whole samples allow (megatron/core/datasets/helpers.cpp, build_blending_indices)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def normalized_weights(weights: Sequence[float]) -> np.ndarray:
    """The weights as float64 summing to 1; a clear error for negative or all-zero weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not 0 < w.sum() < np.inf:
        raise ValueError(f"blend weights {list(weights)} must be one or more finite non-negative numbers "
                         "with a positive sum, e.g. 0.5 0.3 0.2")
    return w / w.sum()


def blending_indices(weights: Sequence[float], num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index), each (num_samples,): sample i of the blend is sample
    dataset_sample_index[i] of dataset dataset_index[i]. Rule: at step i, with n_d samples drawn
    so far from dataset d, pick the d with the largest error w_d * max(i, 1) - n_d (the first
    such d on a tie); dataset_index is int16, dataset_sample_index int64 (megatron-core's dtypes)."""
    w = normalized_weights(weights)
    dataset_index = np.zeros(num_samples, dtype=np.int16)
    dataset_sample_index = np.zeros(num_samples, dtype=np.int64)
    ### BEGIN SOLUTION
    drawn = np.zeros(len(w), dtype=np.int64)
    for i in range(num_samples):
        error = w * max(i, 1) - drawn
        d = int(np.argmax(error))  # argmax returns the first of equal maxima
        dataset_index[i] = d
        dataset_sample_index[i] = drawn[d]
        drawn[d] += 1
    ### END SOLUTION
    return dataset_index, dataset_sample_index


def parse_data_path(items: Sequence[str]) -> tuple[list[float], list[str]]:
    """Megatron's --data-path: either one prefix, or weight prefix pairs (`0.5 A 0.3 B`)."""
    items = list(items)
    if len(items) == 1:
        return [1.0], items
    if len(items) % 2:
        raise ValueError(f"--data-path {' '.join(items)}: give one prefix, or pairs of a weight and "
                         "a prefix, e.g. --data-path 0.7 data/books_text_document 0.3 "
                         "data/code_text_document")
    try:
        weights = [float(w) for w in items[0::2]]
    except ValueError:
        raise ValueError(f"--data-path {' '.join(items)}: every other item must be a weight (a "
                         "number), e.g. 0.7 data/books_text_document 0.3 data/code_text_document"
                         ) from None
    try:
        return list(normalized_weights(weights)), items[1::2]
    except ValueError as error:
        raise ValueError(f"--data-path {' '.join(items)}: {error}") from None
