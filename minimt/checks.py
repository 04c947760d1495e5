"""Checks at minimt's public boundary: a bad argument is refused where it enters, with a sentence
that names it and says what to change, instead of an error from deep inside torch or a silently
wrong number. Token ids cost one min/max over the tensor, never a loop per token."""
from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
import warnings

import torch

_INTERNAL = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(torch.__file__))
_WARNED: set[str] = set()  # messages already shown by warn_once


def check_token_ids(ids, vocab_size: int, name: str = "idx", ignore_index: int | None = None,
                    dtypes: tuple = (torch.long, torch.int)) -> None:
    """Refuse anything but a tensor of `dtypes` holding ids in [0, vocab_size) (or ignore_index)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}; "
                        f"convert it with torch.as_tensor({name}, dtype=torch.long)")
    if ids.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {ids.dtype}, but token ids are "
                        f"{' or '.join(map(str, dtypes))} here; pass {name}.long() (ids made by a "
                        f"tokenizer, not embeddings or probabilities)")
    if ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 and ignore_index is not None:  # the ignored positions do not count
        low = int(ids.masked_fill(ids == ignore_index, 0).min())
    if 0 <= low and high < vocab_size:
        return
    skip = f" ({ignore_index} marks a position to leave out)" if ignore_index is not None else ""
    if low < 0:
        raise ValueError(f"{name} holds the negative token id {low}{skip}: this model takes ids "
                         f"in [0, {vocab_size}) (vocab_size={vocab_size}); encode the text with "
                         f"the model's tokenizer")
    raise ValueError(f"{name} holds token id {high}, outside the vocabulary: this model takes ids "
                     f"in [0, {vocab_size}) (vocab_size={vocab_size}); encode the text with the "
                     f"tokenizer the model was built for, or build the model with "
                     f"GPTConfig(vocab_size={high + 1}) or larger")


def check_token_id(name: str, value, vocab_size: int) -> int:
    """One token id given as an argument (pad_token_id, eos_token_id): an int in [0, vocab_size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int token id in [0, {vocab_size}), got "
                        f"{type(value).__name__}; encode the token first, e.g. "
                        f"tokenizer.encode(text)[0]")
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab_size}) of this "
                         f"model; use an id of the model's tokenizer, below vocab_size={vocab_size}")
    return int(value)


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """An int (not a bool, not a str) >= minimum; `hint` is added to the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}, got "
                        f"{type(value).__name__}{_literal_hint(name, value, int)}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be an int >= {minimum}{hint}")
    return int(value)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """A finite real number in [low, high] (an end excluded with low_open/high_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number, got "
                        f"{type(value).__name__}{_literal_hint(name, value, float)}{hint}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if math.isfinite(value) and not below and not above:
        return float(value)
    if low is not None and high is not None:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None or high is not None:
        bound = low if low is not None else high
        sign = (">" if low is not None else "<") + ("" if low_open or high_open else "=")
        where = f"{sign} {bound:g} and finite"
    else:
        where = "a finite number"
    raise ValueError(f"{name}={value!r} must be {where}{hint}")


def _literal_hint(name: str, value, kind: type) -> str:
    """'; write name=3e-4 (a number, no quotes)' when `value` is a string holding a number."""
    if isinstance(value, str):
        try:
            return f"; write {name.rsplit('.', 1)[-1]}={kind(value)!r} (a number, no quotes)"
        except ValueError:
            pass
    return ""


def warn_once(message: str) -> None:
    """A UserWarning shown once per process (as transformers' warning_once), pointing at the first
    caller outside minimt and torch, so the line shown is the user's own call."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def cli_number(kind: type = int, low: float = 1, low_open: bool = False,
               high: float | None = None):
    """An argparse `type` for a number >= low (> low with low_open, <= high if given): a bad flag
    becomes argparse's one-line usage error ("argument --tp: '0' is not an integer >= 1")."""
    what = f"{'an integer' if kind is int else 'a number'} {'>' if low_open else '>='} {low:g}"
    what += f" and <= {high:g}" if high is not None else ""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (low_open and value == low) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what
    return parse
