"""Data that cannot train a model, refused before any step with a sentence naming the argument and
the fix: a corpus or a `--data-path` prefix that is missing, holds fewer tokens than one sample
(block_size + 1) in a split, or uses another vocabulary than the model or the other datasets."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from .gpt_samples import split_ranges
from .indexed import IndexedDataset

SPLIT_NAMES = ("train", "valid")


def check_prefix(prefix: str) -> None:
    """`--data-path PREFIX` must name the PREFIX.bin/.idx pair `python -m minimt preprocess`
    wrote: not one of the files, not the --output-prefix it was given."""
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix) and not Path(f"{prefix}.idx").is_file():
            raise ValueError(f"--data-path {prefix}: give the prefix without {suffix}, "
                             f"--data-path {prefix[:-len(suffix)]}")
    missing = [f"{prefix}{s}" for s in (".bin", ".idx") if not Path(f"{prefix}{s}").is_file()]
    if not missing:
        return
    written = sorted(glob.glob(f"{glob.escape(prefix)}_*_document.idx"))
    if written and len(missing) == 2:
        raise FileNotFoundError(f"--data-path {prefix}: that is the --output-prefix; preprocess "
                                f"wrote {written[0][:-4]}.bin/.idx: give --data-path "
                                f"{written[0][:-4]} (with its _document suffix)")
    raise FileNotFoundError(f"--data-path {prefix}: {' and '.join(missing)} not found; give the "
                            f"prefix that `python -m minimt preprocess` wrote (e.g. "
                            f"runs/data/lunyu_text_document, without .bin/.idx) or run it first")


def tokenizer_file(prefix: str) -> Path | None:
    """The PREFIX_tokenizer.json preprocess saved beside `{PREFIX}_{json_key}_document`."""
    stem = prefix.removesuffix("_document")
    while "_" in Path(stem).name:
        stem = stem.rsplit("_", 1)[0]
        if Path(f"{stem}_tokenizer.json").is_file():
            return Path(f"{stem}_tokenizer.json")
    return None


def check_datasets(prefixes: Sequence[str], seq_length: int, split: str) -> list[IndexedDataset]:
    """The datasets of `--data-path`, once each exists, shares the others' vocabulary and holds at
    least one sample (seq_length + 1 tokens) in its train and valid parts."""
    for prefix in prefixes:
        check_prefix(str(prefix))
    files = {p: tokenizer_file(str(p)) for p in prefixes}
    known = {p: f.read_bytes() for p, f in files.items() if f is not None}
    if len(set(known.values())) > 1:
        a = next(iter(known))
        b = next(p for p, t in known.items() if t != known[a])
        raise ValueError(f"--data-path {a} and {b} were tokenized with different vocabularies "
                         f"({files[a]}, {files[b]}): one id would mean two texts in the blend; "
                         f"preprocess every corpus with the same --tokenizer-input files")
    datasets = [IndexedDataset(p) for p in prefixes]
    for ds in datasets:
        for name, documents in zip(SPLIT_NAMES, split_ranges(split, len(ds))):
            tokens = int(ds.sequence_lengths[documents.start:documents.stop].sum())
            if len(documents) and tokens < seq_length + 1:
                raise ValueError(
                    f"--data-path {ds.prefix}: the {name} part of --split {split} holds {tokens} "
                    f"tokens, fewer than one sample (block_size + 1 = {seq_length + 1}); give it "
                    f"more text, or a --split with a larger {name} share")
    return datasets


def check_token_data(data, block_size: int, vocab_size: int | None, source: str = "data",
                     fix: str = "") -> None:
    """A TokenDataset (`.train`, `.val` ids) or Megatron data (`.vocab_size`) a model of
    `block_size` and `vocab_size` can train on; `source` names it, `fix` adds a way out."""
    splits = {name: getattr(data, name, None) for name in ("train", "val")}
    for name, ids in splits.items():
        if ids is not None and len(ids) < block_size + 1:
            raise ValueError(f"{source}: its {name} split holds {len(ids)} tokens, fewer than one "
                             f"sample (block_size + 1 = {block_size + 1}); use a longer corpus"
                             f"{', a larger val_fraction' if name == 'val' else ''} or a smaller "
                             f"block_size{fix}")
    if vocab_size is None:
        return
    largest = max((int(ids.max()) for ids in splits.values() if ids is not None and len(ids)),
                  default=getattr(data, "vocab_size", 0) - 1)
    if largest >= vocab_size:
        raise ValueError(f"{source}: it holds token id {largest} but the model's vocab_size is "
                         f"{vocab_size}: the text is in another alphabet or vocabulary than the "
                         f"model was built for; build the model with the tokenizer's vocab_size"
                         f"{fix}")
