"""Curation: MinHash signatures equal datasketch's, LSH finds the exact Jaccard pairs as well as
datasketch's MinHashLSH, exact dedup by hash, and filter_ngrams.py's decontamination rules."""
import itertools
import random
import re
import zlib

import numpy as np
import pytest

from minimt.curation import (candidate_probability, decontaminate, estimated_jaccard,
                             exact_duplicates, fuzzy_duplicates, hash_family, jaccard,
                             lsh_candidates, minhash_signature, ngrams, shingle_hashes, shingles)
from minimt.data import load_corpus
from helpers import oracle



def near_duplicate_corpus(n=50, seed=0):
    """n Shakespeare paragraphs and n copies with 2% .. 70% of their words replaced."""
    paragraphs = [p for p in re.split(r"\n\s*\n", load_corpus("tinyshakespeare")) if len(p) >= 300]
    rng = random.Random(seed)
    docs = paragraphs[:n]
    for i, text in enumerate(paragraphs[:n]):
        rate = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7][i % 8]
        docs.append(" ".join(rng.choice(["thee", "thou", "lord", "o"]) if rng.random() < rate
                             else w for w in text.split(" ")))
    return docs


def test_minhash_signature_equals_datasketch_with_the_same_hash_functions():
    datasketch = oracle("datasketch")
    a, b = hash_family(64, seed=3)
    for text in near_duplicate_corpus(4)[:4]:
        shingle_set = shingles(text)
        theirs = datasketch.MinHash(num_perm=64, hashfunc=zlib.crc32, permutations=(a, b),
                                    scheme="legacy")
        theirs.update_batch([s.encode("utf-8") for s in shingle_set])
        np.testing.assert_array_equal(minhash_signature(shingle_hashes(shingle_set), a, b),
                                      theirs.hashvalues)


def test_estimate_error_within_its_bound_and_lsh_follows_the_s_curve():
    docs = near_duplicate_corpus(40)
    sets = [shingles(d) for d in docs]
    a, b = hash_family(100)
    sigs = np.stack([minhash_signature(shingle_hashes(s), a, b) for s in sets])
    pairs = list(itertools.combinations(range(len(docs)), 2))
    errors = np.array([estimated_jaccard(sigs[i], sigs[j]) - jaccard(sets[i], sets[j])
                       for i, j in pairs])
    assert np.sqrt(np.mean(errors ** 2)) <= 1 / (2 * np.sqrt(100))  # standard error bound
    assert abs(errors.mean()) < 0.01  # unbiased
    found = lsh_candidates(sigs, bands=20, rows=5)
    expected = sum(candidate_probability(jaccard(sets[i], sets[j]), 20, 5) for i, j in pairs)
    assert abs(len(found) - expected) < 4 * np.sqrt(expected) + 2


def test_lsh_recall_and_precision_beside_datasketch():
    datasketch = oracle("datasketch")
    docs = near_duplicate_corpus(50)
    sets = [shingles(d) for d in docs]
    exact = {(i, j) for i, j in itertools.combinations(range(len(docs)), 2)
             if jaccard(sets[i], sets[j]) > 0.5}
    lsh = datasketch.MinHashLSH(threshold=0.5, num_perm=100)
    sketches = []
    for i, s in enumerate(sets):
        sketches.append(datasketch.MinHash(num_perm=100, seed=1))
        sketches[-1].update_batch([x.encode("utf-8") for x in s])
        lsh.insert(i, sketches[-1])
    theirs = {tuple(sorted((i, j))) for i in range(len(docs)) for j in lsh.query(sketches[i])
              if i != j and sketches[i].jaccard(sketches[j]) > 0.5}
    ours_megatron = fuzzy_duplicates(docs, bands=10)   # find_duplicates.py: 10 bands of 10
    ours_tuned = fuzzy_duplicates(docs, bands=20)      # datasketch's choice for 0.5: 20 of 5

    def recall_precision(found):
        return len(found & exact) / len(exact), len(found & exact) / max(1, len(found))

    r_ds, p_ds = recall_precision(theirs)
    r_tuned, p_tuned = recall_precision(ours_tuned)
    r_meg, p_meg = recall_precision(ours_megatron)
    assert (lsh.b, lsh.r) == (20, 5)
    assert r_ds >= 0.8 and p_ds >= 0.9 and r_tuned >= 0.8 and p_tuned >= 0.9
    assert abs(r_tuned - r_ds) <= 0.15
    assert r_meg < r_tuned  # 10 x 10 rows is an S-curve centred near 0.8, not 0.5
    assert p_meg == 1.0


def test_exact_duplicates_by_hash():
    assert exact_duplicates(["a b", "c", "a b\n", "c", "d"]) == [2, 3]


EVAL = ("the quick brown fox jumps over the lazy dog while the old cat sleeps on the warm mat "
        "by the door")


def _sentences(word, n):
    return "".join(f"This is {word} sentence number {i} of the filler text. " for i in range(n))


def test_ngrams_are_lowercased_word_13_grams():
    grams = ngrams("A b, C " + "w " * 12)
    assert ("a", "b", "c") + ("w",) * 10 in grams and len(grams) == 3
    assert ngrams("too short to have any", 13) == set()


def test_decontaminate_follows_filter_ngrams_rules():
    before, after = _sentences("early", 8), _sentences("late", 8)
    doc = before + "The Quick brown fox jumps over the lazy dog while the old cat sleeps. " + after
    (first, second) = decontaminate([doc], [EVAL])
    assert "fox" not in first + second and first.startswith("This is early")
    assert len(first) <= len(before) - 200 + 60 and second.endswith(after[-40:])
    # pieces of 200 characters or fewer are dropped; a clean document is kept whole
    short = _sentences("x", 2) + "the quick brown fox jumps over the lazy dog while the old cat ."
    clean = _sentences("clean", 5)
    assert decontaminate([short, clean], [EVAL]) == [clean]
    # a document split into more than max_splits pieces is dropped
    hit = "the quick brown fox jumps over the lazy dog while the old cat sleeps. "
    many = _sentences("pad", 16).join([hit] * 13)
    assert len(decontaminate([many], [EVAL], max_splits=100)) > 10
    assert decontaminate([many], [EVAL]) == []
    # an evaluation text of 8 to 12 words is matched whole
    assert decontaminate([_sentences("a", 6) + "one two three four five six seven eight. "
                          + _sentences("b", 6)], ["One two three four five six seven eight"]) \
        != [_sentences("a", 6) + "one two three four five six seven eight. " + _sentences("b", 6)]
