"""Blending equals megatron-core's build_blending_indices sample for sample."""
import numpy as np
import pytest

from minimt.blending import blending_indices, normalized_weights, parse_data_path
from minimt.recipe import MT_NLG_BLEND
from helpers import oracle



def megatron_blend(weights, num_samples):
    w = normalized_weights(weights)
    dataset_index = np.zeros(num_samples, dtype=np.int16)
    dataset_sample_index = np.zeros(num_samples, dtype=np.int64)
    helpers = oracle("megatron.core.datasets.helpers")
    helpers.build_blending_indices(dataset_index, dataset_sample_index, w, len(w), num_samples,
                                   False)
    return dataset_index, dataset_sample_index


@pytest.mark.parametrize("weights, n", [([0.5, 0.25, 0.25], 4), ([0.5, 0.3, 0.2], 1000),
                                        ([1, 1, 1, 1], 37), ([0.9, 0.1], 500),
                                        (list(MT_NLG_BLEND.values()), 1920)])
def test_blending_indices_equal_megatron_core(weights, n):
    ours, theirs = blending_indices(weights, n), megatron_blend(weights, n)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_readme_example_and_mt_nlg_first_1920_counts():
    np.testing.assert_array_equal(blending_indices([0.5, 0.25, 0.25], 4)[0], [0, 1, 2, 0])
    counts = np.bincount(blending_indices(list(MT_NLG_BLEND.values()), 1920)[0], minlength=15)
    theirs = np.bincount(megatron_blend(list(MT_NLG_BLEND.values()), 1920)[0], minlength=15)
    np.testing.assert_array_equal(counts, theirs)
    assert dict(zip(MT_NLG_BLEND, counts.tolist()))["OpenWebText2"] == 371  # FACTS.md's count


def test_data_path_parsing_and_bad_weights():
    assert parse_data_path(["a"]) == ([1.0], ["a"])
    weights, prefixes = parse_data_path(["3", "a", "1", "b"])
    assert weights == [0.75, 0.25] and prefixes == ["a", "b"]
    with pytest.raises(ValueError, match="pairs of a weight and a prefix"):
        parse_data_path(["0.5", "a", "b"])
    with pytest.raises(ValueError, match="must be a weight"):
        parse_data_path(["a", "0.5", "b", "0.5"])
    with pytest.raises(ValueError, match="non-negative"):
        blending_indices([0.5, -0.1], 3)
