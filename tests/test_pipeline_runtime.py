"""Pipeline runtime on real gloo processes: same loss, gradients and weights as the serial GPT;
measured peak memory and (under controlled cost) measured bubble against the theory."""
import pytest
import torch

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.parallel import ParallelContext, RankError, launch
from minimt.parallel.pipeline import (Action, bubble_fraction, peak_in_flight, pipeline_schedule)
from minimt.parallel.pipeline_runtime import (ActionCost, GPTStage, build_stages, pipeline_step,
                                              sync_tied_grads, stage_layers,
                                              stage_parameters,
                                              timeline_from_records)

CONFIG = GPTConfig(vocab_size=32, block_size=8, n_layer=8, n_head=2, n_embd=16)
STEPS, LR, BATCH = 3, 0.1, 8
TIED = "transformer.wte.weight"


def batches(steps=STEPS):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g),
             torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.block_size), generator=g))
            for _ in range(steps)]


def serial_reference():
    """Losses, first-step gradients and final weights of the serial model, plain SGD."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses, grads = [], None
    for idx, targets in batches():
        optimizer.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        grads = grads or {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.item())
    return losses, grads, dict(model.named_parameters())


def configurations(p):
    cases = [("naive", 1, 1)]
    for m in (1, 2, 4, 8):
        cases += [("gpipe", m, 1), ("1f1b", m, 1)]
        if m % p == 0:
            cases.append(("interleaved", m, 2))
    return cases


def train_every_schedule(ctx):
    """On each rank: every schedule for a few SGD steps; losses, first grads, final weights."""
    out = {}
    for kind, m, v in configurations(ctx.pp_size):
        stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size, v, seed=0)
        params = {n: p for s in stages for n, p in s.named_parameters()}
        optimizer = torch.optim.SGD(stage_parameters(stages), lr=LR)
        schedule = pipeline_schedule(kind, ctx.pp_size, m, v)
        losses, grads = [], None
        for idx, targets in batches():
            optimizer.zero_grad(set_to_none=True)
            record = pipeline_step(stages, schedule, ctx, idx, targets)
            sync_tied_grads(stages, ctx)
            optimizer.step()
            grads = grads or {n: p.grad.clone() for n, p in params.items()}
            losses.append(record.loss)
        out[(kind, m, v)] = (losses, grads, {n: p.detach().clone() for n, p in params.items()},
                             record.peak_in_flight)
    return out


def test_stage_layers_split_evenly_and_refuse_too_many_stages():
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    with pytest.raises(ValueError, match="cannot cut n_layer=8 blocks into 9"):
        stage_layers(8, 9)


def test_stages_compose_to_the_serial_model_in_one_process():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    idx, targets = batches(1)[0]
    x = idx
    for s in range(4):
        x = GPTStage(model, s, 4)(x, targets if s == 3 else None)
    assert torch.allclose(x, model(idx, targets)[1], atol=1e-6)
    names = {n for s in range(4) for n, _ in GPTStage(model, s, 4).named_parameters()}
    # serial names, nothing missing; the last stage names its copy of the tied weight lm_head
    assert names == {n for n, _ in model.named_parameters()} | {"lm_head.weight"}


@pytest.mark.parametrize("p", [2, 4])
def test_every_schedule_matches_the_serial_model(p):
    ref_losses, ref_grads, ref_params = serial_reference()
    results = launch(train_every_schedule, pp=p, timeout_s=60)
    for case in configurations(p):
        losses = results[-1][case][0]  # the last stage holds the loss
        assert losses == pytest.approx(ref_losses, abs=1e-5), case
        seen = set()
        for rank in range(p):
            _, grads, params, _ = results[rank][case]
            for name in grads:
                key = TIED if name == "lm_head.weight" else name
                torch.testing.assert_close(grads[name], ref_grads[key], atol=1e-5, rtol=0,
                                           msg=f"{case} rank {rank} grad {name}")
                torch.testing.assert_close(params[name], ref_params[key].detach(), atol=1e-5,
                                           rtol=0, msg=f"{case} rank {rank} weight {name}")
                seen.add(key)
        assert seen == set(ref_grads), case  # every serial parameter lives on some stage
        kind, m, v = case
        measured = [results[rank][case][3] for rank in range(p)]
        assert measured == peak_in_flight(pipeline_schedule(kind, p, m, v)), case
        if kind == "gpipe":
            assert measured == [m] * p
        if kind == "1f1b":
            assert max(measured) <= p


def test_one_rank_with_two_chunks_runs_in_process_and_matches():
    ref_losses, ref_grads, _ = serial_reference()
    stages = build_stages(CONFIG, 0, 1, num_chunks=2)
    idx, targets = batches(1)[0]
    record = pipeline_step(stages, pipeline_schedule("interleaved", 1, 4, 2), ParallelContext(),
                           idx, targets)
    assert record.loss == pytest.approx(ref_losses[0], abs=1e-5)
    assert stages[1].lm_head.weight is stages[0].transformer.wte.weight  # tied on one rank
    assert len(stage_parameters(stages)) == len(ref_grads)  # and counted once
    grads = {n: p.grad for s in stages for n, p in s.named_parameters()}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[TIED if name == "lm_head.weight" else name],
                                   atol=1e-5, rtol=0)


def test_runtime_input_errors_say_what_to_change():
    stages = build_stages(CONFIG, 0, 1)
    idx, targets = batches(1)[0]
    with pytest.raises(ValueError, match="batch size 8 is not divisible by num_microbatches=3"):
        pipeline_step(stages, pipeline_schedule("gpipe", 1, 3), ParallelContext(), idx, targets)
    with pytest.raises(ValueError, match="this rank holds 1 chunks"):
        pipeline_step(stages, pipeline_schedule("interleaved", 1, 2, 2), ParallelContext(), idx,
                      targets)
    with pytest.raises(ValueError, match="mode='fast'"):
        ActionCost(mode="fast")


def test_action_cost_spends_at_least_its_time():
    import time
    cost = ActionCost(forward_s=0.005, mode="sleep")
    start = time.perf_counter()
    cost.spend("B", 2)  # 2 blocks x 2 (backward) x 5 ms
    assert time.perf_counter() - start >= 0.02
    assert ActionCost(forward_s=0.001, mode="matmul").matmuls_per_layer >= 1


def run_broken(ctx):
    broken = [[Action("F", 0), Action("B", 0), Action("F", 1), Action("B", 1)],
              [Action("F", 1), Action("B", 1), Action("F", 0), Action("B", 0)]]
    stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size)
    idx, targets = batches(1)[0]
    pipeline_step(stages, broken, ctx, idx, targets)


def test_broken_schedule_is_refused_before_any_message():
    with pytest.raises(RankError, match="deadlock: every unfinished rank waits"):
        launch(run_broken, pp=2, timeout_s=20)


MEASURED_STEPS = 2  # after a first step that pays for one-time allocations


def measure_bubbles(ctx, cases, forward_s):
    """Per case, this rank's StepRecords of MEASURED_STEPS steps under simulated compute (sleep)
    of forward_s per block, after a first, unmeasured step."""
    cost = ActionCost(forward_s=forward_s, mode="sleep")
    out = []
    for kind, m, v in cases:
        stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size, v)
        schedule = pipeline_schedule(kind, ctx.pp_size, m, v)
        idx, targets = batches(1)[0]
        records = [pipeline_step(stages, schedule, ctx, idx, targets, cost)
                   for _ in range(1 + MEASURED_STEPS)]
        out.append(records[1:])
    return out


# Absolute, on the idle fraction. Each hop adds p2p latency and a wake-up after sleep, which
# theory ignores; interleaved at p 4 has the most hops. Its excess at 10 ms per block was 0.05
# alone on 2 cores, 0.10-0.17 while other processes loaded them (the suite's other test process
# running 8 ranks; 8 busy loops); at 20 ms per block, 0.03 alone. So the test runs alone
# (runs_alone, conftest.py) with 40 ms per stage (4 blocks of 10 ms at p 2, 2 of 20 ms at p 4),
# and compares the least idle of the measured steps, as a benchmark reports its best repeat:
# noise only ever adds idle time.
BUBBLE_TOLERANCE = 0.1


@pytest.mark.runs_alone
@pytest.mark.parametrize("p,forward_s", [(2, 0.01), (4, 0.02)])
def test_measured_bubble_matches_theory_under_controlled_cost(p, forward_s):
    cases = [("naive", 1, 1), ("gpipe", 4, 1), ("1f1b", 8, 1), ("interleaved", 8, 2)]
    records = launch(measure_bubbles, cases, forward_s, pp=p, timeout_s=60)
    for i, (kind, m, v) in enumerate(cases):
        measured = min(timeline_from_records([records[r][i][step] for r in range(p)])
                       .idle_fraction() for step in range(MEASURED_STEPS))
        theory = bubble_fraction(kind, p, m, v)
        assert measured == pytest.approx(theory, abs=BUBBLE_TOLERANCE), (kind, m, measured)


def run_torch_pipelining(ctx, m):
    """The same GPTStages under torch.distributed.pipelining's GPipe and 1F1B schedules."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from minimt.model import cross_entropy_loss
    idx, targets = batches(1)[0]
    out = {}
    for name, schedule_class in (("gpipe", ScheduleGPipe), ("1f1b", Schedule1F1B)):
        stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size)
        stage = PipelineStage(stages[0], ctx.pp_rank, ctx.pp_size, torch.device("cpu"),
                              group=ctx.pp_group)
        schedule = schedule_class(stage, n_microbatches=m, loss_fn=cross_entropy_loss)
        losses = []  # torch averages the gradients over micro-batches (scale_grads=True)
        if ctx.is_first_stage:
            schedule.step(idx)
        elif ctx.is_last_stage:
            schedule.step(target=targets, losses=losses)
        else:
            schedule.step()
        sync_tied_grads(stages, ctx)
        out[name] = (torch.stack(losses).mean().item() if losses else None,
                     {n: p.grad for n, p in stages[0].named_parameters()})
    return out


def test_torch_distributed_pipelining_gives_the_same_gradients():
    ref_losses, ref_grads, _ = serial_reference()
    results = launch(run_torch_pipelining, 4, pp=2, timeout_s=60)
    for name in ("gpipe", "1f1b"):
        assert results[-1][name][0] == pytest.approx(ref_losses[0], abs=1e-5), name
        for rank in range(2):
            for n, grad in results[rank][name][1].items():
                torch.testing.assert_close(grad, ref_grads[TIED if n == "lm_head.weight" else n],
                                           atol=1e-5, rtol=0, msg=f"{name} rank {rank} {n}")


def _counted_step(ctx, kind, m, v):
    from minimt.parallel import CommCounter
    stages = build_stages(CONFIG, ctx.pp_rank, ctx.pp_size, v, seed=0)
    idx, targets = batches(1)[0]
    with CommCounter() as counter:
        pipeline_step(stages, pipeline_schedule(kind, ctx.pp_size, m, v), ctx, idx, targets)
        sync_tied_grads(stages, ctx)
    return {(k, ph): counter.bytes(kind=k, group="pp", phase=ph)
            for k in ("send", "recv") for ph in ("forward", "backward")}


@pytest.mark.parametrize("kind,m,v", [("1f1b", 4, 1), ("interleaved", 2, 2)])
def test_the_counter_sees_every_pipeline_message(kind, m, v):
    """Activations forward and gradients back between neighbouring virtual stages, plus the tied
    embedding's gradient between the first and the last rank, all counted by CommCounter."""
    p = 2
    message = 4 * (BATCH // m) * CONFIG.block_size * CONFIG.n_embd  # one (B/m, T, C) fp32
    tied = 4 * CONFIG.vocab_size * CONFIG.n_embd
    crossings = p * v - 1  # boundaries between virtual stages, each crossed by a rank change
    results = launch(_counted_step, kind, m, v, pp=p, timeout_s=60)
    total_sent = sum(r[("send", "forward")] for r in results)
    assert total_sent == crossings * m * message
    for rank, counted in enumerate(results):
        assert counted[("send", "backward")] == counted[("recv", "forward")] + tied, rank
        assert counted[("recv", "backward")] == counted[("send", "forward")] + tied, rank


def _recompute_step(ctx, mode, kind):
    """One step of a pipeline built from GPT(CONFIG, recompute=mode): loss, gradients, and the
    bytes autograd saved for backward on this rank (the weights left out)."""
    from minimt.memory import SavedTensorBytes
    torch.manual_seed(0)
    model = GPT(CONFIG, recompute=mode)
    stages = [GPTStage(model, ctx.pp_rank, ctx.pp_size)]
    idx, targets = batches(1)[0]
    with SavedTensorBytes(exclude=model) as saved:
        record = pipeline_step(stages, pipeline_schedule(kind, ctx.pp_size, 4), ctx, idx, targets)
    sync_tied_grads(stages, ctx)
    return record.loss, {n: p.grad for n, p in stages[0].named_parameters()}, saved.bytes


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_full_recompute_in_pipeline_stages_keeps_gradients_and_saves_less(kind):
    """Stages run their blocks through GPT.run_block, so recompute="full" holds there too: the
    same loss and gradients (1e-6), and each rank keeps only its blocks' inputs for backward."""
    ref_losses, ref_grads, _ = serial_reference()
    runs = {mode: launch(_recompute_step, mode, kind, pp=2, timeout_s=60)
            for mode in ("none", "full")}
    assert runs["full"][-1][0] == pytest.approx(runs["none"][-1][0], abs=1e-6)
    assert runs["none"][-1][0] == pytest.approx(ref_losses[0], abs=1e-5)
    for rank in range(2):
        none_grads, full_grads = runs["none"][rank][1], runs["full"][rank][1]
        assert none_grads.keys() == full_grads.keys()
        for name, grad in none_grads.items():
            torch.testing.assert_close(full_grads[name], grad, atol=1e-6, rtol=0,
                                       msg=f"{kind} rank {rank} grad {name}")
            torch.testing.assert_close(grad, ref_grads[TIED if name == "lm_head.weight" else name],
                                       atol=1e-5, rtol=0, msg=f"{kind} rank {rank} grad {name}")
        saved_none, saved_full = runs["none"][rank][2], runs["full"][rank][2]
        assert 0 < saved_full < saved_none / 2, (kind, rank, saved_full, saved_none)
