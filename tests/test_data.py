"""Tests for minimt.data: corpora and their hashes, the tokenizer/ids cache (reused, not rebuilt),
the nanoGPT train/val split, and the batch sampler (shapes, shift, seeding, coverage, errors)."""
import time

import pytest
import torch

import minimt.data as data
from minimt.data import TokenDataset
from minimt.tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets an empty cache folder, so cache hits and misses are the test's own."""
    monkeypatch.setenv("MINIMT_CACHE", str(tmp_path / "cache"))


def test_corpora_match_data_readme():
    assert data.available_corpora() == ["lunyu", "tinyshakespeare"]
    shakespeare, lunyu = data.load_corpus("tinyshakespeare"), data.load_corpus("lunyu")
    assert (len(shakespeare), len(set(shakespeare))) == (1_115_394, 65)
    assert (len(lunyu), len(lunyu.encode("utf-8")), len(set(lunyu))) == (22_093, 65_163, 1_359)
    assert data.corpus_hash("tinyshakespeare") == "86c4e6aa9db7c042"  # sha256 in data/README.md
    assert data.corpus_hash("lunyu") == "a132510d50a06cd9"


def test_unknown_corpus_lists_available():
    with pytest.raises(ValueError, match="unknown corpus 'shakespear'.*lunyu, tinyshakespeare"):
        data.load_corpus("shakespear")


def test_data_dir_override(tmp_path, monkeypatch):
    (tmp_path / "tiny.txt").write_text("abcabc", encoding="utf-8")
    monkeypatch.setenv("MINIMT_DATA", str(tmp_path))
    assert data.available_corpora() == ["tiny"]
    assert data.load_corpus("tiny") == "abcabc"


def test_load_bpe_trains_once_then_reads_the_cache(monkeypatch):
    calls = []
    real_train_bpe = data.train_bpe
    monkeypatch.setattr(data, "train_bpe", lambda *a: calls.append(a) or real_train_bpe(*a))
    first = data.load_bpe("lunyu", 512)
    second = data.load_bpe(["lunyu"], 512)
    assert len(calls) == 1  # the second call read the JSON instead of retraining
    assert second.identity == first.identity and first.vocab_size == 512
    assert len(list(data.cache_dir().glob("bpe-512-*.json"))) == 1
    data.load_bpe("lunyu", 600)  # another vocab size is another cache entry
    data.load_bpe(["tinyshakespeare", "lunyu"], 512)  # and so is another corpus list
    assert len(calls) == 3 and len(list(data.cache_dir().glob("bpe-*.json"))) == 3


def test_load_bpe_needs_a_corpus():
    with pytest.raises(ValueError, match="at least one corpus"):
        data.load_bpe([], 512)


class CountingTokenizer(CharTokenizer):
    encode_calls = 0

    def encode(self, text):
        CountingTokenizer.encode_calls += 1
        return super().encode(text)


def test_encode_corpus_is_cached_and_exact():
    lunyu = data.load_corpus("lunyu")
    tok = CountingTokenizer(lunyu)
    ids = data.encode_corpus("lunyu", tok)
    again = data.encode_corpus("lunyu", tok)
    assert CountingTokenizer.encode_calls == 1
    assert ids.dtype == torch.long and ids.shape == (len(lunyu),)
    assert torch.equal(ids, again)
    assert tok.decode(ids) == lunyu
    assert len(list(data.cache_dir().glob(f"ids-lunyu-*-{tok.identity}.npy"))) == 1


def test_split_is_nanogpt_90_10_and_disjoint():
    ids = torch.arange(1000)
    ds = TokenDataset(ids)
    assert (len(ds.train), len(ds.val)) == (900, 100)
    assert torch.equal(torch.cat([ds.train, ds.val]), ids)  # train is the head, val the tail
    g = torch.Generator().manual_seed(0)
    x, y = ds.get_batch("val", 64, 8, g)
    assert x.min() >= 900 and y.max() < 1000  # val windows never touch train tokens
    x, y = ds.get_batch("train", 64, 8, g)
    assert y.max() < 900


def test_batch_shapes_and_shift():
    ds = TokenDataset(torch.arange(500) * 7)  # distinct values reveal each window's position
    x, y = ds.get_batch("train", 12, 64, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (12, 64) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 7)  # y[b, t] is the token after x[b, t]
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(torch.diff(x, dim=1), torch.full((12, 63), 7))  # windows are contiguous


def test_same_seed_same_batch():
    ds = TokenDataset(torch.randint(100, (10_000,), generator=torch.Generator().manual_seed(0)))
    a = ds.get_batch("train", 8, 32, torch.Generator().manual_seed(42))
    b = ds.get_batch("train", 8, 32, torch.Generator().manual_seed(42))
    c = ds.get_batch("train", 8, 32, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_every_window_is_reachable():
    ds = TokenDataset(torch.arange(10), val_fraction=0.0)
    x, _ = ds.get_batch("train", 2000, 3, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == set(range(7))  # starts 0..6: the last window ends at token 9


def test_errors_say_what_to_change():
    ds = TokenDataset(torch.arange(100))
    with pytest.raises(ValueError, match="block_size=10 is too large for the val split of 10"):
        ds.get_batch("val", 4, 10)
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        ds.get_batch("test", 4, 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        ds.get_batch("train", 0, 4)
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \[0, 1\)"):
        TokenDataset(torch.arange(100), val_fraction=1.0)
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        TokenDataset(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        TokenDataset(torch.rand(10))


def test_get_batch_is_fast():
    ds = TokenDataset(torch.arange(1_000_000))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(200):
        ds.get_batch("train", 12, 64, g, device="cpu")
    per_call = (time.perf_counter() - start) / 200
    assert per_call < 5e-4, f"get_batch took {per_call * 1e3:.2f} ms; measured ~0.02 ms unloaded"


def test_char_dataset_is_shakespeare_char():
    tok, ds = data.char_dataset("tinyshakespeare")
    text = data.load_corpus("tinyshakespeare")
    assert tok.n_chars == 65 and tok.vocab_size == 321
    assert (len(ds.train), len(ds.val)) == (1_003_854, 111_540)  # nanoGPT's prepare.py split
    assert tok.decode(ds.train[:40]) == text[:40]
    assert tok.decode(ds.val[-40:]) == text[-40:]
    tok_exact, _ = data.char_dataset("tinyshakespeare", byte_fallback=False)
    assert tok_exact.vocab_size == 65


def test_bpe_dataset_uses_the_named_tokenizer_corpora():
    tok, ds = data.bpe_dataset("lunyu", vocab_size=512, tokenizer_corpora=["tinyshakespeare"])
    lunyu = data.load_corpus("lunyu")
    assert len(ds.train) + len(ds.val) == len(lunyu.encode("utf-8"))  # English BPE: byte tokens
    assert tok.decode(torch.cat([ds.train, ds.val])) == lunyu
