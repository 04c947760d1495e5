"""Zero-bubble schedules: torch.distributed.pipelining's executed order, the simulator's bubble
against Qi et al.'s formulas, activations in flight, and the B/W split on real processes."""
import pytest
import torch

from minimt.parallel import launch
from minimt.parallel.pipeline import Action, ScheduleDeadlockError, pipeline_schedule, simulate
from minimt.parallel.zero_bubble import (bubble_formula, bubble_time, peak_in_flight_zb,
                                         simulate_zb, zero_bubble_schedule)

ORDER_CASES = {"zb-h1": [(m,) for m in (1, 2, 4, 8, 12)], "zbv": [(m,) for m in (1, 2, 4, 8, 9)]}


def torch_orders(ctx, cases):
    """Per (kind, m): each rank's order in torch's ScheduleInterleavedZeroBubble (one stage per
    rank: ZB1P, i.e. ZB-H1) and ScheduleZBVZeroBubble, as minimt Actions (I -> B, W -> W)."""
    from torch.distributed.pipelining import (PipelineStage, ScheduleInterleavedZeroBubble,
                                              ScheduleZBVZeroBubble)
    from torch.distributed.pipelining.schedules import _ComputationType as T

    p, r = ctx.pp_size, ctx.pp_rank
    ops = {T.FORWARD: "F", T.BACKWARD_INPUT: "B", T.BACKWARD_WEIGHT: "W"}
    out = {}
    for kind, m in cases:
        indices = [r] if kind == "zb-h1" else [r, 2 * p - 1 - r]
        stages = [PipelineStage(torch.nn.Identity(), s, p * len(indices), torch.device("cpu"),
                                group=ctx.pp_group) for s in indices]
        cls = ScheduleInterleavedZeroBubble if kind == "zb-h1" else ScheduleZBVZeroBubble
        schedule = cls(stages, n_microbatches=m, loss_fn=lambda y, t: y)
        out[kind, m] = [[Action(ops[a.computation_type], a.microbatch_index,
                                0 if a.stage_index < p else 1)
                         for a in schedule.pipeline_order[rank] if a is not None]
                        for rank in range(p)]
    return out


@pytest.mark.parametrize("p", [2, 4])
def test_order_equals_torch_distributed_pipelining(p):
    cases = [(kind, m) for kind, ms in ORDER_CASES.items() for (m,) in ms]
    theirs = launch(torch_orders, cases, pp=p, timeout_s=60)[0]
    for kind, m in cases:
        assert zero_bubble_schedule(kind, p, m) == theirs[kind, m], (kind, p, m)


@pytest.mark.parametrize("p,m", [(2, 4), (3, 6), (4, 8), (4, 12)])
@pytest.mark.parametrize("costs", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.5), (2.0, 1.0, 1.0)])
def test_simulated_bubble_equals_the_formulas(p, m, costs):
    f, b, w = costs
    one = simulate(pipeline_schedule("1f1b", p, m), f, b + w)
    assert one.makespan - m * (f + b + w) == pytest.approx(bubble_formula("1f1b", p, f, b, w))
    h1 = zero_bubble_schedule("zb-h1", p, m)
    assert bubble_time(h1, f, b, w) == pytest.approx(bubble_formula("zb-h1", p, f, b, w))
    if costs == (1.0, 1.0, 1.0):  # a third of 1F1B's; ZB-V's bubble is the V's fill: (p-1) F/2
        assert bubble_time(h1, f, b, w) == pytest.approx(bubble_formula("1f1b", p, f, b, w) / 3)
        assert bubble_time(zero_bubble_schedule("zbv", p, m), f, b, w) == pytest.approx((p - 1) / 2)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 2)])
def test_activations_in_flight_as_1f1b(p, m):
    """ZB-H1 holds 1F1B's activations (W frees them); ZB-V's half-size chunks hold 2p chunk
    activations at most = p stages' worth, also 1F1B's."""
    assert peak_in_flight_zb(zero_bubble_schedule("zb-h1", p, m)) == [min(p, m)] * p
    assert max(peak_in_flight_zb(zero_bubble_schedule("zbv", p, m))) <= 2 * p


def test_bad_schedules_and_arguments_are_refused():
    with pytest.raises(ValueError, match="m a multiple of p"):
        zero_bubble_schedule("zb-h1", 4, 6)
    with pytest.raises(ValueError, match="unknown zero-bubble kind"):
        zero_bubble_schedule("zb-h3", 2, 2)
    broken = [[Action("F", 0), Action("B", 0), Action("W", 0)],
              [Action("B", 0), Action("F", 0), Action("W", 0)]]
    with pytest.raises(ScheduleDeadlockError, match="rank 1 at B0"):
        simulate_zb(broken)
    assert pipeline_schedule("zbv", 2, 4, 2) == zero_bubble_schedule("zbv", 2, 4)
