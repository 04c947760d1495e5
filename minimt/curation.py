"""Curating a pre-training corpus as MT-NLG's was (Smith et al. 2022, arXiv 2201.11990, section 3):
exact deduplication by hash, fuzzy deduplication with MinHash and LSH (after Megatron-LM's former
tools/openwebtext/find_duplicates.py: character 5-gram shingles, 100 hashes, 10 bands), and removal of
evaluation text by 13-gram matching (the rules of Megatron-LM's former filter_ngrams.py)."""
from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

WORD = re.compile(r"\w+")
MERSENNE_PRIME = (1 << 61) - 1  # the hash family (a x + b) mod p of MinHash
MAX_HASH = (1 << 32) - 1


# ---- exact deduplication -------------------------------------------------------------------

def exact_duplicates(documents: Sequence[str]) -> list[int]:
    """Indices of documents whose text (after stripping) already appeared earlier: a sha256 each."""
    seen, repeats = set(), []
    for i, text in enumerate(documents):
        digest = hashlib.sha256(text.strip().encode("utf-8")).digest()
        if digest in seen:
            repeats.append(i)
        seen.add(digest)
    return repeats


# ---- fuzzy deduplication: MinHash and LSH -----------------------------------------------------

def shingles(text: str, k: int = 5) -> set[str]:
    """The set of character k-grams of `text` (a text shorter than k is its own single shingle)."""
    return {text[i:i + k] for i in range(max(1, len(text) - k + 1))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|, the similarity MinHash estimates (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def shingle_hashes(shingle_set: Iterable[str]) -> np.ndarray:
    """Each shingle's crc32 (a stable 32-bit hash, the same in every process), as uint64."""
    return np.array(sorted(zlib.crc32(s.encode("utf-8")) for s in shingle_set), dtype=np.uint64)


def hash_family(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The a and b (each < 2^31, a >= 1) of `num_perm` hash functions h(x) = (a x + b) mod p:
    a x + b stays below 2^63, so uint64 arithmetic is exact."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature of one shingle set given as its 32-bit `hashes` (n,): for each of the
    k hash functions, the smallest ((a x + b) mod p) & (2^32 - 1) over the set; shape (k,) uint64."""
    ### BEGIN SOLUTION
    values = (a[:, None] * hashes[None, :] + b[:, None]) % np.uint64(MERSENNE_PRIME)  # (k, n)
    values &= np.uint64(MAX_HASH)
    return values.min(axis=1)                                                       # (k,)
    ### END SOLUTION


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of equal entries of two signatures: an unbiased estimate of the Jaccard
    similarity, with standard error sqrt(s (1 - s) / k) <= 1 / (2 sqrt(k))."""
    return float(np.mean(sig_a == sig_b))


def candidate_probability(s: float | np.ndarray, bands: int, rows: int):
    """LSH's S-curve: the chance that two sets of Jaccard s share at least one of b bands of r
    rows, 1 - (1 - s^r)^b."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of documents whose signatures (N, bands * rows) agree on all rows of at
    least one band: only these pairs are compared, instead of all N^2 / 2."""
    if signatures.shape[1] != bands * rows:
        raise ValueError(f"signatures have {signatures.shape[1]} hashes but bands * rows = "
                         f"{bands} * {rows} = {bands * rows}; make them equal")
    pairs = set()
    for band in range(bands):
        buckets = defaultdict(list)
        for doc, sig in enumerate(signatures[:, band * rows:(band + 1) * rows]):
            buckets[sig.tobytes()].append(doc)
        for docs in buckets.values():
            pairs.update(itertools.combinations(docs, 2))
    return pairs


def fuzzy_duplicates(documents: Sequence[str], threshold: float = 0.5, num_perm: int = 100,
                     bands: int = 10, shingle_size: int = 5, seed: int = 1
                     ) -> set[tuple[int, int]]:
    """Pairs (i < j) that LSH proposes and whose estimated Jaccard exceeds `threshold`
    (find_duplicates.py's defaults: 5-grams, 100 hashes, 10 bands, pairs above 0.5)."""
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    a, b = hash_family(num_perm, seed)
    sigs = np.stack([minhash_signature(shingle_hashes(shingles(d, shingle_size)), a, b)
                     for d in documents])                                            # (N, k)
    return {(i, j) for i, j in lsh_candidates(sigs, bands, num_perm // bands)
            if estimated_jaccard(sigs[i], sigs[j]) > threshold}


# ---- decontamination: 13-gram matching ---------------------------------------------------------

def words(text: str) -> tuple[list[str], list[int]]:
    """The lowercased words (runs of \\w) of `text` and where each starts, as filter_ngrams.py."""
    found = list(WORD.finditer(text.lower()))
    return [m.group(0) for m in found], [m.start() for m in found]


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """The word n-grams of `text`, lowercased (empty when the text has fewer than n words)."""
    found, _ = words(text)
    return {tuple(found[i:i + n]) for i in range(len(found) - n + 1)}


def _eval_keys(eval_texts: Sequence[str], n: int, min_n: int) -> set[tuple[str, ...]]:
    """Every n-gram of the evaluation texts; a text of min_n..n-1 words counts as one whole key."""
    keys = set()
    for text in eval_texts:
        found, _ = words(text)
        if min_n <= len(found) < n:
            keys.add(tuple(found))
        keys |= ngrams(text, n)
    return keys


def _first_match(text: str, keys: set, lengths: list[int]) -> tuple[int, int] | None:
    """(character start, length of the matched words joined by spaces) of the first key in text."""
    found, starts = words(text)
    for i in range(len(found)):
        for length in lengths:
            if i + length <= len(found) and tuple(found[i:i + length]) in keys:
                return starts[i], len(" ".join(found[i:i + length]))
    return None


def _split_around(text: str, start: int, length: int, cut: int) -> tuple[str, str]:
    """The text before and after a match, `cut` characters further out each side and then on to
    the nearest sentence end (. ! ?), as filter_ngrams.py's split_text."""
    pos = start - cut
    while pos > 0 and text[pos] not in ".!?":
        pos -= 1
    before = text[:pos + 1] if pos > 0 else ""
    pos = start + length + cut
    while pos < len(text) and text[pos] not in ".!?":
        pos += 1
    after = text[pos + 1:] if pos + 1 < len(text) else ""
    return before, after


def decontaminate(documents: list[str], eval_texts: list[str], n: int = 13, cut: int = 200,
                  min_piece: int = 200, max_splits: int = 10, min_n: int = 8) -> list[str]:
    """The training documents with evaluation text removed, by filter_ngrams.py's rules: at each
    match of an evaluation n-gram, cut `cut` characters each side (on to a sentence end); keep
    pieces longer than `min_piece` characters; drop a document left in more than `max_splits`
    pieces. Returns the kept pieces, in document order."""
    keys = _eval_keys(eval_texts, n, min_n)
    lengths = [n] + sorted({len(k) for k in keys} - {n})
    cleaned = []
    for document in documents:
        pending, pieces = [document], []
        while pending:
            text = pending.pop(0)
            match = _first_match(text, keys, lengths)
            if match is None:
                pieces.append(text)
                continue
            before, after = _split_around(text, *match, cut)
            if len(before) > min_piece:
                pieces.append(before)
            if len(after) > min_piece:
                pending.append(after)
        if len(pieces) <= max_splits:
            cleaned.extend(pieces)
    return cleaned
