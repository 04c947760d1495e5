"""Tests for minimt.tokenizer: exact round trips on any text, nanoGPT's 65-character vocabulary, the
byte fallback rule, BPE training/saving, and the compression numbers the tokenizer lesson quotes."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimt.data import load_corpus
from minimt.tokenizer import (BPETokenizer, CharTokenizer, Tokenizer, measure_compression,
                              train_bpe)

# nanoGPT's data/shakespeare_char/prepare.py vocabulary, in id order.
NANOGPT_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HARD_CASES = ["", "\n", "\n\n\n", "  two  spaces  ", "\t\r\n \x0b\x0c", "\x00", "tail space ",
              "论语：子曰：“学而时习之，不亦说乎？”", "emoji 🙂🚀", "👩‍👩‍👧 ZWJ", "flag 🇫🇷",
              "é vs e\u0301", "Ġ and Ċ", "<|endoftext|>", "混合 mixed 文字\n🙂 end", "\U0010ffff"]


@pytest.fixture(scope="module")
def shakespeare():
    return load_corpus("tinyshakespeare")


@pytest.fixture(scope="module")
def char_tok(shakespeare):
    return CharTokenizer(shakespeare)


@pytest.fixture(scope="module")
def bpe_en(shakespeare):
    return train_bpe(shakespeare, 4096)


@pytest.fixture(scope="module")
def bpe_en_zh(shakespeare):
    return train_bpe([shakespeare, load_corpus("lunyu")], 4096)


def test_char_vocabulary_matches_nanogpt(char_tok, shakespeare):
    assert char_tok.n_chars == 65
    assert "".join(char_tok.chars) == NANOGPT_CHARS
    assert char_tok.vocab_size == 65 + 256  # known characters + byte fallback
    assert char_tok.encode("hi!") == [NANOGPT_CHARS.index(c) for c in "hi!"]
    assert measure_compression(char_tok, shakespeare).chars_per_token == 1.0


def test_char_byte_fallback_rule(char_tok):
    n = char_tok.n_chars
    assert char_tok.encode("世") == [n + 0xE4, n + 0xB8, n + 0x96]  # UTF-8 of U+4E16
    assert char_tok.encode("a世b") == [char_tok.stoi["a"], n + 0xE4, n + 0xB8, n + 0x96,
                                       char_tok.stoi["b"]]
    assert len(char_tok.encode("🙂")) == 4
    assert max(char_tok.encode("\U0010ffff")) < char_tok.vocab_size


def test_char_decode_of_invalid_bytes_gives_replacement_char(char_tok):
    n = char_tok.n_chars
    assert char_tok.decode([n + 0xE4, char_tok.stoi["a"]]) == "\ufffda"  # a truncated character


def test_char_without_fallback_is_nanogpt_exact(shakespeare):
    tok = CharTokenizer(shakespeare, byte_fallback=False)
    assert tok.vocab_size == 65
    assert tok.decode(tok.encode("To be")) == "To be"
    with pytest.raises(ValueError, match="byte_fallback=True"):
        tok.encode("世")


@pytest.mark.parametrize("text", HARD_CASES)
def test_round_trip_hard_cases(text, char_tok, bpe_en, bpe_en_zh):
    for tok in (char_tok, bpe_en, bpe_en_zh):
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_any_text(char_tok, text):
    assert char_tok.decode(char_tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_any_text(bpe_en_zh, text):
    ids = bpe_en_zh.encode(text)
    assert all(0 <= i < bpe_en_zh.vocab_size for i in ids)
    assert bpe_en_zh.decode(ids) == text


def test_round_trip_whole_corpora(bpe_en_zh, shakespeare):
    lunyu = load_corpus("lunyu")
    assert bpe_en_zh.decode(bpe_en_zh.encode(lunyu)) == lunyu
    assert bpe_en_zh.decode(bpe_en_zh.encode(shakespeare[:100_000])) == shakespeare[:100_000]


def test_decode_accepts_tensors_and_rejects_foreign_ids(char_tok, bpe_en):
    for tok in (char_tok, bpe_en):
        ids = tok.encode("To be, or not")
        assert tok.decode(torch.tensor(ids)) == "To be, or not"
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(ids + [tok.vocab_size])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([-1])


def test_both_follow_the_interface(char_tok, bpe_en):
    for tok in (char_tok, bpe_en):
        assert isinstance(tok, Tokenizer)
    assert char_tok.identity != bpe_en.identity


def test_bpe_training_reaches_vocab_and_is_deterministic(bpe_en, shakespeare):
    assert bpe_en.vocab_size == 4096
    assert train_bpe(shakespeare, 4096).identity == bpe_en.identity
    assert train_bpe("ab", 300).vocab_size < 300  # runs out of pairs: fewer tokens, no error


def test_bpe_rejects_vocab_below_bytes():
    with pytest.raises(ValueError, match="vocab_size >= 256"):
        train_bpe("hello", 100)


def test_bpe_save_and_load(bpe_en, tmp_path):
    bpe_en.save(tmp_path / "tok.json")
    loaded = BPETokenizer.from_file(tmp_path / "tok.json")
    assert loaded.identity == bpe_en.identity
    assert loaded.encode("Wherefore art thou") == bpe_en.encode("Wherefore art thou")


def test_bpe_compresses_english(bpe_en, shakespeare):
    c = measure_compression(bpe_en, shakespeare)
    assert 3.0 < c.chars_per_token < 3.5  # measured 3.24 at vocab 4096
    assert c.bytes_per_token == c.chars_per_token  # the text is ASCII


def test_english_only_bpe_spends_one_token_per_chinese_byte(bpe_en, bpe_en_zh):
    lunyu = load_corpus("lunyu")
    en_only = measure_compression(bpe_en, lunyu)
    assert en_only.n_tokens == en_only.n_bytes  # no merge covers Chinese: one token per byte
    assert len(bpe_en.encode("学而时习之")) == 15  # 3 UTF-8 bytes per character
    both = measure_compression(bpe_en_zh, lunyu)
    assert both.tokens_per_char < 1.2 < 2.9 < en_only.tokens_per_char  # measured 1.06 vs 2.95


def test_measure_compression_counts():
    tok = CharTokenizer("ab")
    c = measure_compression(tok, "ab世")
    assert (c.n_chars, c.n_bytes, c.n_tokens) == (3, 5, 5)
    assert c.tokens_per_char == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="non-empty"):
        measure_compression(tok, "")
