"""Tasks of 11_beyond_mt_nlg: the online-softmax merge (oracle: SDPA), one ring-attention step
(oracle: serial attention on the whole sequence, bytes counted) and the ZB-H1 order (oracle:
torch.distributed.pipelining's ZB1P order, and the simulator's bubble)."""
from __future__ import annotations

import math

from .core import ExerciseError, task


def _attention(q, k, v, keys, causal):
    """SDPA of q (B, H, T, D) to the keys in slice `keys` alone, and the log-sum-exp of its scores;
    a row that sees none of them gets 0 and -inf."""
    import torch
    import torch.nn.functional as F
    t = q.shape[-2]
    mask = (torch.ones(t, t, dtype=torch.bool).tril() if causal
            else torch.ones(t, t, dtype=torch.bool))[:, keys]                 # (T, Tk)
    scores = (q @ k[..., keys, :].transpose(-2, -1) / math.sqrt(q.shape[-1]))
    lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)   # (B, H, T)
    seen = mask.any(-1)                                                        # (T,)
    out = F.scaled_dot_product_attention(q, k[..., keys, :], v[..., keys, :],
                                         attn_mask=mask | ~seen[:, None])
    return out * seen[:, None], lse


def _check_merge_task() -> None:
    """merge_partials against SDPA: the attention to two key blocks merged equals the attention
    to both; causal rows that see nothing in a block (lse -inf), or in both, and large scores."""
    import torch
    from .core import learner
    merge = learner("minimt.parallel.context_parallel:merge_partials")
    g = torch.Generator().manual_seed(11)
    cases = [("halves", (0, 8, 16), False, 1.0), ("unequal blocks", (0, 3, 16), False, 1.0),
             ("causal: early rows see nothing in the second block", (0, 5, 16), True, 1.0),
             ("causal, keys 8..15 only: rows 0-7 see nothing in either", (8, 12, 16), True, 1.0),
             ("large scores (x 500)", (0, 4, 16), True, 500.0)]
    for i, (what, (a, b, c), causal, scale) in enumerate(cases):
        q, k, v = (torch.randn(2, 2, 16, 4, generator=g, dtype=torch.float64) for _ in range(3))
        q = q * scale
        (out_a, lse_a), (out_b, lse_b) = (_attention(q, k, v, slice(a, b), causal),
                                          _attention(q, k, v, slice(b, c), causal))
        expected, expected_lse = _attention(q, k, v, slice(a, c), causal)
        out, lse = merge(out_a, lse_a, out_b, lse_b)
        name = f"task 11.2, case {i + 1} of {len(cases)} ({what})"
        if not torch.isfinite(out).all():
            raise ExerciseError(f"{name}: the merged output has nan/inf. Hint: weigh each part by "
                                f"exp(lse_i - lse), never exp(lse_i) alone (overflow), and give "
                                f"rows with lse -inf on both sides weight 0 (-inf - -inf is nan)")
        if not torch.allclose(lse, expected_lse, atol=1e-9):
            raise ExerciseError(f"{name}: lse differs from logsumexp over all keys by up to "
                                f"{(lse - expected_lse).abs().max().item():.3g}. Hint: the merged "
                                f"lse is log(exp(lse_a) + exp(lse_b)) (torch.logaddexp), not a "
                                f"max or a mean")
        if not torch.allclose(out, expected, atol=1e-9):
            diff = (out - expected).abs().max().item()
            raise ExerciseError(f"{name}: output differs from F.scaled_dot_product_attention on "
                                f"all keys by up to {diff:.3g} (expected e.g. "
                                f"{expected.flatten()[0].item():.6f}, got {out.flatten()[0].item():.6f}). "
                                f"Hint: each part is normalised over its own keys only: weigh "
                                f"out_a by exp(lse_a - lse) and out_b by exp(lse_b - lse)")
    print(f"task 11.2: all {len(cases)} merges equal SDPA over all keys")


CP, SEQ, SHAPE = 3, 12, (1, 2, 12, 4)  # (B, H, s, D)


def _ring_rank(ctx):
    """This rank's ring-attention forward and its largest difference from serial attention,
    the bytes it sent, for each layout (causal)."""
    import torch
    import torch.nn.functional as F
    from ..parallel import CommCounter
    from ..parallel.context_parallel import ring_attention, sequence_positions
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(*SHAPE, generator=g, dtype=torch.float64) for _ in range(3))
    serial = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = {}
    for layout in ("contiguous", "zigzag"):
        pos = sequence_positions(SEQ, CP, ctx.rank, layout)
        with CommCounter() as counter, torch.no_grad():
            y = ring_attention(q[..., pos, :], k[..., pos, :], v[..., pos, :], ctx, True, layout)
        out[layout] = ((y - serial[..., pos, :]).abs().max().item(),
                       counter.count("send", "cp", "forward"), counter.bytes("send", "cp", "forward"))
    return out


def _check_ring_step_task() -> None:
    """ring_step on 3 gloo ranks: the forward of ring attention equals serial causal attention on
    the whole sequence, rank by rank, contiguous and zig-zag; each rank sends its K/V block cp-1
    times, 2 B H (s/cp) D elements each."""
    from ..parallel import LaunchTimeout, launch
    from ..parallel.context_parallel import ring_step_bytes
    try:
        results = launch(_ring_rank, dp=CP, timeout_s=30)
    except LaunchTimeout:
        raise ExerciseError("task 11.3: the ranks waited forever: send the block you hold to the "
                            "right neighbour and receive the next one from the left, with the "
                            "same tag (the step)") from None
    step_bytes = ring_step_bytes(SHAPE[0], SHAPE[1], SEQ, SHAPE[3], CP, element_size=8)
    for rank, result in enumerate(results):
        for layout, (diff, sends, sent) in result.items():
            name = f"task 11.3, rank {rank} of {CP} ({layout} split, causal, s={SEQ})"
            if diff > 1e-9:
                raise ExerciseError(f"{name}: output differs from serial attention by up to "
                                    f"{diff:.3g}. Hint: merge every block into (out, lse) with "
                                    f"merge_partials, each attended at its own positions kv_pos")
            if (sends, sent) != (CP - 1, (CP - 1) * step_bytes):
                raise ExerciseError(f"{name}: sent {sends} messages, {sent} bytes; expected "
                                    f"{CP - 1} x {step_bytes} bytes (K and V, once per step but "
                                    f"the last). Hint: on the last step nobody needs the block")
    print(f"task 11.3: ring attention on {CP} ranks equals serial attention; {CP - 1} sends of "
          f"{step_bytes} bytes per rank")


def torch_zero_bubble_order(kind: str, p: int, rank: int, m: int):
    """torch.distributed.pipelining's order for one rank: ScheduleInterleavedZeroBubble with one
    stage per rank (ZB1P = ZB-H1) or ScheduleZBVZeroBubble, from the class's own rank-operations
    method run on a stand-in holding the sizes it reads (no process group needed)."""
    from types import SimpleNamespace
    from torch.distributed.pipelining.schedules import (ScheduleInterleavedZeroBubble,
                                                        ScheduleZBVZeroBubble)
    from torch.distributed.pipelining.schedules import _ComputationType as T
    from ..parallel.pipeline import Action
    rounds = max(1, m // p)
    sizes = SimpleNamespace(n_local_stages=1 if kind == "zb-h1" else 2, pp_group_size=p,
                            microbatches_per_round=m // rounds, _n_microbatches=m,
                            num_stages=2 * p)
    cls = ScheduleInterleavedZeroBubble if kind == "zb-h1" else ScheduleZBVZeroBubble
    ops = {T.FORWARD: "F", T.BACKWARD_INPUT: "B", T.BACKWARD_WEIGHT: "W"}
    return [Action(ops[a.computation_type], a.microbatch_index, int(a.stage_index >= p))
            for a in cls._calculate_single_rank_operations(sizes, rank) if a is not None]


def _zb_hint(got, expected, p, rank, m):
    """The likely mistake behind an order that differs from torch's."""
    def warmup(actions):
        return next((i for i, a in enumerate(actions) if a.op != "F"), len(actions))
    if any(a.microbatch >= m for a in got):
        return f"a micro-batch index reaches {m} or more: cap the warm-up at m"
    if warmup(got) != warmup(expected):
        return f"rank {rank} warms up with p - rank - 1 = {p - rank - 1} forwards (at most m)"
    early = sum(1 for a in got[:len(got) - m + rank] if a.op == "W")
    if [a.microbatch for a in got if a.op == "W"] != list(range(m)):
        return "run the oldest pending W first: W's go in micro-batch order 0, 1, 2, ..."
    if early != sum(1 for a in expected[:len(expected) - m + rank] if a.op == "W"):
        return (f"rank r holds back its first r W's (here {rank}) for the cool-down, then runs "
                f"one W after each B")
    return "after each B comes the oldest pending W once the rank has run `rank` B's"


def _check_zb_h1_task() -> None:
    """zb_h1_rank_actions against torch's ZB1P order (every rank, several p, m); the simulator
    runs the whole schedule with bubble (p-1)(F+B-W) and 1F1B's activations in flight."""
    from .core import learner
    from ..parallel.zero_bubble import bubble_formula, bubble_time, peak_in_flight_zb
    rank_actions = learner("minimt.parallel.zero_bubble:zb_h1_rank_actions")
    cases = [(2, 4), (4, 8), (4, 2), (3, 6), (4, 12)]
    for i, (p, m) in enumerate(cases):
        schedule = []
        for rank in range(p):
            got, expected = list(rank_actions(p, rank, m)), torch_zero_bubble_order("zb-h1", p, rank, m)
            if got != expected:
                first = next((j for j, (a, b) in enumerate(zip(got, expected)) if a != b),
                             min(len(got), len(expected)))
                raise ExerciseError(
                    f"task 11.1, case {i + 1} of {len(cases)} (p={p}, m={m}), rank {rank}: action "
                    f"{first} is {got[first] if first < len(got) else 'missing'!r}, torch's ZB1P "
                    f"order has {expected[first] if first < len(expected) else 'nothing'!r} "
                    f"(expected {expected}, got {got}). Hint: {_zb_hint(got, expected, p, rank, m)}")
            schedule.append(got)
        for costs in ((1.0, 1.0, 1.0), (2.0, 1.0, 0.5)):
            simulated, formula = bubble_time(schedule, *costs), bubble_formula("zb-h1", p, *costs)
            if m >= p and abs(simulated - formula) > 1e-9:
                raise ExerciseError(f"task 11.1, case {i + 1}: simulated bubble {simulated} with "
                                    f"F, B, W = {costs}, expected (p-1)(F+B-W) = {formula}")
        if peak_in_flight_zb(schedule) != [min(p, m)] * p:
            raise ExerciseError(f"task 11.1, case {i + 1}: activations in flight "
                                f"{peak_in_flight_zb(schedule)}, 1F1B's are {[min(p, m)] * p}")
    print(f"task 11.1: all {len(cases)} ZB-H1 schedules equal torch's order; the simulator finds "
          f"the bubble (p-1)(F+B-W)")


TASKS = [
    task("11.2", 2, "write merge_partials: the log-sum-exp merge of two partial attentions",
         "minimt.parallel.context_parallel:merge_partials", "notebook 11, section 5",
         _check_merge_task),
    task("11.3", 2, "write ring_step: pass the K/V block on, attend to the one you hold, merge",
         "minimt.parallel.context_parallel:ring_step", "notebook 11, section 6",
         _check_ring_step_task),
    task("11.1", 3, "write zb_h1_rank_actions: one rank's ZB-H1 order of F, B and W",
         "minimt.parallel.zero_bubble:zb_h1_rank_actions", "notebook 11, section 2",
         _check_zb_h1_task),
]
