"""The course's evaluation sets, made from the held-out tail of tinyshakespeare (nothing is
downloaded), written as JSON lines plus lm-evaluation-harness task YAML that reads them.

- minimt_lambada_shakespeare: LAMBADA's cloze (Paperno et al. 2016): predict a line's last word
  from the lines before it (output_type loglikelihood: acc = greedy, perplexity).
- minimt_next_line: multiple choice: which of 4 lines follows a speech (acc, acc_norm).
- minimt_shakespeare_ppl: perplexity of held-out paragraphs (loglikelihood_rolling:
  word_perplexity, byte_perplexity, bits_per_byte).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from .data import cache_dir, load_corpus

TASK_NAMES = ("minimt_lambada_shakespeare", "minimt_next_line", "minimt_shakespeare_ppl")
HELD_OUT = 0.9  # the last 10% of tinyshakespeare: the course's validation split


def held_out_speeches(corpus: str = "tinyshakespeare") -> list[list[str]]:
    """The held-out text's speeches (blank-line separated), each a list of lines, the speaker's
    name line dropped."""
    text = load_corpus(corpus)
    tail = text[int(HELD_OUT * len(text)):]
    speeches = [s.split("\n") for s in tail.split("\n\n")[1:-1]]  # the ends are cut mid-speech
    return [s[1:] for s in speeches if len(s) >= 3 and s[0].endswith(":")]


def lambada_docs(n: int = 64, seed: int = 0) -> list[dict]:
    """{"context", "target"}: a speech's lines up to the last one that ends in a word of 3+
    letters (punctuation after it is dropped), with up to 3 lines before it, minus that word; the
    target is " " + the word."""
    docs = []
    for lines in held_out_speeches():
        for j in range(len(lines) - 1, 0, -1):
            context, _, word = lines[j].rstrip().rstrip(".,;:!?'").rpartition(" ")
            if len(word) >= 3 and word.isalpha() and context:
                docs.append({"context": "\n".join(lines[max(0, j - 3):j] + [context]),
                             "target": " " + word})
                break
    return random.Random(seed).sample(docs, min(n, len(docs)))


def next_line_docs(n: int = 64, num_choices: int = 4, seed: int = 0) -> list[dict]:
    """{"context", "choices", "answer"}: the lines of a speech up to one, and 4 candidates for the
    next line: the true one and 3 lines drawn from other speeches."""
    rng = random.Random(seed)
    speeches = held_out_speeches()
    all_lines = [(i, line) for i, s in enumerate(speeches) for line in s]
    docs = []
    for i in rng.sample(range(len(speeches)), min(n, len(speeches))):
        lines = speeches[i]
        cut = rng.randrange(1, len(lines))
        others = [line for j, line in rng.sample(all_lines, 3 * num_choices) if j != i]
        choices = [lines[cut]] + others[:num_choices - 1]
        rng.shuffle(choices)
        docs.append({"context": "\n".join(lines[max(0, cut - 3):cut]) + "\n",
                     "choices": choices, "answer": choices.index(lines[cut])})
    return docs


def perplexity_docs(n: int = 16, seed: int = 0) -> list[dict]:
    """{"text"}: whole held-out speeches of 4+ lines."""
    long = ["\n".join(s) for s in held_out_speeches() if len(s) >= 4]
    return [{"text": t} for t in random.Random(seed).sample(long, min(n, len(long)))]


YAML = {
    "minimt_lambada_shakespeare": """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "minimt_next_line": """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""",
    "minimt_shakespeare_ppl": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


def write_task(directory, name: str, docs: list[dict], body: str) -> Path:
    """docs as `name`.jsonl and the lm-eval task `name`.yaml that reads it (test split; the
    few-shot examples come from the same split, never the question itself)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    _replace(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    _replace(directory / f"{name}.yaml",
             f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
             f"    test: {json.dumps(str(data.resolve()))}\ntest_split: test\n"
             f"fewshot_split: test\n" + body)
    return directory / f"{name}.yaml"


def _replace(path: Path, text: str) -> None:
    """Write atomically: a reader (another rank, another process) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def course_tasks(directory=None) -> Path:
    """Write the course's three tasks (their data and YAML) into `directory` (default
    .cache/eval_tasks) and return it: lm-eval's --include-path."""
    directory = Path(directory or cache_dir() / "eval_tasks")
    sets = {"minimt_lambada_shakespeare": lambada_docs(), "minimt_next_line": next_line_docs(),
            "minimt_shakespeare_ppl": perplexity_docs()}
    for name, docs in sets.items():
        write_task(directory, name, docs, YAML[name])
    return directory


def read_docs(directory, name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(directory) / f"{name}.jsonl").open()]
