"""`python -m minimt preprocess`: text -> Megatron's PREFIX_text_document.bin/.idx (after Megatron's
tools/preprocess_data.py). Input is JSON lines (one document per line, its text under --json-keys)
or plain .txt (documents separated by blank lines). The tokenizer is saved beside the data as
PREFIX_tokenizer.json, so training reads ids and their meaning together."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import re
from pathlib import Path

from tqdm.auto import tqdm

from .checks import cli_number
from .indexed import IndexedDatasetWriter, optimal_dtype
from .tokenizer import BPETokenizer, CharTokenizer, train_bpe


def read_documents(path: str | Path, json_key: str = "text") -> list[str]:
    """The documents of a .jsonl (the `json_key` field of each line) or a .txt (blank-line
    separated paragraphs); a clear error names the line that is not JSON or lacks the key."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--input {path} is a folder: give one .jsonl or .txt file")
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--input {path} is empty: give a file that holds text")
    if path.suffix not in (".json", ".jsonl"):
        return [doc for doc in re.split(r"\n\s*\n", text) if doc.strip()]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            documents.append(json.loads(line)[json_key])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}, line {number}: not a JSON object with a {json_key!r} "
                             "string; fix the line or pass the right --json-keys") from None
    return documents


def build_tokenizer(kind: str, texts: list[str], vocab_size: int = 4096):
    """A character tokenizer (with byte fallback, so any text encodes) or a byte-level BPE,
    learned from `texts`."""
    if kind == "char":
        return CharTokenizer("".join(texts), byte_fallback=True)
    return train_bpe(texts, vocab_size)


def tokenizer_path(output_prefix: str | Path) -> Path:
    return Path(f"{output_prefix}_tokenizer.json")


def save_tokenizer(tokenizer, path: Path) -> None:
    if isinstance(tokenizer, CharTokenizer):
        path.write_text(json.dumps({"kind": "char", "chars": "".join(tokenizer.chars)}))
    else:
        tokenizer.save(path)


def load_tokenizer(path: str | Path):
    """The tokenizer `python -m minimt preprocess` saved beside its data."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"], byte_fallback=True)
    return BPETokenizer.from_file(path)


_WORKER_TOKENIZER = None


def _encode(text: str) -> list[int]:
    return _WORKER_TOKENIZER.encode(text)


def preprocess(input_path: str | Path, output_prefix: str | Path, tokenizer, json_key: str = "text",
               append_eod: bool = False, workers: int = 1, progress: bool = True) -> Path:
    """Tokenize every document of `input_path` and write `{output_prefix}_{json_key}_document`
    .bin/.idx (uint16 ids when the vocabulary fits); returns that prefix. With append_eod each
    document ends in the end-of-document id, here the tokenizer's vocab_size (one past its ids)."""
    global _WORKER_TOKENIZER
    documents = read_documents(input_path, json_key)
    eod = tokenizer.vocab_size
    prefix = Path(f"{output_prefix}_{json_key}_document")
    _WORKER_TOKENIZER = tokenizer
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    encoded = pool.imap(_encode, documents, chunksize=64) if pool else map(_encode, documents)
    try:
        with IndexedDatasetWriter(prefix, optimal_dtype(eod + 1)) as writer:
            for ids in tqdm(encoded, total=len(documents), disable=not progress,
                            desc=f"tokenizing {Path(input_path).name}", unit="doc"):
                writer.add_document(ids + [eod] if append_eod else ids)
    finally:
        if pool:
            pool.close()
    save_tokenizer(tokenizer, tokenizer_path(output_prefix))
    return prefix


def preprocess_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minimt preprocess", description="Tokenize a corpus into Megatron's "
        "indexed dataset: PREFIX_text_document.bin/.idx, readable by megatron-core.",
        epilog="example: python -m minimt preprocess --input data/lunyu.txt --tokenizer char "
               "--output-prefix runs/data/lunyu --append-eod")
    parser.add_argument("--input", required=True, help=".jsonl (one JSON document a line) or .txt")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX_text_document.bin/.idx")
    parser.add_argument("--tokenizer", choices=("char", "bpe"), default="char")
    parser.add_argument("--json-keys", nargs="+", default=["text"], metavar="KEY",
                        help="the JSON fields to tokenize (default: text); each KEY writes "
                        "PREFIX_KEY_document.bin/.idx, as Megatron's preprocess_data.py")
    parser.add_argument("--vocab-size", type=cli_number(int, 257), default=4096,
                        help="BPE vocabulary size")
    parser.add_argument("--tokenizer-input", nargs="+", default=None,
                        help="texts to learn the tokenizer from (default: --input); give the same "
                        "files to every corpus of a blend so they share one vocabulary")
    parser.add_argument("--append-eod", action="store_true",
                        help="end each document with the end-of-document token")
    parser.add_argument("--workers", type=cli_number(int, 1), default=1,
                        help="processes that tokenize in parallel")
    return parser


def preprocess_main(argv: list[str]) -> int:
    parser = preprocess_parser()
    args = parser.parse_args(argv)
    try:
        if Path(args.input).suffix not in (".json", ".jsonl") and args.json_keys != ["text"]:
            raise ValueError(f"--input {args.input} is plain text (documents separated by blank "
                             "lines), which has no JSON keys: leave --json-keys out, or give "
                             ".jsonl")
        sources = args.tokenizer_input or [args.input]
        texts = ["\n\n".join(read_documents(path, key)) for path in sources
                 for key in args.json_keys]
        tokenizer = build_tokenizer(args.tokenizer, texts, args.vocab_size)
        folder = Path(args.output_prefix).absolute().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--output-prefix {args.output_prefix}: cannot create the folder "
                             f"{folder} ({error.strerror}); give a prefix in a folder you can "
                             f"write") from None
        prefixes = [preprocess(args.input, args.output_prefix, tokenizer, key, args.append_eod,
                               args.workers) for key in args.json_keys]
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    for prefix in prefixes:
        print(f"wrote {prefix}.bin and {prefix}.idx ({tokenizer!r})")
    print(f"tokenizer in {tokenizer_path(args.output_prefix)}")
    return 0
