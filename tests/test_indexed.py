"""Megatron's indexed dataset and GPT samples: minimt's files are megatron-core's, byte for byte,
both ways, and the samples equal megatron-core's GPTDataset for the same files, split and seed."""
import json
import numpy as np
import pytest

from minimt.data import IndexedDataset
from minimt.gpt_samples import GPTSamples, split_ranges
from minimt.__main__ import main
from minimt.indexed import IndexedDatasetWriter
from helpers import oracle



def megatron_indexed():
    return oracle("megatron.core.datasets.indexed_dataset")


def _documents(seed=0, n=40, vocab=300):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(0, 90))) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_minimt_writes_what_megatron_core_reads_and_writes(tmp_path, dtype):
    docs = _documents()
    with IndexedDatasetWriter(tmp_path / "ours", dtype) as writer:
        for doc in docs:
            writer.add_document(doc)
    theirs = megatron_indexed().IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == len(docs)
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(theirs[i], doc)
    import torch
    builder = megatron_indexed().IndexedDatasetBuilder(str(tmp_path / "mc.bin"), dtype=dtype)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
    builder.finalize(str(tmp_path / "mc.idx"))
    for ext in ("bin", "idx"):  # byte for byte
        assert (tmp_path / f"ours.{ext}").read_bytes() == (tmp_path / f"mc.{ext}").read_bytes()
    ours = IndexedDataset(tmp_path / "mc")
    assert len(ours) == len(docs) and ours.dtype == dtype
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ours[i], doc)
    np.testing.assert_array_equal(ours.get(3, 2, 5), docs[3][2:7])


def test_corrupt_and_truncated_files_get_a_sentence(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        for doc in _documents(n=5):
            writer.add_document(doc)
    idx, bin_ = (tmp_path / "d.idx"), (tmp_path / "d.bin")
    good_idx, good_bin = idx.read_bytes(), bin_.read_bytes()
    idx.write_bytes(b"NOTMEGATRON" + good_idx[11:])
    with pytest.raises(ValueError, match="not a Megatron index"):
        IndexedDataset(tmp_path / "d")
    idx.write_bytes(good_idx[:-9])
    with pytest.raises(ValueError, match="idx is truncated"):
        IndexedDataset(tmp_path / "d")
    idx.write_bytes(good_idx)
    bin_.write_bytes(good_bin[:-4])
    with pytest.raises(ValueError, match="bin is truncated"):
        IndexedDataset(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="python -m minimt preprocess"):
        IndexedDataset(tmp_path / "missing")


def test_preprocess_cli_writes_megatron_files(tmp_path, capsys):
    lines = [{"text": "the first document."}, {"text": "a second, longer document here"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert main(["preprocess", "--input", str(tmp_path / "c.jsonl"), "--output-prefix",
                 str(tmp_path / "c"), "--tokenizer", "char", "--append-eod"]) == 0
    from minimt.preprocess import load_tokenizer
    tokenizer = load_tokenizer(tmp_path / "c_tokenizer.json")
    theirs = megatron_indexed().IndexedDataset(str(tmp_path / "c_text_document"))
    assert theirs.index.dtype == np.uint16
    for i, line in enumerate(lines):
        assert theirs[i][-1] == tokenizer.vocab_size  # the end-of-document id
        assert tokenizer.decode(theirs[i][:-1].tolist()) == line["text"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", "--input", str(tmp_path / "bad.jsonl"), "--output-prefix",
              str(tmp_path / "b")])
    assert exit_.value.code == 2 and "line 2" in capsys.readouterr().err


def _megatron_gpt_dataset(prefix, documents, num_samples, seq_length, seed, cache):
    gpt_dataset = oracle("megatron.core.datasets.gpt_dataset")
    GPTDataset, GPTDatasetConfig = gpt_dataset.GPTDataset, gpt_dataset.GPTDatasetConfig
    from megatron.core.datasets.utils import Split

    class Tokenizer:  # the fields GPTDataset reads
        eod, pad, vocab_size, unique_identifiers = 0, -1, 400, {"class": "test"}

    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, split="969,30,1",
                              tokenizer=Tokenizer(), reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False,
                              path_to_cache=str(cache))
    indexed = megatron_indexed().IndexedDataset(str(prefix))
    return GPTDataset(indexed, str(prefix), np.asarray(documents, dtype=np.int32), num_samples,
                      Split.train, config)


@pytest.mark.parametrize("num_samples", [30, 200, 700])  # 1 epoch, several, a separate last one
def test_gpt_samples_equal_megatron_core_gpt_dataset(tmp_path, num_samples):
    docs = _documents(seed=1, n=60)
    with IndexedDatasetWriter(tmp_path / "g", np.uint16) as writer:
        for doc in docs:
            writer.add_document(doc)
    train = split_ranges("969,30,1", len(docs))[0]
    assert (train.start, train.stop) == (0, 58)  # Megatron's rounding of 0.969 * 60
    ours = GPTSamples(IndexedDataset(tmp_path / "g"), train, num_samples, seq_length=16, seed=7)
    theirs = _megatron_gpt_dataset(tmp_path / "g", train, num_samples, 16, 7, tmp_path / "cache")
    np.testing.assert_array_equal(ours.document_index, theirs.document_index)
    np.testing.assert_array_equal(ours.sample_index, theirs.sample_index)
    np.testing.assert_array_equal(ours.shuffle_index, theirs.shuffle_index)
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        np.testing.assert_array_equal(ours[i][:-1], theirs[i]["tokens"].numpy())
        np.testing.assert_array_equal(ours[i][1:], theirs[i]["labels"].numpy())


def test_preprocess_flags_workers_json_keys_bpe_txt_and_progress_bar(tmp_path, capsys):
    """The issue's flags exactly: --json-keys (several, each its own PREFIX_KEY_document),
    --tokenizer bpe, --append-eod, --workers 2 (the same bytes as one worker), plain .txt, and
    a progress bar on stderr."""
    from minimt.preprocess import load_tokenizer
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "论语", "子曰", "print(x)", "def f():"]
    lines = [{"text": " ".join(rng.choice(words, size=int(rng.integers(1, 30)))),
              "title": f"doc {i}"} for i in range(300)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines),
                                      encoding="utf-8")
    common = ["preprocess", "--input", str(tmp_path / "c.jsonl"), "--tokenizer", "bpe",
              "--vocab-size", "300", "--json-keys", "text", "title", "--append-eod"]
    assert main(common + ["--output-prefix", str(tmp_path / "one"), "--workers", "1"]) == 0
    assert main(common + ["--output-prefix", str(tmp_path / "two"), "--workers", "2"]) == 0
    out = capsys.readouterr()
    assert "tokenizing c.jsonl" in out.err and "300/300" in out.err  # the progress bar
    for key in ("text", "title"):
        for ext in ("bin", "idx"):
            assert (tmp_path / f"one_{key}_document.{ext}").read_bytes() == \
                (tmp_path / f"two_{key}_document.{ext}").read_bytes()
    tokenizer = load_tokenizer(tmp_path / "two_tokenizer.json")
    for key in ("text", "title"):
        ds = IndexedDataset(tmp_path / f"two_{key}_document")
        assert len(ds) == len(lines) and ds.dtype == np.uint16
        for i in (0, 7, 299):
            assert ds[i][-1] == tokenizer.vocab_size
            assert tokenizer.decode(ds[i][:-1].tolist()) == lines[i][key]
    (tmp_path / "p.txt").write_text("first paragraph\nstill first\n\n\nsecond one\n")
    assert main(["preprocess", "--input", str(tmp_path / "p.txt"), "--output-prefix",
                 str(tmp_path / "p"), "--tokenizer", "char"]) == 0
    ds = IndexedDataset(tmp_path / "p_text_document")
    tokenizer = load_tokenizer(tmp_path / "p_tokenizer.json")
    assert [tokenizer.decode(ds[i].tolist()) for i in range(len(ds))] == \
        ["first paragraph\nstill first", "second one\n"]
    with pytest.raises(SystemExit):
        main(["preprocess", "--input", str(tmp_path / "p.txt"), "--output-prefix",
              str(tmp_path / "q"), "--json-keys", "body"])
    assert "no JSON keys" in capsys.readouterr().err


def test_a_corrupt_index_array_gets_a_sentence_not_a_numpy_error(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as writer:
        for doc in _documents(n=6):
            writer.add_document(doc)
    idx = tmp_path / "d.idx"
    good = bytearray(idx.read_bytes())
    for offset in (34, 34 + 6 * 4 + 8, 34 + 6 * 12 + 8):  # a length, a pointer, a document index
        bad = bytearray(good)
        bad[offset:offset + 4] = b"\xff\xff\xff\x7f"
        idx.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="is corrupt"):
            IndexedDataset(tmp_path / "d")
    idx.write_bytes(bytes(good))
    ds = IndexedDataset(tmp_path / "d")
    with pytest.raises(IndexError, match="of document 1"):
        ds.get(1, 0, int(ds.sequence_lengths[1]) + 1)
