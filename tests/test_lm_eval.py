"""lm-evaluation-harness's own evaluator on the course's tasks, with minimt registered as an
lm-eval model, gives minimt's evaluator's numbers; `python -m minimt eval --tp 2` gives them too.
Importing lm-eval takes ~10 s: everything that needs it is in this file, in few lm-eval runs."""
import json
import math
import os
import re

import pytest
import torch

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from minimt import GPT, GPTConfig  # noqa: E402
from minimt.data import char_dataset  # noqa: E402
from minimt.eval_cli import eval_main, flat_results, run_lm_eval  # noqa: E402
from minimt.eval_tasks import (TASK_NAMES, YAML, course_tasks, read_docs,  # noqa: E402
                               write_task)
from minimt.evaluate import (lambada_accuracy, multiple_choice_accuracy,  # noqa: E402
                             sliding_window_nll)
from minimt.parallel import ParallelContext  # noqa: E402
from minimt.parallel.checkpoint import save_checkpoint  # noqa: E402

LIMIT, SHOTS = 12, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small random GPT over the course's 65 characters, saved as a checkpoint; the course's
    tasks, plus next_line with lm-eval's first_n sampler (the first k other docs as shots)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    root = tmp_path_factory.mktemp("lm_eval")
    save_checkpoint(root / "ckpt", model, None, ParallelContext())
    tasks = course_tasks(root / "tasks")
    write_task(root / "extra", "minimt_next_line_first_n", read_docs(tasks, "minimt_next_line"),
               YAML["minimt_next_line"] + "fewshot_config:\n  sampler: first_n\n")
    return model, root, tasks


def minimt_scores(model, tasks):
    """The same metrics from minimt's own evaluator, on the first LIMIT docs."""
    tokenizer = char_dataset("tinyshakespeare", byte_fallback=False)[0]
    lambada = read_docs(tasks, "minimt_lambada_shakespeare")[:LIMIT]
    choice = read_docs(tasks, "minimt_next_line")[:LIMIT]
    everything = read_docs(tasks, "minimt_next_line")
    texts = [d["text"] for d in read_docs(tasks, "minimt_shakespeare_ppl")[:LIMIT]]
    cloze = lambada_accuracy(model, tokenizer, [d["context"] + d["target"] for d in lambada])
    nll = words = nbytes = 0
    for text in texts:   # lm-eval's rolling windows: each token after a "\n" prefix, full context
        nll += sliding_window_nll(model, tokenizer.encode(text), stride=64,
                                  prefix_id=tokenizer.encode("\n")[0], full_last_window=True)[0]
        words += len(re.split(r"\s+", text))   # lm-eval's word count
        nbytes += len(text.encode())
    return {
        "minimt_lambada_shakespeare": {"acc": cloze["strict"], "perplexity": cloze["perplexity"]},
        "minimt_next_line": multiple_choice_accuracy(model, tokenizer, choice),
        "minimt_next_line_first_n": multiple_choice_accuracy(
            model, tokenizer, choice,
            shots_for=lambda i: [d for j, d in enumerate(everything) if j != i][:SHOTS]),
        "minimt_shakespeare_ppl": {"word_perplexity": math.exp(nll / words),
                                   "byte_perplexity": math.exp(nll / nbytes),
                                   "bits_per_byte": nll / nbytes / math.log(2)},
    }


def test_lm_eval_gives_minimts_numbers_on_every_task_and_the_cli_at_tp2(setup, capsys):
    model, root, tasks = setup
    expected = minimt_scores(model, tasks)
    got = flat_results(run_lm_eval(model, list(TASK_NAMES), limit=LIMIT, bootstrap_iters=0))
    got.update(flat_results(run_lm_eval(model, ["minimt_next_line_first_n"], root / "extra",
                                        num_fewshot=SHOTS, limit=LIMIT, bootstrap_iters=0)))
    for task, metrics in expected.items():
        for metric, value in metrics.items():
            assert got[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
    # the command line, at tp 2: lm-eval's table, then one JSON line with the same numbers
    assert eval_main(["--checkpoint", str(root / "ckpt"), "--tasks",
                      "minimt_next_line,minimt_shakespeare_ppl", "--limit", str(LIMIT),
                      "--tp", "2", "--bootstrap-iters", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("acc_norm" in line and "|" in line for line in lines)
    cli = json.loads(lines[-1])["results"]
    for task in ("minimt_next_line", "minimt_shakespeare_ppl"):
        for metric, value in expected[task].items():
            assert cli[task][metric] == pytest.approx(value, rel=1e-4), (task, metric)
    with pytest.raises(SystemExit):
        eval_main(["--checkpoint", str(root / "ckpt"), "--tasks", "minimt_next_line",
                   "--tp", "3"])
