"""Megatron's indexed dataset, byte for byte: `PREFIX.bin` holds every document's token ids back to
back; `PREFIX.idx` says where each starts. The layout of the .idx (little-endian):

    b"MMIDIDX\\x00\\x00"  version <Q = 1  dtype code <B  sequence count <Q  document count <Q
    sequence lengths int32[S]  sequence pointers (byte offsets into .bin) int64[S]
    document indices int64[D]  (sequence index where each document starts, then the total)

A GPT corpus has one sequence per document. Reading goes through numpy.memmap: nothing is loaded
whole, so a corpus larger than memory reads as fast as the disk serves the pages it touches."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable

import numpy as np

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
               np.float32: 7, np.uint16: 8}  # Megatron's DType enum
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
PREAMBLE = len(HEADER) + 8 + 1 + 8 + 8  # 34 bytes before the arrays


def optimal_dtype(vocab_size: int | None):
    """uint16 when every id fits with room to spare (Megatron's rule: vocabulary < 65500), else
    int32: half the disk for a GPT-2-sized vocabulary."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


class IndexedDatasetWriter:
    """Write PREFIX.bin as documents come, PREFIX.idx at `finalize()` (Megatron's
    IndexedDatasetBuilder); usable as a context manager."""

    def __init__(self, path_prefix: str | Path, dtype=np.int32):
        if dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {dtype} has no Megatron code; use one of "
                             f"{', '.join(d.__name__ for d in DTYPE_CODES)}")
        self.prefix = Path(path_prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.lengths: list[int] = []
        self._bin = open(f"{self.prefix}.bin", "wb")

    def add_document(self, ids: Iterable[int]) -> None:
        array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if array.size and (array.min() < np.iinfo(self.dtype).min
                           or array.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id range [{array.min()}, {array.max()}] does not fit "
                             f"{self.dtype.__name__}; write with dtype=np.int32")
        self._bin.write(array.astype(self.dtype).tobytes(order="C"))
        self.lengths.append(int(array.size))

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.array(self.lengths, dtype=np.int32)                   # (S,)
        itemsize = np.dtype(self.dtype).itemsize
        pointers = np.zeros(len(lengths), dtype=np.int64)                  # (S,)
        pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64) * itemsize)
        documents = np.arange(len(lengths) + 1, dtype=np.int64)            # (D,) = (S + 1,)
        with open(f"{self.prefix}.idx", "wb") as idx:
            idx.write(HEADER + struct.pack("<QBQQ", VERSION, DTYPE_CODES[self.dtype],
                                           len(lengths), len(documents)))
            idx.write(lengths.tobytes() + pointers.tobytes() + documents.tobytes())

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.finalize()


class IndexedDataset:
    """Read PREFIX.bin/.idx: `len(ds)` documents, `ds[i]` a numpy array of document i's token ids
    (a view into the memory-mapped .bin), `ds.get(i, offset, length)` a part of it."""

    def __init__(self, path_prefix: str | Path):
        self.prefix = Path(path_prefix)
        idx_path, bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: give the prefix that "
                                        "`python -m minimt preprocess` wrote (without .bin/.idx)")
        raw = idx_path.read_bytes()[:PREAMBLE]
        if len(raw) < PREAMBLE or raw[:len(HEADER)] != HEADER:
            raise ValueError(f"{idx_path} is not a Megatron index (it should start with "
                             f"{HEADER!r} and hold at least {PREAMBLE} bytes): write it again "
                             "with `python -m minimt preprocess`")
        version, code, count, doc_count = struct.unpack("<QBQQ", raw[len(HEADER):])
        if version != VERSION or code not in DTYPES:
            raise ValueError(f"{idx_path} has version {version} and dtype code {code}; this reader "
                             f"knows version {VERSION} and codes {sorted(DTYPES)}")
        self.dtype = DTYPES[code]
        needed = PREAMBLE + count * 12 + doc_count * 8
        if idx_path.stat().st_size < needed:
            raise ValueError(f"{idx_path} is truncated: {idx_path.stat().st_size} bytes, but its "
                             f"{count} sequences need {needed}; write it again")
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.sequence_lengths = np.frombuffer(index, np.int32, count, PREAMBLE)       # (S,)
        self.sequence_pointers = np.frombuffer(index, np.int64, count, PREAMBLE + 4 * count)
        self.document_indices = np.frombuffer(index, np.int64, doc_count, PREAMBLE + 12 * count)
        itemsize = np.dtype(self.dtype).itemsize
        expected = np.zeros(count, dtype=np.int64)                                    # (S,)
        expected[1:] = np.cumsum(self.sequence_lengths[:-1].astype(np.int64) * itemsize)
        documents = self.document_indices
        if (self.sequence_lengths < 0).any() \
                or not np.array_equal(self.sequence_pointers, expected) \
                or (doc_count and (documents[0] != 0 or documents[-1] != count
                                   or (np.diff(documents) < 0).any())):
            raise ValueError(f"{idx_path} is corrupt: its lengths, pointers and document indices "
                             "do not fit together (pointers must add up the lengths); write it "
                             "again")
        size = bin_path.stat().st_size
        if count and self.sequence_pointers[-1] + itemsize * int(self.sequence_lengths[-1]) > size:
            raise ValueError(f"{bin_path} is truncated: {size} bytes, but {idx_path} points to "
                             f"{int(self.sequence_pointers[-1]) + itemsize * int(self.sequence_lengths[-1])}; "
                             "write both again")
        self._bin = np.memmap(bin_path, mode="r", dtype=np.uint8) if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens offset .. offset + length of document i (to its end when length is None)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range: {self.prefix} holds {len(self)}")
        size = int(self.sequence_lengths[i])
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens {offset} .. {offset + length} of document {i}: it holds "
                             f"{size}")
        start = int(self.sequence_pointers[i]) + offset * np.dtype(self.dtype).itemsize
        return np.frombuffer(self._bin, self.dtype, length, start)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def largest_token(self) -> int:
        """The largest token id in the .bin (-1 when empty): one pass over the memory map, in C."""
        whole = len(self._bin) // np.dtype(self.dtype).itemsize
        tokens = np.frombuffer(self._bin, self.dtype, whole)                # (total tokens,)
        return int(tokens.max()) if tokens.size else -1

    def __repr__(self) -> str:
        return (f"IndexedDataset({str(self.prefix)!r}: {len(self)} documents, "
                f"{int(self.sequence_lengths.sum())} tokens, {np.dtype(self.dtype).name})")
