# course: instructor only -- wrong answers for the tasks of notebook 01
"""Plausible learner mistakes in tasks 01.1 and 01.2; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="01.1", mistake="forgets the 1/sqrt(d_k) scaling of the scores",
         old="q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])", new="q @ k.transpose(-2, -1)",
         hint="no 1/sqrt(d_k) scaling"),
    dict(task="01.1", mistake="divides the scores by d_k instead of sqrt(d_k)",
         old="/ math.sqrt(q.shape[-1])", new="/ q.shape[-1]", hint="divided by d_k"),
    dict(task="01.1", mistake="takes the softmax over the queries (dim=-2)",
         old="torch.softmax(scores, dim=-1)", new="torch.softmax(scores, dim=-2)",
         hint="wrong axis"),
    dict(task="01.1", mistake="leaves NaN in the rows of queries whose keys are all masked",
         old="weights = weights.masked_fill(blocked, 0.0)", new="weights = weights",
         hint="gives NaN"),
    dict(task="01.1", mistake="ignores causal=True (never combines the causal rule)",
         old="combine_masks(mask, causal,", new="combine_masks(mask, False,",
         hint="causal=True is ignored"),
    dict(task="01.1", mistake="inverts the bool mask (fills where it is True)",
         old="scores.masked_fill(~allowed, float(\"-inf\"))",
         new="scores.masked_fill(allowed, float(\"-inf\"))"),
    dict(task="01.1", mistake="handles bool masks only: a float mask is read as allowed/forbidden",
         old="if allowed is not None and allowed.dtype == torch.bool:",
         new="if allowed is not None and allowed.dtype != torch.bool:\n"
             "        allowed = allowed == 0\n"
             "    if allowed is not None:",
         hint="float mask was read as allowed/forbidden"),
    dict(task="01.1", mistake="ignores a float mask (adds nothing to the scores)",
         old="scores = scores + allowed", new="scores = scores"),
]

WRONG_ANSWERS += [
    dict(task="01.2", mistake="ignores the kv offset: query i sits at position i, not kv_len - seq_len + i",
         old="torch.arange(kv_len - seq_len, kv_len, device=device)",
         new="torch.arange(seq_len, device=device)", hint="LAST seq_len positions"),
    dict(task="01.2", mistake="uses < instead of <=: a token cannot see itself",
         old="return k_pos <= q_pos", new="return k_pos < q_pos", hint="diagonal must be True"),
    dict(task="01.2", mistake="flips the comparison: queries see the future, not the past",
         old="return k_pos <= q_pos", new="return k_pos >= q_pos", hint="see the future"),
    dict(task="01.2", mistake="returns a float 0/1 mask instead of bools",
         old="return k_pos <= q_pos", new="return (k_pos <= q_pos).float()", hint="return bools"),
    dict(task="01.2", mistake="ignores kv_len: always a square seq_len x seq_len mask",
         old="kv_len = seq_len if kv_len is None else kv_len", new="kv_len = seq_len",
         hint="one column per key"),
]
