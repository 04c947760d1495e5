"""Exercise checkers: `check_<name>(fn)` runs a learner's function against the reference on
several cases and says what is wrong (which case, shape or values) instead of a bare assert.
One module per notebook; every checker is importable from here."""
import importlib
import pkgutil

from .core import ExerciseError, Task, compare, run_cases
from .attention import check_alibi_attention, check_dilated_mask, check_prefix_lm_mask
from .gpt import check_first_step_below, check_llama_param_count, check_lm_loss
from .tensor_parallel import (check_bytes_per_layer, check_column_parallel_backward,
                              check_tp_mlp_operators)
from .pipeline import check_messages_sent, check_min_microbatches, check_step_time
from .precision import check_largest_loss_scale, check_prune_half, check_skipped_steps
from .generation import check_min_p_filter, check_kv_cache_bytes, check_greedy_until_eos


def all_tasks() -> list[Task]:
    """Every task of the course in id order, collected from the `TASKS` list of each module here."""
    modules = [importlib.import_module(f"{__name__}.{info.name}")
               for info in pkgutil.iter_modules(__path__) if info.name != "core"]
    tasks = [task for module in modules for task in getattr(module, "TASKS", [])]
    return sorted(tasks, key=lambda task: tuple(int(part) for part in task.id.split(".")))
