"""Helpers several test files share: seeded batches every process draws alike, and the serial
reference's AdamW."""
import torch


def token_batch(step, config, size):
    """The global batch of `step`: `size` seeded sequences (size, block_size) and their next
    tokens, the same numbers in every process."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randint(0, config.vocab_size, (size, config.block_size), generator=g)
    return x, torch.roll(x, -1, dims=1)


def batch_with_ignored_targets(config, batch_size, seq_len):
    """Seeded (B, T) tokens and targets whose first 5 targets in row 0 are ignored (-100)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g)
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g)
    targets[0, :5] = -100  # ignored positions count in neither loss
    return idx, targets


def decays(p):
    """Weight decay on matrices (>= 2-D) only, not on biases and LayerNorm gains."""
    return p.dim() >= 2


def reference_adamw(params, lr):
    """torch.optim.AdamW with weight decay 0.1 on the `decays` parameters: the serial reference."""
    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if decays(p)]},
                              {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}],
                             lr=lr, weight_decay=0.1, foreach=False)


def oracle(module):
    """Import a test-only oracle (megatron-core, datasketch) or skip the calling test with one line
    saying why: minimt never needs them, and megatron-core has Linux wheels only."""
    import pytest
    package = {"megatron": "megatron-core"}.get(module.split(".")[0], module.split(".")[0])
    where = " (its wheels are Linux-only)" if package == "megatron-core" else ""
    return pytest.importorskip(module, reason=f"{package}, a test-only oracle, is not installed "
                               f"here{where}: pip install -r requirements.txt")
