# course: instructor only -- wrong answers for the tasks of notebook 04
"""Plausible learner mistakes in tasks 04.1 and 04.2; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="04.1", mistake="no warm-up: every rank alternates one forward, one backward from the start",
         old="warmup = num_warmup_microbatches(kind, p, rank, m, v)", new="warmup = 0"),
    dict(task="04.1", mistake="warm-up off by one: p - rank forwards instead of p - rank - 1",
         old="warmup = num_warmup_microbatches(kind, p, rank, m, v)",
         new="warmup = min(num_warmup_microbatches(kind, p, rank, m, v) + 1, len(fwd))"),
    dict(task="04.1", mistake="runs every forward first (GPipe), holding m activations",
         old="warmup = num_warmup_microbatches(kind, p, rank, m, v)", new="warmup = len(fwd)",
         hint="1F1B holds"),
    dict(task="04.1", mistake="the steady state runs the backward before the forward",
         old="actions += [fwd[warmup + k], bwd[k]]", new="actions += [bwd[k], fwd[warmup + k]]"),
    dict(task="04.1", mistake="forgets the cool-down: the last backwards never run",
         old="actions += bwd[len(fwd) - warmup:]  # cool-down", new="pass",
         hint="needs exactly one B"),
    dict(task="04.1", mistake="interleaved: uses the plain 1F1B warm-up p - rank - 1",
         old="warmup = num_warmup_microbatches(kind, p, rank, m, v)",
         new="warmup = num_warmup_microbatches(\"1f1b\", p, rank, m * v)"),
    dict(task="04.1", mistake="interleaved: backwards walk the chunks in forward order",
         old="bwd = [_interleaved_action(\"B\", k, p, v) for k in range(m * v)]",
         new="bwd = [Action(\"B\", a.microbatch, a.chunk) for a in fwd]"),

    dict(task="04.2", mistake="sends without a tag: messages from one peer are matched in send order",
         old="sends.append(comm.isend(tensor, ranks[dst], ctx, PHASE[op],\n"
             "                                    tag=_tag(op, microbatch, chunk, v)))",
         new="sends.append(comm.isend(tensor, ranks[dst], ctx, PHASE[op]))",
         slow=True),
    dict(task="04.2", mistake="forgets the phase: the CommCounter cannot tell activations from gradients",
         old="return comm.recv(shape, dtype, ranks[src], ctx, PHASE[op],",
         new="return comm.recv(shape, dtype, ranks[src], ctx,", hint="phase=PHASE[op]"),
    dict(task="04.2", mistake="the same phase for every message",
         old="sends.append(comm.isend(tensor, ranks[dst], ctx, PHASE[op],",
         new="sends.append(comm.isend(tensor, ranks[dst], ctx, \"forward\",", hint="PHASE[op]"),
    dict(task="04.2", mistake="uses the pipeline rank as a global rank (no ranks[...])",
         old="return comm.recv(shape, dtype, ranks[src], ctx, PHASE[op],",
         new="return comm.recv(shape, dtype, src, ctx, PHASE[op],",
         slow=True),
    dict(task="04.2", mistake="sends to its own rank instead of keeping the tensor in `local`",
         old="if dst == rank:\n            local[(op, microbatch, chunk)] = tensor.detach()\n        else:\n"
             "            sends.append(",
         new="if True:\n            sends.append("),
    dict(task="04.2", mistake="drops the send's request: never waits for it at the end of the step",
         old="sends.append(comm.isend(tensor, ranks[dst], ctx, PHASE[op],\n"
             "                                    tag=_tag(op, microbatch, chunk, v)))",
         new="comm.isend(tensor, ranks[dst], ctx, PHASE[op],\n"
             "                       tag=_tag(op, microbatch, chunk, v))",
         slow=True),
]
