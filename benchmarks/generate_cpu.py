"""Benchmark: greedy decoding tokens/s with and without minimt's KV cache, and against transformers.

One random GPT-2-shaped model (GPT-2's vocabulary 50257 and context 1024, biases and tanh GELU,
but --n-layer/--n-embd smaller than GPT-2 small so the uncached runs finish on a laptop CPU) decodes
--prompt-len + N tokens greedily for N in --new-tokens, three ways in the same run:
minimt with the cache, minimt without it (every step recomputes the whole sequence), and
transformers' GPT2LMHeadModel.generate (its cache on) holding the same weights via
minimt.hf_gpt2. All three must produce the same tokens. Times are the best of --repeats
runs (cached, minimt and transformers alternating) and --no-cache-repeats runs (uncached).
Without the cache each step runs GPT.forward on the whole sequence, which also computes the
logits of every position (transformers' generate computes only the last one's).

    python benchmarks/generate_cpu.py --threads 1 --new-tokens 64 256 512
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from minimt import GPT, GPTConfig


def best_time(fn, repeats):
    """(best wall-clock seconds of `repeats` calls, the last result)."""
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="cached runs (best of)")
    parser.add_argument("--no-cache-repeats", type=int, default=1, help="uncached runs (best of)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-124m", n_layer=args.n_layer, n_embd=args.n_embd,
                                   n_head=args.n_head)
    model = GPT(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_len))
    hf = None
    if not args.no_hf:
        from transformers import GPT2Config, GPT2LMHeadModel

        from minimt.hf_gpt2 import hf_gpt2_config_dict
        hf = GPT2LMHeadModel(GPT2Config(**hf_gpt2_config_dict(config), bos_token_id=None,
                                        eos_token_id=None)).eval()
        hf.load_state_dict(model.to_hf_gpt2_state_dict())
    print(f"model: {config}\n{model.num_params() / 1e6:.1f}M parameters, batch 1, prompt "
          f"{args.prompt_len} tokens, greedy, fp32, {torch.get_num_threads()} thread(s), "
          f"best of {args.repeats} cached / {args.no_cache_repeats} uncached runs")
    load_before = os.getloadavg()[0]  # other programs' load skews every number; it is recorded
    model.generate(prompt, 8)  # warm-up (thread pool, allocator)
    rows = []
    for n in args.new_tokens:
        # the cached runs of minimt and transformers alternate, so both see the same load
        t_cache = t_hf = math.inf
        for _ in range(args.repeats):
            t, out_cache = best_time(lambda: model.generate(prompt, n), 1)
            t_cache = min(t_cache, t)
            if hf is not None:
                with torch.no_grad():
                    t, out_hf = best_time(lambda: hf.generate(
                        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                        min_new_tokens=n, do_sample=False, pad_token_id=0), 1)
                t_hf = min(t_hf, t)
                assert torch.equal(out_hf, out_cache), "transformers and minimt tokens differ"
        t_full, out_full = best_time(lambda: model.generate(prompt, n, use_cache=False),
                                     args.no_cache_repeats)
        assert torch.equal(out_cache, out_full), "cached and uncached greedy tokens differ"
        row = dict(new_tokens=n, minimt_cache_tok_s=n / t_cache, minimt_no_cache_tok_s=n / t_full,
                   cache_speedup=t_full / t_cache)
        if hf is not None:
            row.update(hf_cache_tok_s=n / t_hf, minimt_over_hf=t_hf / t_cache)
        rows.append(row)
        print(f"  done {n} new tokens", flush=True)

    head = f"{'new tokens':>10} | {'minimt cache':>12} | {'no cache':>9} | {'cache speed-up':>14}"
    if hf is not None:
        head += f" | {'HF cache':>9} | {'minimt/HF':>9}"
    print("\ntokens/s (higher is better); ratios from the same run\n" + head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r['new_tokens']:>10} | {r['minimt_cache_tok_s']:>12.1f} | "
                f"{r['minimt_no_cache_tok_s']:>9.1f} | {r['cache_speedup']:>13.2f}x")
        if hf is not None:
            line += f" | {r['hf_cache_tok_s']:>9.1f} | {r['minimt_over_hf']:>8.2f}x"
        print(line)
    load_after = os.getloadavg()[0]
    print(f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after "
          f"({os.cpu_count()} CPUs)")
    print(json.dumps(dict(load_avg_1min=[load_before, load_after], config=dict(n_layer=config.n_layer, n_embd=config.n_embd,
                                      n_head=config.n_head, vocab_size=config.vocab_size),
                          prompt_len=args.prompt_len, threads=torch.get_num_threads(),
                          repeats=args.repeats, no_cache_repeats=args.no_cache_repeats,
                          rows=rows)))


if __name__ == "__main__":
    main()
