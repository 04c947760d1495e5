"""Zero-bubble schedules: torch.distributed.pipelining's executed order, the simulator's bubble
against Qi et al.'s formulas, activations in flight, and the B/W split on real processes."""
import pytest
import torch

from minimt.parallel import launch
from minimt.parallel.pipeline import Action, ScheduleDeadlockError, pipeline_schedule, simulate
from minimt.parallel.zero_bubble import (NUM_CHUNKS, bubble_formula, bubble_time,
                                         peak_in_flight_zb, simulate_zb, zero_bubble_schedule)

ORDER_CASES = {"zb-h1": [(m,) for m in (2, 4, 8)], "zbv": [(m,) for m in (2, 4, 9)],
               "dualpipev": [(m,) for m in (8, 11)]}


def as_actions(torch_actions, p):
    """torch's executed order as minimt Actions: I -> B, W -> W, a full backward -> B then W, an
    overlapped forward + backward -> its two parts in order; stage >= p is chunk 1 (the V)."""
    from torch.distributed.pipelining.schedules import _ComputationType as T
    ops = {T.FORWARD: "F", T.BACKWARD_INPUT: "B", T.BACKWARD_WEIGHT: "W", T.FULL_BACKWARD: "BW"}
    out = []
    for a in torch_actions:
        if a is None:
            continue
        for part in a.sub_actions if a.computation_type == T.OVERLAP_F_B else [a]:
            out += [Action(op, part.microbatch_index, int(part.stage_index >= p))
                    for op in ops[part.computation_type]]
    return out


def torch_orders(ctx, cases):
    """Per (kind, m): each rank's order in torch's ScheduleInterleavedZeroBubble (one stage per
    rank: ZB1P, i.e. ZB-H1), ScheduleZBVZeroBubble and ScheduleDualPipeV, as minimt Actions."""
    from torch.distributed.pipelining import (PipelineStage, ScheduleDualPipeV,
                                              ScheduleInterleavedZeroBubble, ScheduleZBVZeroBubble)

    p, r = ctx.pp_size, ctx.pp_rank
    classes = {"zb-h1": ScheduleInterleavedZeroBubble, "zbv": ScheduleZBVZeroBubble,
               "dualpipev": ScheduleDualPipeV}
    out = {}
    for kind, m in cases:
        indices = [r] if kind == "zb-h1" else [r, 2 * p - 1 - r]
        stages = [PipelineStage(torch.nn.Identity(), s, p * len(indices), torch.device("cpu"),
                                group=ctx.pp_group) for s in indices]
        schedule = classes[kind](stages, n_microbatches=m, loss_fn=lambda y, t: y)
        out[kind, m] = [as_actions(schedule.pipeline_order[rank], p) for rank in range(p)]
    return out


def test_order_equals_torch_distributed_pipelining():
    """On 4 real ranks (the in-process test below covers the other sizes)."""
    p = 4
    cases = [(kind, m) for kind, ms in ORDER_CASES.items() for (m,) in ms]
    theirs = launch(torch_orders, cases, pp=p, timeout_s=60)[0]
    for kind, m in cases:
        assert zero_bubble_schedule(kind, p, m) == theirs[kind, m], (kind, p, m)


def test_order_equals_torchs_schedule_classes_over_many_sizes():
    """The same orders from torch's schedule classes' rank-operations method, in process (the
    oracle of task 11.1), over more sizes than the launched test above builds."""
    from minimt.exercises.beyond import torch_zero_bubble_order
    for kind in ("zb-h1", "zbv"):
        for p in (1, 2, 3, 4, 8):
            for m in (1, 2, 3, p, 2 * p, 2 * p - 1) + ((4 * p,) if p < 8 else ()):
                if kind == "zb-h1" and m > p and m % p:
                    continue
                expected = [torch_zero_bubble_order(kind, p, rank, m) for rank in range(p)]
                assert zero_bubble_schedule(kind, p, m) == expected, (kind, p, m)


def test_dualpipev_order_equals_torchs_over_many_sizes():
    """DualPipeV from ScheduleDualPipeV's rank-operations method, in process, on a stand-in
    holding the two sizes it reads; torch refuses m < 2p, and so does minimt."""
    from types import SimpleNamespace

    from torch.distributed.pipelining import ScheduleDualPipeV
    for p in (1, 2, 3, 4, 8):
        for m in sorted({2 * p, 2 * p + 1, 3 * p, 4 * p, 20} - set(range(2 * p))):
            sizes = SimpleNamespace(pp_group_size=p, _n_microbatches=m)
            expected = [as_actions(ScheduleDualPipeV._calculate_single_rank_operations(sizes, r), p)
                        for r in range(p)]
            assert pipeline_schedule("dualpipev", p, m, 2) == expected, (p, m)
    with pytest.raises(ValueError, match="at least 2p = 8 micro-batches"):
        pipeline_schedule("dualpipev", 4, 7, 2)


@pytest.mark.parametrize("p,m", [(2, 4), (3, 6), (4, 8), (4, 12)])
@pytest.mark.parametrize("costs", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.5), (2.0, 1.0, 1.0), (3.0, 1.0, 2.0)])
def test_simulated_bubble_equals_the_formulas(p, m, costs):
    f, b, w = costs
    one = simulate(pipeline_schedule("1f1b", p, m), f, b + w)
    assert one.makespan - m * (f + b + w) == pytest.approx(bubble_formula("1f1b", p, f, b, w))
    h1 = zero_bubble_schedule("zb-h1", p, m)
    assert bubble_time(h1, f, b, w) == pytest.approx(bubble_formula("zb-h1", p, f, b, w))
    if costs == (1.0, 1.0, 1.0):  # a third of 1F1B's; ZB-V's bubble is the V's fill: (p-1) F/2
        assert bubble_time(h1, f, b, w) == pytest.approx(bubble_formula("1f1b", p, f, b, w) / 3)
        assert bubble_time(zero_bubble_schedule("zbv", p, m), f, b, w) == pytest.approx((p - 1) / 2)
        if m >= 2 * p:  # DualPipeV run without overlapping its F and B pairs: ZB-V's fill
            dualpipev = zero_bubble_schedule("dualpipev", p, m)
            assert bubble_time(dualpipev, f, b, w) == pytest.approx((p - 1) / 2)


def test_the_simulator_replays_1f1b_and_measured_durations():
    """simulate_zb runs a 1F1B schedule as pipeline.simulate does (F, unsplit B), and replays
    per-action durations: uniform ones give the uniform-cost timeline; each action longer makes
    the step no shorter; a trace of the wrong length is refused."""
    one = pipeline_schedule("1f1b", 4, 8)
    assert simulate_zb(one, 1.0, 3.0, 0.0).makespan == simulate(one, 1.0, 3.0).makespan
    zbv = zero_bubble_schedule("zbv", 4, 8)
    uniform = [[{"F": 0.5, "B": 0.75, "W": 1.0}[a.op] for a in rank] for rank in zbv]
    assert simulate_zb(zbv, durations=uniform).events == simulate_zb(zbv, 1.0, 1.5, 2.0).events
    longer = [[t * (1 + 0.1 * (i % 3)) for i, t in enumerate(rank)] for rank in uniform]
    assert simulate_zb(zbv, durations=longer).makespan > simulate_zb(zbv, 1.0, 1.5, 2.0).makespan
    with pytest.raises(ValueError, match="one time per action"):
        simulate_zb(zbv, durations=uniform[:-1] + [uniform[-1][:-1]])


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 2)])
def test_activations_in_flight_as_1f1b(p, m):
    """ZB-H1 holds 1F1B's activations (W frees them); ZB-V's half-size chunks hold 2p chunk
    activations at most = p stages' worth, also 1F1B's."""
    assert peak_in_flight_zb(zero_bubble_schedule("zb-h1", p, m)) == [min(p, m)] * p
    assert max(peak_in_flight_zb(zero_bubble_schedule("zbv", p, m))) <= 2 * p
    if m >= 2 * p:  # DualPipeV: one chunk more, p + 1/2 stages (DeepSeek-V3's PP + 1 chunks)
        assert max(peak_in_flight_zb(zero_bubble_schedule("dualpipev", p, m))) == 2 * p + 1


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


# ---------------------------------------------------------------------------- the B/W split
from minimt.config import GPTConfig  # noqa: E402
from minimt.model import GPT  # noqa: E402
from minimt.parallel.pipeline_runtime import (ActionCost, pipeline_step, stage_parameters,  # noqa: E402
                                              sync_tied_grads)
from minimt.parallel.zero_bubble_runtime import (bubble_report, build_zb_stages,  # noqa: E402
                                                 zero_bubble_step)

CONFIG = GPTConfig(vocab_size=32, block_size=8, n_layer=4, n_head=2, n_embd=16)
BATCH, TIED = 8, "transformer.wte.weight"


def batch():
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g)
                 for _ in range(2))


def zb_gradients(ctx, cases):
    """Per (kind, m): the loss and this rank's gradients after one zero-bubble step."""
    out = {}
    for kind, m in cases:
        torch.manual_seed(0)
        stages = build_zb_stages(GPT(CONFIG), kind, ctx.pp_rank, ctx.pp_size)
        record = zero_bubble_step(stages, pipeline_schedule(kind, ctx.pp_size, m, NUM_CHUNKS[kind]),
                                  ctx, *batch())
        if kind == "zb-h1":
            sync_tied_grads(stages, ctx)  # the V: wte and lm_head are one Parameter on rank 0
        out[kind, m] = (record.loss, {n: p.grad.clone() for s in stages
                                      for n, p in s.named_parameters()}, record.peak_in_flight)
    return out


def test_split_backward_gives_the_serial_gradients():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    _, loss = model(*batch())
    loss.backward()
    cases = [("zb-h1", 2), ("zb-h1", 4), ("zbv", 4), ("dualpipev", 4)]
    results = launch(zb_gradients, cases, pp=2, timeout_s=60)
    for kind, m in cases:
        losses = [r[kind, m][0] for r in results if r[kind, m][0] is not None]
        assert losses == [pytest.approx(loss.item(), abs=1e-5)], (kind, m)
        seen = set()
        for rank, r in enumerate(results):
            for name, grad in r[kind, m][1].items():
                key = TIED if name == "lm_head.weight" else name
                torch.testing.assert_close(grad, model.get_parameter(key).grad, atol=1e-5, rtol=0,
                                           msg=f"{kind} m={m} rank {rank} {name}")
                seen.add(key)
            assert r[kind, m][2] == max(peak_in_flight_zb(
                pipeline_schedule(kind, 2, m, NUM_CHUNKS[kind]))[rank], 0)
        assert seen == {n for n, _ in model.named_parameters()}


def test_b_leaves_the_weights_to_w():
    """In one process, on the first of 2 stages: after B no weight has a gradient, after W every
    one has the unsplit backward's; one stage holding the tied weight twice is refused."""
    from minimt.parallel.zero_bubble_runtime import (backward_input, backward_weight,
                                                     forward_keeping_layer_outputs)
    torch.manual_seed(0)
    model = GPT(CONFIG)
    stage = build_zb_stages(model, "zb-h1", 0, 2)[0]
    idx, _ = batch()
    hidden, layer_outputs = forward_keeping_layer_outputs(stage, idx, None)   # (B, T, C)
    dy = torch.randn_like(hidden)
    dx, dys = backward_input(hidden, dy, idx, layer_outputs)
    assert dx is None and all(p.grad is None for p in stage.parameters())
    backward_weight(layer_outputs, dys)
    split = {n: p.grad.clone() for n, p in stage.named_parameters()}
    stage.zero_grad(set_to_none=True)
    stage(idx).backward(dy)
    for name, p in stage.named_parameters():
        torch.testing.assert_close(split[name], p.grad, atol=1e-6, rtol=0, msg=name)
    with pytest.raises(ValueError, match="split the model into >= 2 stages"):
        forward_keeping_layer_outputs(build_zb_stages(model, "zb-h1", 0, 1)[0], idx, idx)


def test_trainer_and_cli_train_the_serial_model(tmp_path):
    """`python -m minimt train --schedule zbv` (pp 2, dp 2) ends with the serial run's weights;
    the Trainer under zb-h1 with tp 2 x pp 2 trains the serial losses and weights."""
    from test_cli import FLAGS, TOLERANCE, largest_gap
    from test_trainer_layouts import _layout_vs_serial

    from minimt.__main__ import main
    from minimt.parallel.checkpoint import load_serial_model
    assert main(["train", *FLAGS, "--out", str(tmp_path / "serial")]) == 0
    assert main(["train", *FLAGS, "--pp", "2", "--dp", "2", "--schedule", "zbv",
                 "--out", str(tmp_path / "zbv")]) == 0
    assert largest_gap(load_serial_model(tmp_path / "serial"),
                       load_serial_model(tmp_path / "zbv")) < TOLERANCE
    results = launch(_layout_vs_serial, dict(schedule="zb-h1"), tp=2, pp=2, timeout_s=60)
    for rank, (losses, serial_losses, _, _, gaps, moved) in enumerate(results):
        assert losses == pytest.approx(serial_losses, abs=1e-5), rank
        assert max(gaps.values()) < 2e-5 and moved > 1e-2, rank


DEEP = GPTConfig(vocab_size=32, block_size=8, n_layer=8, n_head=2, n_embd=16)
BUBBLE_CASES = [("1f1b", 2.0), ("zb-h1", 1.0), ("zbv", 1.0)]  # backward cost: B+W, or B alone


def measure_bubbles(ctx, m, forward_s):
    """Per kind, this rank's StepRecord under simulated compute (sleep): F = B = W = forward_s
    per block, 1F1B's unsplit backward = B + W; after one step without the cost (it pays the
    one-time allocations)."""
    out = {}
    for kind, backward_factor in BUBBLE_CASES:
        cost = ActionCost(forward_s=forward_s, backward_factor=backward_factor)
        v = 1 + (kind == "zbv")
        torch.manual_seed(0)
        schedule = pipeline_schedule(kind, ctx.pp_size, m, v)
        if kind == "1f1b":
            from minimt.parallel.pipeline_runtime import build_stages
            stages, step = build_stages(DEEP, ctx.pp_rank, ctx.pp_size), pipeline_step
        else:
            stages, step = build_zb_stages(GPT(DEEP), kind, ctx.pp_rank, ctx.pp_size), zero_bubble_step
        step(stages, schedule, ctx, *batch())
        out[kind] = step(stages, schedule, ctx, *batch(), cost)
    return out


# The replay (the simulator fed each action's measured time) can only be shorter than the real
# step: it starts every action the instant its inputs are ready, the real run no earlier. What it
# leaves out is the time from ready to start (a gloo receive waking up, posting sends, Python),
# once per action on the longest chain (bubble_report's path_actions). Measured here with 4 ranks
# on 2 cores under a load average of 8-10: 0.4-1.9 ms per action (ZB-H1 0.5-1.8, ZB-V 0.4-1.3;
# 1F1B 0.9-1.9, whose chain waits for a message at almost every action); allowed: 3 ms.
HANDOFF_S = 3e-3


@pytest.mark.runs_alone
def test_measured_bubble_is_the_simulators_for_1f1b_zb_h1_and_zbv():
    """One launch, 4 ranks, m = 8, the three schedules: per rank bubble measured vs the
    simulator replaying each action's measured time (above); the formula equals the simulator
    fed the mean F, B, W of the same run (ZB-V's formula 0 vs the V's fill); ZB-H1's and ZB-V's
    measured bubbles below 1F1B's."""
    p, m = 4, 8
    records = launch(measure_bubbles, m, 0.02, pp=p, timeout_s=60)
    report = {}
    for kind, _ in BUBBLE_CASES:
        schedule = pipeline_schedule(kind, p, m, 1 + (kind == "zbv"))
        r = report[kind] = bubble_report(kind, schedule, [x[kind] for x in records])
        print(kind, {k: round(x, 4) for k, x in r.items()})
        assert r["replay"] <= r["measured"] + 1e-6, (kind, r)
        assert r["measured"] - r["replay"] <= r["path_actions"] * HANDOFF_S, (kind, r)
        if kind != "zbv":
            assert r["formula"] == pytest.approx(r["simulator"], abs=1e-9), (kind, r)
    assert 0 == report["zbv"]["formula"] < report["zbv"]["simulator"] < \
        report["zb-h1"]["simulator"] < report["1f1b"]["simulator"], report
    assert max(report[k]["measured"] for k in ("zb-h1", "zbv")) < report["1f1b"]["measured"]


def test_mt_nlg_bubble_under_1f1b_and_zb_h1():
    """MT-NLG (pp 35, global batch 1920 of micro-batch 1): 1F1B's bubble (p-1)/m and ZB-H1's third
    of it at 280/350/420 nodes, and the iteration times of its paper rescheduled."""
    from minimt.config import GPTConfig
    from minimt.scale import estimate, rescheduled_iteration_time
    config = GPTConfig.from_preset("mt-nlg-530b")
    for nodes, seconds in ((280, 60.1), (350, 50.2), (420, 44.4)):
        dp = nodes * 8 // 280
        m = 1920 // dp
        one = estimate(config, tp=8, pp=35, dp=dp, micro_batch_size=1, global_batch_size=1920)
        zb = estimate(config, tp=8, pp=35, dp=dp, micro_batch_size=1, global_batch_size=1920,
                      schedule="zb-h1")
        assert one.bubble == pytest.approx(34 / m) and zb.bubble == pytest.approx(34 / (3 * m))
        faster = rescheduled_iteration_time(seconds, 35, m, "zb-h1")
        assert faster == pytest.approx(seconds * (1 + 34 / (3 * m)) / (1 + 34 / m))
    with pytest.raises(ValueError, match="divisible by 2 \\* cp"):
        estimate(config, tp=8, pp=35, dp=8, micro_batch_size=1, global_batch_size=1920, cp=3)
    four = estimate(config, tp=8, pp=35, dp=2, micro_batch_size=1, global_batch_size=1920, cp=4)
    one = estimate(config, tp=8, pp=35, dp=2, micro_batch_size=1, global_batch_size=1920)
    assert four.num_gpus == 4 * one.num_gpus
    assert four.memory_bytes_per_gpu["activations"] == pytest.approx(
        one.memory_bytes_per_gpu["activations"] / 4)
