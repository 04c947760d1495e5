"""Schedules as data: shapes, validity, deadlock detection, simulated bubble vs theory, memory."""
import pytest
import torch

from minimt.parallel import launch
from minimt.parallel.pipeline import (SCHEDULES, Action, ScheduleDeadlockError, ScheduleError,
                                      bubble_fraction, bubble_time_ratio, num_warmup_microbatches,
                                      p2p_messages, peak_in_flight, pipeline_schedule, simulate,
                                      validate_schedule)

CASES = [(kind, p, m, v) for kind in SCHEDULES for p in (1, 2, 3, 4) for m in (1, 2, 4, 8, 12)
         for v in ((1, 2, 3) if kind == "interleaved" else (1,))
         if kind != "interleaved" or m % p == 0]


def test_small_schedules_by_hand():
    assert pipeline_schedule("naive", 2, 8) == [[Action("F", 0), Action("B", 0)]] * 2
    gpipe = pipeline_schedule("gpipe", 2, 2)
    assert [repr(a) for a in gpipe[0]] == ["F0", "F1", "B0", "B1"]
    one = pipeline_schedule("1f1b", 4, 8)
    assert [repr(a) for a in one[0]] == "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7".split()
    assert [repr(a) for a in one[3]] == "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7".split()
    inter = pipeline_schedule("interleaved", 2, 4, 2)  # rank 1 warms up (v-1)p = 2 forwards
    assert [repr(a) for a in inter[1]][:4] == ["F0", "F1", "F0.1", "B0.1"]


def test_warmup_counts_follow_megatron():
    assert [num_warmup_microbatches("1f1b", 4, r, 8) for r in range(4)] == [3, 2, 1, 0]
    assert num_warmup_microbatches("1f1b", 4, 0, 2) == 2  # capped at m
    assert [num_warmup_microbatches("interleaved", 2, r, 4, 2) for r in range(2)] == [4, 2]
    assert num_warmup_microbatches("interleaved", 2, 1, 2, 2) == 2  # m == p: same rule (not all)


@pytest.mark.parametrize("kind,p,m,v", CASES)
def test_every_schedule_is_valid_and_matches_bubble_theory(kind, p, m, v):
    schedule = pipeline_schedule(kind, p, m, v)
    assert len(schedule) == p
    validate_schedule(schedule)
    for forward_cost, backward_cost in ((1.0, 2.0), (1.0, 1.0), (2.0, 5.0)):
        timeline = simulate(schedule, forward_cost, backward_cost)
        assert timeline.idle_fraction() == pytest.approx(bubble_fraction(kind, p, m, v), abs=1e-12)
        ideal = (1 if kind == "naive" else m) * (forward_cost + backward_cost)
        bubble = timeline.makespan - ideal
        expected = bubble_time_ratio(p, 1 if kind == "naive" else m, v) * ideal
        assert bubble == pytest.approx(expected, abs=1e-9)


def torch_interleaved_orders(ctx, cases):
    """Per (v, m): each rank's order in torch's ScheduleInterleaved1F1B, as minimt Actions."""
    from torch.distributed.pipelining import PipelineStage, ScheduleInterleaved1F1B
    from torch.distributed.pipelining.schedules import _ComputationType

    p = ctx.pp_size
    orders = {}
    for v, m in cases:
        stages = [PipelineStage(torch.nn.Identity(), chunk * p + ctx.pp_rank, p * v,
                                torch.device("cpu"), group=ctx.pp_group) for chunk in range(v)]
        schedule = ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=lambda y, t: y)
        ops = {_ComputationType.FORWARD: "F", _ComputationType.FULL_BACKWARD: "B"}
        orders[v, m] = [[Action(ops[a.computation_type], a.microbatch_index, a.stage_index // p)
                         for a in schedule.pipeline_order[rank] if a is not None]
                        for rank in range(p)]
    return orders


@pytest.mark.parametrize("p", [2, 4])
def test_interleaved_order_equals_torch_distributed_pipelining(p):
    cases = [(v, m) for v in (2, 3) for m in (p, 2 * p)]
    torch_orders = launch(torch_interleaved_orders, cases, pp=p, timeout_s=60)[0]
    for v, m in cases:
        ours = pipeline_schedule("interleaved", p, m, v)
        assert ours == torch_orders[v, m], (p, v, m)
        if m == p:  # the current warm-up holds fewer activations than running every forward first
            assert peak_in_flight(ours)[-1] < m * v


@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 4), (4, 8), (3, 12)])
def test_peak_in_flight_gpipe_m_1f1b_at_most_p(p, m):
    assert peak_in_flight(pipeline_schedule("gpipe", p, m)) == [m] * p
    assert peak_in_flight(pipeline_schedule("1f1b", p, m)) == [min(p - r, m) for r in range(p)]
    assert peak_in_flight(pipeline_schedule("naive", p, m)) == [1] * p


def test_theory_values():
    assert bubble_fraction("naive", 4, 8) == pytest.approx(3 / 4)
    assert bubble_fraction("gpipe", 4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction("1f1b", 4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction("interleaved", 4, 8, 2) == pytest.approx(3 / 19)
    assert bubble_time_ratio(4, 8, 2) == pytest.approx(0.5 * 3 / 8)


def test_every_send_has_its_receive():
    sends, recvs = p2p_messages(pipeline_schedule("interleaved", 2, 4, 2))
    assert sorted(sends) == sorted(recvs)
    assert len(sends) == 2 * 4 * (2 * 2 - 1)  # F and B across each of the 3 stage boundaries


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="divisible by num_stages"):
        pipeline_schedule("interleaved", 4, 6, 2)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        pipeline_schedule("zero-bubble", 2, 2)
    with pytest.raises(ValueError, match="needs kind='interleaved'"):
        pipeline_schedule("1f1b", 2, 2, num_chunks=2)
    with pytest.raises(ValueError, match="num_microbatches=0"):
        pipeline_schedule("gpipe", 2, 0)


def test_broken_schedules_are_refused():
    ok = pipeline_schedule("1f1b", 2, 2)
    with pytest.raises(ScheduleError, match="before its forward"):
        validate_schedule([ok[0], [Action("B", 0), Action("F", 0), Action("F", 1), Action("B", 1)]])
    with pytest.raises(ScheduleError, match=r"no B for .*\(1, 0\)"):
        validate_schedule([ok[0], ok[1][:-1]])
    with pytest.raises(ScheduleError, match="appears twice"):
        validate_schedule([ok[0], ok[1] + [Action("F", 0)]])
    with pytest.raises(ScheduleError, match="must be 'F' or 'B'"):
        validate_schedule([ok[0], [Action("W", 0)] + ok[1]])


def test_deadlocking_schedule_is_refused_with_the_waits():
    # Rank 1 wants micro-batch 1 first, rank 0 waits for B0 before sending F1: both block.
    broken = [[Action("F", 0), Action("B", 0), Action("F", 1), Action("B", 1)],
              [Action("F", 1), Action("B", 1), Action("F", 0), Action("B", 0)]]
    with pytest.raises(ScheduleDeadlockError, match=r"rank 0 at B0; rank 1 at F1"):
        validate_schedule(broken)


@pytest.mark.instructor_only  # model answers: left out of student copies
def test_exercise_checkers_accept_answers_and_reject_bugs(capsys):
    import math

    from minimt.exercises import (ExerciseError, check_messages_sent, check_min_microbatches,
                                  check_step_time)
    check_min_microbatches(lambda p, t: math.ceil((p - 1) * (1 - t) / t))
    check_messages_sent(lambda p, m, v, r: 2 * m * v - m * (r == 0) - m * (r == p - 1))
    check_step_time(lambda p, m, v, f, b: (m * v + p - 1) * (f + b) / v)
    assert "check_step_time: all 5 cases pass" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="the idle fraction is"):  # (p-1)/m, not the idle share
        check_min_microbatches(lambda p, t: math.ceil((p - 1) / t))
    with pytest.raises(ExerciseError, match="two ends of the pipeline"):
        check_messages_sent(lambda p, m, v, r: 2 * m * v)
    with pytest.raises(ExerciseError, match="case 2 of 5"):  # forgets that a chunk costs 1/v
        check_step_time(lambda p, m, v, f, b: (m * v + p - 1) * (f + b))
    with pytest.raises(ExerciseError, match="not implemented"):
        check_min_microbatches(lambda p, t: (_ for _ in ()).throw(NotImplementedError))
