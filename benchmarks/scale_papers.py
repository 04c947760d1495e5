"""The scale calculator beside the papers: MT-NLG's iteration times (Smith et al. 2022, arXiv
2201.11990) and Narayanan et al. 2021's end-to-end training times (arXiv 2104.04473).

Not a timing benchmark: it prints the calculator's figures with their ratio to each published one,
then one JSON line. MT-NLG's TFLOP/s were derived from its iteration times with the FLOP formula the
calculator uses, so a ratio near 1 there shows the calculator is consistent with the paper (it
checks the formula's implementation), not that it predicts MT-NLG's speed. Run: .venv/bin/python benchmarks/scale_papers.py
"""
import json

from minimt import GPTConfig
from minimt.scale import end_to_end_training_time_s, estimate

DAY = 86400
mt_nlg = GPTConfig.from_preset("mt-nlg-530b")
rows = []
# (nodes of 8 A100s, TFLOP/s per GPU, seconds per iteration of 1920 sequences) from arXiv 2201.11990
for nodes, tflops, paper_s in ((280, 126, 60.1), (350, 121, 50.2), (420, 113, 44.4)):
    e = estimate(mt_nlg, 8, 35, nodes * 8 // 280, 1, 1920, achieved_tflops=tflops)
    rows.append((f"MT-NLG 530B, {nodes} nodes @ {tflops} TFLOP/s", "s / iteration",
                 paper_s, e.iteration_time_s))
# Narayanan et al. 2021, section 5.1: GPT-3 and the 1T model, (t, p) = (8, 8), one sequence per micro-batch
for name, config, gpus, tflops, tokens, paper_days in (
        ("GPT-3 175B", GPTConfig(vocab_size=51200, block_size=2048, n_layer=96, n_head=96,
                                 n_embd=12288, bias=True), 1024, 140, 300e9, 34),
        ("1T", GPTConfig(vocab_size=51200, block_size=2048, n_layer=128, n_head=160,
                         n_embd=25600, bias=True), 3072, 163, 450e9, 84)):
    e = estimate(config, 8, 8, gpus // 64, 1, gpus // 64 * 64, achieved_tflops=tflops)
    rows.append((f"{name}, {gpus} GPUs, 8TP/(nX)", "days", paper_days,
                 end_to_end_training_time_s(tokens, e.params, gpus, tflops) / DAY))
    rows.append((f"{name}, {gpus} GPUs, eq. 3 per iteration", "days", paper_days,
                 e.training_time_s(tokens) / DAY))

print(f"{'run':<46}{'unit':>15}{'paper':>9}{'minimt':>9}{'ratio':>8}")
for run, unit, paper, ours in rows:
    print(f"{run:<46}{unit:>15}{paper:>9.1f}{ours:>9.2f}{ours / paper:>8.3f}")
print()
print(estimate(mt_nlg, 8, 35, 8, 1, 1920, achieved_tflops=126).summary())
print(json.dumps({"rows": [{"run": r, "unit": u, "paper": p, "minimt": round(o, 3)}
                           for r, u, p, o in rows]}))
