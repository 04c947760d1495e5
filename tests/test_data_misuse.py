"""Missing, too short or other-alphabet data: the built-in corpus, Megatron's --data-path datasets,
preprocess's --input and --output-prefix and a Trainer's TokenDataset each end in a sentence
naming the argument and the fix, before any rank starts, with nothing written. 24 misuses (a
parameter or a test per case)."""
import multiprocessing
import re
import shutil
from pathlib import Path

import pytest
import torch

from minimt.__main__ import main
from minimt.config import GPTConfig
from minimt.data import REPO_ROOT, TokenDataset
from minimt.model import GPT
from minimt.preprocess import preprocess
from minimt.tokenizer import CharTokenizer
from minimt.train import TrainConfig, Trainer

ENGLISH = "\n\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(60))
CHINESE = (REPO_ROOT / "data" / "lunyu.txt").read_text(encoding="utf-8")[:3000]


def _prefix(folder: Path, name: str, text: str) -> str:
    (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    tokenizer = CharTokenizer(text)
    return str(preprocess(folder / f"{name}.txt", folder / name, tokenizer, progress=False))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """a (English), b (Chinese, another vocabulary), tiny (3 tokens), a truncated and a corrupt
    copy of a: `python -m minimt preprocess`'s files."""
    folder = tmp_path_factory.mktemp("indexed")
    a = _prefix(folder, "a", ENGLISH)
    _prefix(folder, "b", CHINESE)
    _prefix(folder, "tiny", "hi!")
    shutil.copy(f"{a}.idx", folder / "cut_text_document.idx")
    (folder / "cut_text_document.bin").write_bytes(Path(f"{a}.bin").read_bytes()[:100])
    shutil.copy(f"{a}.bin", folder / "junk_text_document.bin")
    (folder / "junk_text_document.idx").write_bytes(b"not an index")
    return folder


def _train_is_refused(argv, out: Path, capsys, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--iters", "1", "--out", str(out), *argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err.strip().replace("\n", " ")), message
    assert not out.exists() and multiprocessing.active_children() == []  # nothing written, no rank


@pytest.mark.parametrize("data_path,message", [
    ("nope_text_document", r"--data-path \S*nope_text_document: \S*nope_text_document.bin and "
                           r"\S*idx not found; give the prefix .*preprocess"),
    ("a", r"--data-path \S*a: that is the --output-prefix.*give --data-path \S*a_text_document"),
    ("a_text_document.bin", r"--data-path \S*a_text_document.bin: give the prefix without .bin, "
                            r"--data-path \S*a_text_document$"),
    ("a_text_document.idx", r"give the prefix without .idx, --data-path \S*a_text_document$"),
    ("cut_text_document", r"cut_text_document.bin is truncated: 100 bytes.*write both again"),
    ("junk_text_document", r"junk_text_document.idx is not a Megatron index.*write it again"),
    ("x a_text_document 1 b_text_document", r"--data-path x \S+ 1 \S+: every other item must "
                                            r"be a weight"),
    ("0 a_text_document 0 a_text_document", r"--data-path 0 \S+ 0 \S+: blend weights \[0.0, 0.0\] "
                                            r"must be .*positive sum"),
    ("inf a_text_document 1 a_text_document", r"blend weights \[inf, 1.0\] must be .*finite"),
    ("tiny_text_document", r"--data-path \S*tiny_text_document: the train part of --split "
                           r"969,30,1 holds 3 tokens, fewer than one sample \(block_size \+ 1 = "
                           r"65\); give it more text"),
    ("0.5 a_text_document 0.5 b_text_document", r"--data-path \S*a_text_document and \S*b_text_"
                                                r"document were tokenized with different "
                                                r"vocabularies.*same --tokenizer-input"),
])
def test_bad_megatron_data_is_refused_naming_the_flag(indexed, tmp_path, capsys, data_path,
                                                      message):
    items = [w if w[0].isdigit() or w in ("x", "inf") else str(indexed / w)
             for w in data_path.split()]
    _train_is_refused(["--data-path", *items], tmp_path / "run", capsys, message)


@pytest.mark.parametrize("corpus,message", [
    (None, r"unknown corpus 'tinyshakespeare'.*put tinyshakespeare.txt there, or set \$MINIMT_DATA"),
    ("To be.", r"tinyshakespeare.txt: its train split holds 5 tokens, fewer than one sample "
               r"\(block_size \+ 1 = 65\); use a longer corpus.*restore the course's"),
    (ENGLISH[:90], r"its val split holds 9 tokens.*a larger val_fraction"),
    (CHINESE, r"tinyshakespeare.txt: it holds token id \d+ but the model's vocab_size is 65: the "
              r"text is in another alphabet.*--data-path"),
])
def test_a_bad_course_corpus_is_refused_before_training(tmp_path, monkeypatch, capsys, corpus,
                                                         message):
    data = tmp_path / "data"
    data.mkdir()
    if corpus is not None:
        (data / "tinyshakespeare.txt").write_text(corpus, encoding="utf-8")
    monkeypatch.setenv("MINIMT_DATA", str(data))
    monkeypatch.setenv("MINIMT_CACHE", str(tmp_path / "cache"))
    _train_is_refused([], tmp_path / "run", capsys, message)


def test_trainer_refuses_ids_outside_the_model_vocabulary_and_too_short_splits():
    model = GPT(GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=1, n_embd=8))
    foreign = TokenDataset(CharTokenizer(ENGLISH).encode(ENGLISH + CHINESE[:50]))
    with pytest.raises(ValueError, match=r"data: it holds token id \d+ but the model's vocab_size "
                                         r"is 65.*build the model with the tokenizer's vocab_size"):
        Trainer(model, foreign, TrainConfig(progress=False))
    with pytest.raises(ValueError, match=r"data: its val split holds 2 tokens.*\(block_size \+ 1 "
                                         r"= 9\).*a larger val_fraction or a smaller block_size"):
        Trainer(model, TokenDataset(torch.arange(20) % 65), TrainConfig(progress=False))


@pytest.mark.parametrize("what,message", [
    ("a folder", r"--input \S+ is a folder: give one .jsonl or .txt file"),
    ("an empty file", r"--input \S+empty.txt is empty: give a file that holds text"),
    ("a prefix under a file", r"--output-prefix \S+notes.txt/out: cannot create the folder "
                              r"\S+notes.txt \(.*\); give a prefix in a folder you can write"),
], ids=["input folder", "input empty", "output under a file"])
def test_preprocess_names_an_input_or_output_it_cannot_use(what, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "notes.txt").write_text(ENGLISH)
    source = {"a folder": tmp_path, "an empty file": tmp_path / "empty.txt"}.get(
        what, tmp_path / "notes.txt")
    prefix = tmp_path / ("notes.txt/out" if what == "a prefix under a file" else "out")
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--input", str(source), "--output-prefix", str(prefix)])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err.replace("\n", " "))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == ENGLISH


@pytest.mark.parametrize("split", ["-1,1,1", "a,b,c", "0,0,0", "1,2,3,4"])
def test_a_bad_split_is_named_not_read_around(indexed, tmp_path, capsys, split):
    """`-1,1,1` once read as 1,1,1 (the minus sign skipped)."""
    _train_is_refused([f"--split={split}", "--data-path", str(indexed / "a_text_document")],
                      tmp_path / "run", capsys, rf"--split '{split}' must be 1 to 3 non-negative "
                                                rf"weights with a positive sum")
