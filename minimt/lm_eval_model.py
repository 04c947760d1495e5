"""minimt's GPT as an lm-evaluation-harness model, registered under the name `minimt`.

    lm_eval.simple_evaluate(model="minimt", model_args="checkpoint=runs/3d", tasks=[...])

lm-eval asks three questions and minimt's evaluator answers them: `loglikelihood` (context,
continuation) -> (sum of log-probabilities, greedy?) with `score_requests`;
`loglikelihood_rolling` (a whole text) -> its log-likelihood over lm-eval's own rolling windows;
`generate_until` -> greedy text up to a stop string. Importing this module imports lm-eval (~10 s).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # tasks read local files; nothing downloads

import torch  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from .data import char_dataset  # noqa: E402
from .evaluate import score_requests  # noqa: E402

CORPUS = "tinyshakespeare"  # the tokenizer of `python -m minimt train`'s checkpoints
PREFIX = "\n"  # scores a text's first character: the separator the model saw between speeches


@register_model("minimt")
class MinimtLM(LM):
    """A minimt GPT (from `checkpoint`, or a `model` built already, e.g. tensor-parallel) and its
    tokenizer (default: the course's character tokenizer)."""

    def __init__(self, checkpoint=None, model=None, tokenizer=None, batch_size=16,
                 padding="right", **_ignored):
        super().__init__()
        if model is None:
            if checkpoint is None:
                raise ValueError("minimt needs model_args=checkpoint=DIR (a directory written by "
                                 "`python -m minimt train --out DIR`)")
            from .parallel.checkpoint import load_serial_model
            model = load_serial_model(checkpoint).float()
        self.model = model.eval()
        self.tokenizer = tokenizer or char_dataset(CORPUS, byte_fallback=False)[0]
        self.batch_size, self.padding = int(batch_size), padding
        self.prefix_id = self.tokenizer.encode(PREFIX)[0]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        contexts, continuations = [], []
        for request in requests:
            context, continuation = request.args
            contexts.append(self._encode(context) or [self.prefix_id])
            continuations.append(self._encode(continuation))
        scores = score_requests(self.model, contexts, continuations, self.batch_size, self.padding)
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            ids = self._encode(request.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                ids, self.prefix_id, self.model.config.block_size, context_len=1)]
            scores = score_requests(self.model, [c for c, _ in windows], [p for _, p in windows],
                                    self.batch_size, self.padding)
            out.append(sum(s.logprob for s in scores))
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            ids = self._encode(context) or [self.prefix_id]
            text = ""
            for _ in range(int(kwargs.get("max_gen_toks", 64))):
                window = torch.tensor([ids[-self.model.config.block_size:]])      # (1, <= block)
                logits = self.model.gather_logits(self.model(window)[0])[0, -1]     # (V,)
                ids.append(int(logits.argmax()))
                text += self.tokenizer.decode(ids[-1:])
                if any(stop in text for stop in until):
                    text = text[:min(text.index(s) for s in until if s in text)]
                    break
            out.append(text)
        return out
