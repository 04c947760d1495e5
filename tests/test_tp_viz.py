"""tp_viz's formulas equal what the sharded models hold and send, and its ownership maps say
exactly which rank holds which slice (checked against Megatron's layout by hand)."""
import numpy as np
import pytest
import torch

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.parallel import CommCounter, ParallelContext, launch
from minimt.parallel.tensor import apply_tensor_parallel
from minimt.parallel.tp_viz import (REPLICATED, comm_bytes_per_step, owner_maps, params_per_rank,
                                    plot_tp_costs, plot_weight_owners, shard_index_maps)

CONFIG = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=4, n_embd=16, bias=True)
B = 2


def _measure(ctx, config):
    """This rank's parameter count, one step's all-reduced bytes, and its shard index maps."""
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(config), ctx)
    idx = torch.randint(0, config.vocab_size, (B, config.block_size))
    with CommCounter() as forward:
        _, loss = model(idx, idx)
    with CommCounter() as backward:
        loss.backward()
    return {"params": sum(p.numel() for p in model.parameters()),
            "forward": forward.bytes(), "backward": backward.bytes(),
            "maps": shard_index_maps(ctx, config)}


@pytest.fixture(scope="module")
def measured():
    runs = {1: [_measure(ParallelContext(), CONFIG)]}
    for tp in (2, 4):
        runs[tp] = launch(_measure, CONFIG, tp=tp, timeout_s=60)
    return runs


@pytest.mark.parametrize("config", [CONFIG, CONFIG.replace(bias=False, vocab_size=65)])
def test_params_per_rank_formula_equals_sharded_models(config):
    for tp in (1, 2, 4):
        counts = {r["params"] for r in (launch(_measure, config, tp=tp, timeout_s=60)
                                        if tp > 1 else [_measure(ParallelContext(), config)])}
        assert counts == {params_per_rank(config, tp)}, f"tp={tp}"
    assert params_per_rank(config, 1) == GPT(config).num_params()


def test_comm_formula_equals_counter(measured):
    for tp, ranks in measured.items():
        expected = comm_bytes_per_step(CONFIG, B, tp)
        for r in ranks:
            assert (r["forward"], r["backward"]) == (expected["forward"], expected["backward"])
    assert comm_bytes_per_step(CONFIG, B, 2)["backward"] > 0


def test_owner_maps_follow_megatrons_layout(measured):
    serial = {n: tuple(p.shape) for n, p in GPT(CONFIG).named_parameters()}
    owners = owner_maps([r["maps"] for r in measured[2]], serial)
    C, V = CONFIG.n_embd, CONFIG.vocab_size
    # embedding: vocabulary rows 0..24 on rank 0, 25..49 on rank 1
    wte = owners["transformer.wte.weight"]
    assert (wte[:25] == 0).all() and (wte[25:V] == 1).all()
    # c_attn [Q|K|V]: each rank holds its half of the heads of Q, of K and of V
    c_attn = owners["transformer.h.0.attn.c_attn.weight"][:, 0]
    expected = np.array(([0] * (C // 2) + [1] * (C // 2)) * 3)
    np.testing.assert_array_equal(c_attn, expected)
    # row-parallel: columns split; its bias replicated; column-parallel bias split
    assert (owners["transformer.h.0.mlp.c_proj.weight"][:, :2 * C] == 0).all()
    assert (owners["transformer.h.0.mlp.c_proj.weight"][:, 2 * C:] == 1).all()
    assert (owners["transformer.h.0.mlp.c_proj.bias"] == REPLICATED).all()
    assert (owners["transformer.h.0.mlp.c_fc.bias"][0, :2 * C] == 0).all()
    assert (owners["transformer.h.0.ln_1.weight"] == REPLICATED).all()
    assert (owners["transformer.wpe.weight"] == REPLICATED).all()


def test_padded_vocabulary_at_tp4(measured):
    serial = {n: tuple(p.shape) for n, p in GPT(CONFIG).named_parameters()}
    wte = owner_maps([r["maps"] for r in measured[4]], serial)["transformer.wte.weight"][:, 0]
    # 50 ids padded to 52: 13 rows per rank, the last rank holds ids 39..49 and 2 padding rows
    np.testing.assert_array_equal(wte, np.repeat([0, 1, 2, 3], [13, 13, 13, 11]))
    assert (measured[4][3]["maps"]["transformer.wte.weight"][-2:] == 0).all()  # padding ids


def test_owner_maps_refuse_elements_held_by_some_ranks_only(measured):
    maps = [dict(r["maps"]) for r in measured[4]]
    for rank in (1, 2):
        maps[rank]["transformer.wpe.weight"] = maps[rank]["transformer.wpe.weight"][:1]
    with pytest.raises(ValueError, match="transformer.wpe.weight"):
        owner_maps(maps, {"transformer.wpe.weight": (CONFIG.block_size, CONFIG.n_embd)})
    maps[0]["transformer.wpe.weight"] = maps[3]["transformer.wpe.weight"] = maps[1][
        "transformer.wpe.weight"]
    with pytest.raises(ValueError, match="transformer.wpe.weight"):  # most rows: held by no rank
        owner_maps(maps, {"transformer.wpe.weight": (CONFIG.block_size, CONFIG.n_embd)})


def test_plots_have_titles_and_labels(measured):
    serial = {n: tuple(p.shape) for n, p in GPT(CONFIG).named_parameters()}
    fig = plot_weight_owners(owner_maps([r["maps"] for r in measured[4]], serial), tp=4)
    assert fig._suptitle.get_text() and all(ax.get_xlabel() for ax in fig.axes[:5])
    fig = plot_tp_costs([1, 2, 4], [0, 1e6, 1e6], [0, 1e6, 1e6], [10, 6, 4], [10, 6, 4])
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
