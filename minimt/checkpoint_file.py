"""One checkpoint file: written atomically (a crash leaves the old file), read safely
(weights_only=True: tensors and plain containers, no pickled code), and refused with a sentence
naming the user's path when it is corrupt, truncated, a bare state_dict or another model's."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import asdict

import torch

CHECKPOINT_KEYS = ("model", "optimizer", "iter_num", "train_config", "model_config", "history",
                   "rng")


def atomic_save(state: dict, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then os.replace; an error names `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(error, path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_error(error: OSError, path: str | os.PathLike,
                fix: str = "give the path of a file (not a folder) in a folder you can write "
                           "to") -> OSError:
    """`error` (of the same type) restated as a sentence that names the user's `path`, not a
    temporary beside it, and says what to change."""
    reason = error.strerror or error
    if isinstance(error, (FileExistsError, NotADirectoryError)):  # from makedirs / mkdir
        reason = "a part of its folder path is a file, not a folder"
    return type(error)(error.errno, f"cannot write the checkpoint {os.fspath(path)!r}: "
                                    f"{reason}; {fix}")


def read_file(path: str | os.PathLike, writer: str = "Trainer.save_checkpoint(path)"):
    """torch.load(path, weights_only=True) on the CPU; a corrupt, truncated or code-holding file
    is a ValueError naming `path` and `writer`, the call that writes a good one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        reason = (f"it holds a pickled Python object ({found.group(1)}), which minimt does not "
                  f"run (weights_only=True); save plain tensors, numbers and containers"
                  if found else "the file is corrupt or truncated (an interrupted save or copy?)")
        raise ValueError(f"cannot read the checkpoint {os.fspath(path)!r}: {reason}; write it "
                         f"again with {writer}") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint dict, read with weights_only=True (plain tensors and containers, no pickled code)."""
    state = read_file(path)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing and isinstance(state, dict) and all(isinstance(v, torch.Tensor)
                                                   for v in state.values()):
        raise ValueError(f"{os.fspath(path)!r} holds a bare state_dict ({len(state)} tensors, "
                         f"from torch.save(model.state_dict())), not a Trainer checkpoint: load "
                         f"it with model.load_state_dict(torch.load(path, weights_only=True)), or "
                         f"save with Trainer.save_checkpoint(path) to resume training")
    if missing:
        raise ValueError(f"{os.fspath(path)!r} is not a Trainer checkpoint: it lacks {missing}; "
                         f"write checkpoints with Trainer.save_checkpoint(path)")
    return state


def check_same_model_config(path, saved: dict | None, config,
                            source: str = "load_checkpoint(path)['model_config']") -> None:
    """Name the fields in which the checkpoint's model config differs from this model's;
    `source` is the expression that gives the saved config's fields."""
    if saved is None or config is None:
        return
    current = asdict(config)
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={current.get(k)!r}" for k in differ)
        raise ValueError(f"the checkpoint {os.fspath(path)!r} holds a model that differs from "
                         f"this one: it has {was}, this model {now}; build the model with "
                         f"GPTConfig(**{source}) before loading")
