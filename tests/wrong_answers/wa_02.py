# course: instructor only -- wrong answers for the tasks of notebook 02
"""Plausible learner mistakes in tasks 02.1-02.3; tests/test_wrong_answers.py applies them."""

WRONG_ANSWERS = [
    dict(task="02.1", mistake="post-LayerNorm (the original Transformer's order) instead of pre-LN",
         old="x = x + self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache)\n"
             "        return x + self.mlp(self.ln_2(x))",
         new="x = self.ln_1(x + self.attn(x, mask=mask, kv_cache=kv_cache))\n"
             "        return self.ln_2(x + self.mlp(x))", hint="post-LayerNorm"),
    dict(task="02.1", mistake="forgets both residual connections",
         old="x = x + self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache)\n"
             "        return x + self.mlp(self.ln_2(x))",
         new="x = self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache)\n"
             "        return self.mlp(self.ln_2(x))", hint="residual connections are missing"),
    dict(task="02.1", mistake="runs attention and MLP as parallel branches on the same input",
         old="x = x + self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache)\n"
             "        return x + self.mlp(self.ln_2(x))",
         new="return x + self.attn(self.ln_1(x), mask=mask, kv_cache=kv_cache) + "
             "self.mlp(self.ln_2(x))", hint="sequential"),
    dict(task="02.1", mistake="forgets the MLP's residual connection",
         old="return x + self.mlp(self.ln_2(x))", new="return self.mlp(self.ln_2(x))"),
    dict(task="02.1", mistake="normalises the MLP's input with ln_1 instead of ln_2",
         old="self.mlp(self.ln_2(x))", new="self.mlp(self.ln_1(x))"),
    dict(task="02.1", mistake="does not pass the KV cache on to the attention",
         old="mask=mask, kv_cache=kv_cache)", new="mask=mask)", hint="kv_cache argument"),
    dict(task="02.1", mistake="does not pass the mask on to the attention",
         old="mask=mask, kv_cache=kv_cache)", new="kv_cache=kv_cache)", hint="mask argument"),

    dict(task="02.2", mistake="forgets the position embedding (block_size x C)",
         old="return V * C + T * C + L * per_block", new="return V * C + L * per_block",
         hint="position embedding"),
    dict(task="02.2", mistake="counts the tied output layer a second time",
         old="return V * C + T * C", new="return 2 * V * C + T * C", hint="once, not twice"),
    dict(task="02.2", mistake="forgets the biases when bias=True",
         old="b = 1 if config.bias else 0", new="b = 0", hint="bias=True"),
    dict(task="02.2", mistake="assumes the MLP is always 4C wide (ignores mlp_ratio)",
         old="2 * r * C * C", new="8 * C * C"),
    dict(task="02.2", mistake="forgets the final LayerNorm",
         old="+ L * per_block + C * (1 + b)", new="+ L * per_block"),

    dict(task="02.3", mistake="warm-up from 0: lr * it / warmup_iters",
         old="return learning_rate * (it + 1) / (warmup_iters + 1)",
         new="return learning_rate * it / warmup_iters", hint="(it + 1) / (warmup_iters + 1)"),
    dict(task="02.3", mistake="decays to 0 instead of min_lr",
         old="return min_lr + coeff * (learning_rate - min_lr)", new="return coeff * learning_rate",
         hint="down to min_lr"),
    dict(task="02.3", mistake="the decay ratio forgets to subtract the warm-up",
         old="decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)",
         new="decay_ratio = it / max(1, lr_decay_iters)"),
    dict(task="02.3", mistake="after lr_decay_iters keeps decaying (no floor at min_lr)",
         old="if it > lr_decay_iters:\n        return min_lr\n", new=""),
]
