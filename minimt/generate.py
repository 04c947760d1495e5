"""Text generation with Hugging Face `generate`'s keyword names: greedy, sampling, beam search.

Decoding feeds one token per step through the model's per-layer KV cache (`Decoder`); the logits
filters live in minimt.sampling. Positions beyond `block_size` are refused (no sliding window), so
every token is scored with its exact position and full context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import KVCache
from .checks import check_token_id, check_token_ids, warn_once
from .sampling import (apply_repetition_penalty, apply_temperature, process_logits,
                       top_k_filter, top_p_filter)

__all__ = ["generate", "stream", "beam_search", "decode_steps", "Decoder", "GenerateOutput",
           "left_pad", "padding_mask_and_positions",
           # the filters, re-exported from minimt.sampling
           "apply_repetition_penalty", "apply_temperature", "process_logits", "top_k_filter",
           "top_p_filter"]

# ---------------------------------------------------------------- batching and the decoder


def left_pad(prompts, pad_token_id):
    """Ragged prompts (lists of ids) -> input_ids (B, T_max) padded on the left, attention_mask
    (B, T_max) with 0 on padding: new tokens are then appended at the same column for every row."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt and every prompt at least one token")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


def padding_mask_and_positions(attention_mask, n_new):
    """For the last `n_new` columns of a left-padded batch: the bool attention mask (B, 1, n_new,
    T_kv), True = may attend (real keys, plus each query itself so a padding row is never empty),
    and position ids (B, n_new) counted from each row's first real token, as transformers does."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -n_new:]     # (B, n_new)
    kv_len = attention_mask.shape[1]
    key_is_real = attention_mask.bool()[:, None, None, :]                     # (B, 1, 1, T_kv)
    query_pos = torch.arange(kv_len - n_new, kv_len, device=attention_mask.device)
    is_self = query_pos[:, None] == torch.arange(kv_len, device=attention_mask.device)  # (n_new, T_kv)
    return key_is_real | is_self, positions


class Decoder:
    """Feeds a growing batch of sequences to the model and returns each row's next-token logits.

    With `use_cache` the prompt runs once and every later step runs one token against the per-layer
    KV caches; without it every step recomputes the whole sequence (the reference the cache must
    match). `ids` always holds the full sequences, `reorder` follows beam search's choices.
    A tensor-parallel model (apply_tensor_parallel) keeps its heads' slice of every cache and
    gathers the vocabulary slices of the logits, so every rank picks the same tokens.
    """

    def __init__(self, model, input_ids, attention_mask=None, use_cache=True):
        self.model = model
        self.ids = input_ids                                                  # (B, T)
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        self.attention_mask = attention_mask.long() if padded else None       # (B, T) or None
        self.caches = [KVCache() for _ in model.transformer.h] if use_cache else None

    def _forward(self, idx):
        mask = positions = None
        if self.attention_mask is not None:
            mask, positions = padding_mask_and_positions(self.attention_mask, idx.shape[1])
        logits, _ = self.model(idx, kv_caches=self.caches, mask=mask, position_ids=positions)
        logits = logits[:, -1:, :]                                            # (B, 1, V or V/tp)
        logits = self.model.gather_logits(logits)  # tensor parallel: every rank gets all of V
        return logits[:, 0, :].float()                                        # (B, V)

    def prefill(self):
        """Logits after the prompt."""
        return self._forward(self.ids)

    def step(self, next_tokens):
        """Append next_tokens (B,) to every row; return the logits that follow them."""
        ### BEGIN SOLUTION
        self.ids = torch.cat((self.ids, next_tokens[:, None]), dim=1)         # (B, T+1)
        if self.attention_mask is not None:
            self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        return self._forward(next_tokens[:, None] if self.caches is not None else self.ids)
        ### END SOLUTION

    def reorder(self, index):
        """Keep rows `index` (B,) of the sequences, the mask and every layer's cache."""
        self.ids = self.ids[index]
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask[index]
        for cache in self.caches or ():
            cache.reorder(index)


@dataclass
class GenerateOutput:
    """What `generate(..., return_dict_in_generate=True)` returns (transformers' field names)."""

    sequences: torch.Tensor                    # (B * num_return_sequences, T + new)
    scores: tuple = ()                         # per step: processed scores (rows, V)
    logits: tuple = ()                         # per step: raw logits (rows, V)
    sequences_scores: torch.Tensor | None = None  # beam search: length-normalised log-probability


# ---------------------------------------------------------------- greedy and sampling


def decode_steps(model, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
                 top_p=None, eos=None, pad=0, repetition_penalty=1.0, generator=None,
                 attention_mask=None, use_cache=True, record=None):
    """Yield the next tokens (B,) one step at a time, greedy or sampled; rows that produced EOS
    continue with `pad`, and decoding stops once every row has. `record` collects logits/scores."""
    decoder = Decoder(model, input_ids, attention_mask, use_cache)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
    logits = decoder.prefill()                                                # (B, V)
    for step in range(max_new_tokens):
        scores = process_logits(logits, decoder.ids, repetition_penalty, temperature, top_k, top_p,
                                do_sample, decoder.attention_mask)            # (B, V)
        if record is not None:
            record["logits"].append(logits)
            record["scores"].append(scores)
        if do_sample:
            next_tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        else:
            next_tokens = scores.argmax(dim=-1)                               # (B,)
        if eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad)
            unfinished &= ~torch.isin(next_tokens, eos)
        yield next_tokens
        if step == max_new_tokens - 1 or not unfinished.any():
            return
        logits = decoder.step(next_tokens)


# ---------------------------------------------------------------- beam search


def beam_search(model, input_ids, max_new_tokens, num_beams, eos=None, pad=0, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1, repetition_penalty=1.0,
                attention_mask=None, use_cache=True, record=None):
    """Keep the num_beams best partial sequences by summed log-probability (transformers' rules).

    Each step ranks the max(2, 1 + n_eos) * num_beams best continuations of all beams (enough for
    num_beams of them not to end in one of the n_eos EOS ids): among the first num_beams, one ending
    in EOS (or at the last step, any) is finished, scored sum_logprob / new_len**length_penalty;
    the best num_beams that do not end in EOS go on. A prompt is done when num_beams hypotheses are
    finished and (early_stopping=True, or) no running beam can beat the worst of them.
    Returns (sequences (B * num_return_sequences, T + new), their scores).
    """
    batch, prompt_len = input_ids.shape
    k = num_beams
    repeated_mask = None if attention_mask is None else attention_mask.repeat_interleave(k, 0)
    decoder = Decoder(model, input_ids.repeat_interleave(k, 0), repeated_mask, use_cache)
    beam_scores = torch.full((batch, k), -1e9, device=input_ids.device)      # (B, K)
    beam_scores[:, 0] = 0.0           # all beams start equal: keep one so the first step differs
    finished = [[] for _ in range(batch)]   # per prompt: (score, new tokens), best k kept
    done = [False] * batch
    eos_ids = set() if eos is None else set(eos.tolist())
    logits = decoder.prefill()                                                # (B*K, V)
    ### BEGIN SOLUTION
    for step in range(max_new_tokens):
        log_probs = apply_repetition_penalty(F.log_softmax(logits, dim=-1), decoder.ids,
                                             repetition_penalty, decoder.attention_mask)  # (B*K, V)
        if record is not None:
            record["logits"].append(logits)
            record["scores"].append(log_probs)
        vocab = log_probs.shape[-1]
        total = (log_probs.view(batch, k, vocab) + beam_scores[..., None]).view(batch, k * vocab)
        top_scores, top_index = total.topk(max(2, 1 + len(eos_ids)) * k, dim=-1)  # (B, >= 2K)
        last = step == max_new_tokens - 1
        next_rows = torch.arange(batch * k, device=input_ids.device).view(batch, k)  # (B, K)
        next_tokens = torch.full((batch, k), pad, dtype=torch.long, device=input_ids.device)
        next_scores = beam_scores.clone()
        for b in range(batch):
            if done[b]:           # its rows keep decoding with the batch but are ignored
                continue
            going_on = 0
            for rank, (score, index) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                row, token = b * k + index // vocab, index % vocab
                if rank < k and (last or token in eos_ids):
                    new = torch.cat((decoder.ids[row, prompt_len:], torch.tensor([token])))
                    finished[b].append((score / (step + 1) ** length_penalty, new))
                    finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
                elif token not in eos_ids and going_on < k:
                    next_rows[b, going_on], next_tokens[b, going_on] = row, token
                    next_scores[b, going_on] = score
                    going_on += 1
            if len(finished[b]) == k:
                best_len = max_new_tokens if early_stopping == "never" and length_penalty > 0 \
                    else step + 1
                best_possible = next_scores[b, 0].item() / best_len ** length_penalty
                done[b] = early_stopping is True or best_possible <= finished[b][-1][0]
        if last or all(done):
            break
        decoder.reorder(next_rows.flatten())
        beam_scores = next_scores
        logits = decoder.step(next_tokens.flatten())
    ### END SOLUTION

    best = [hyp for b in range(batch) for hyp in finished[b][:num_return_sequences]]
    new_len = max(len(tokens) for _, tokens in best)
    prompts = input_ids.repeat_interleave(num_return_sequences, 0)            # (B*R, T)
    new = torch.stack([F.pad(tokens, (0, new_len - len(tokens)), value=pad) for _, tokens in best])
    scores = torch.tensor([score for score, _ in best])
    return torch.cat((prompts, new.to(prompts.device)), dim=1), scores        # (B*R, T + new)


# ---------------------------------------------------------------- the entry point


def _check_args(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p,
                num_beams, num_return_sequences, repetition_penalty, attention_mask):
    """Reject bad arguments with a sentence saying what to change."""
    vocab, block = model.config.vocab_size, model.config.block_size
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError("input_ids must be a non-empty integer tensor of shape (batch, seq); for "
                         "prompts of different lengths use minimt.generate.left_pad(prompts, "
                         "pad_token_id)")
    check_token_ids(input_ids, vocab, "input_ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    if input_ids.shape[1] + max_new_tokens > block:
        raise ValueError(_too_long(input_ids.shape[1], max_new_tokens, block))
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0 when sampling; for the most "
                         "likely token use do_sample=False (greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k={top_k!r} must be a non-negative integer (0 or None: no top-k)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1.0: no nucleus filter)")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty!r} must be > 0 (1.0: none)")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} must be a positive integer")
    if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences={num_return_sequences!r} must be a positive integer")
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not implemented; "
                         "use do_sample=False for beam search or num_beams=1 for sampling")
    if not do_sample and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} is more than num_beams="
                         f"{num_beams}: without sampling only the num_beams best sequences exist; "
                         "raise num_beams or set do_sample=True")
    _warn_unused_sampling_args(do_sample, num_beams, temperature, top_k, top_p)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must match")
        real = attention_mask.bool()
        if (real[:, :-1] & ~real[:, 1:]).any() or not real[:, -1].all():
            raise ValueError("attention_mask must be left padding (0s then 1s in every row): "
                             "generation appends at the right; see minimt.generate.left_pad")


def _too_long(prompt_len, max_new_tokens, block):
    """What to cut when prompt + new tokens need more positions than block_size."""
    need = (f"a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} needs "
            f"{prompt_len + max_new_tokens} positions but block_size={block}; minimt refuses "
            f"positions beyond block_size (no sliding window): ")
    if max_new_tokens >= block:
        return need + f"use max_new_tokens <= {block - 1} and a shorter prompt"
    keep = f"input_ids[:, -{block - max_new_tokens}:]"
    if prompt_len >= block:
        return need + f"the prompt alone fills the context, so cut it, e.g. to {keep}"
    return need + (f"use max_new_tokens <= {block - prompt_len} or keep only the last prompt "
                   f"tokens, e.g. {keep}")


def _warn_unused_sampling_args(do_sample, num_beams, temperature, top_k, top_p):
    """Warn once that greedy decoding and beam search ignore the sampling filters, as
    transformers' GenerationConfig.validate does."""
    if do_sample:
        return
    mode = "beam search" if num_beams > 1 else "greedy decoding"
    for name, value, off in (("temperature", temperature, (1.0,)), ("top_k", top_k, (None, 0)),
                             ("top_p", top_p, (None, 1.0))):
        if value not in off:
            warn_once(f"{name}={value!r} is ignored: do_sample=False ({mode}) takes the most "
                      f"likely tokens; set do_sample=True to sample with {name}, or leave "
                      f"{name} out")


def _as_eos(eos_token_id, vocab_size, device):
    if eos_token_id is None:
        return None
    many = isinstance(eos_token_id, (list, tuple))
    ids = list(eos_token_id) if many else [eos_token_id]
    ids = [check_token_id(f"eos_token_id[{i}]" if many else "eos_token_id", t, vocab_size)
           for i, t in enumerate(ids)]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _pad_id(pad_token_id, eos, vocab_size):
    """pad_token_id, checked; default: the first EOS id, else 0."""
    if pad_token_id is not None:
        return check_token_id("pad_token_id", pad_token_id, vocab_size)
    return int(eos[0]) if eos is not None else 0


def _notify(streamer, tokens):
    """A streamer is a callable taking each step's tokens (B,), or an object with transformers'
    put()/end() protocol (its put() also receives the prompt first)."""
    if streamer is not None:
        (streamer.put if hasattr(streamer, "put") else streamer)(tokens)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
             top_p=None, num_beams=1, num_return_sequences=1, eos_token_id=None, pad_token_id=None,
             repetition_penalty=1.0, length_penalty=1.0, early_stopping=False, seed=None,
             attention_mask=None, use_cache=True, streamer=None, return_dict_in_generate=False):
    """Continue `input_ids` (B, T) by up to `max_new_tokens` tokens; transformers' keyword meanings.

    Greedy by default; `do_sample` samples after repetition penalty, temperature, top-k and top-p
    (top_k=None disables top-k, where transformers' GenerationConfig defaults it to 50);
    `num_beams` > 1 is beam search. Rows that hit `eos_token_id` (an int or a list) are padded with
    `pad_token_id` (default: the first EOS id). `seed` makes sampling reproducible. Left-padded
    batches pass `attention_mask`. Returns sequences (B * num_return_sequences, T + new) or,
    with `return_dict_in_generate`, a GenerateOutput with the per-step logits and scores.
    """
    _check_args(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, num_beams,
                num_return_sequences, repetition_penalty, attention_mask)
    eos = _as_eos(eos_token_id, model.config.vocab_size, input_ids.device)
    pad = _pad_id(pad_token_id, eos, model.config.vocab_size)
    record = {"logits": [], "scores": []} if return_dict_in_generate else None
    sequences_scores = None
    if num_beams > 1:
        if streamer is not None:
            raise ValueError("streaming needs num_beams=1: beam search only knows its tokens at the end")
        sequences, sequences_scores = beam_search(
            model, input_ids, max_new_tokens, num_beams, eos, pad, length_penalty, early_stopping,
            num_return_sequences, repetition_penalty, attention_mask, use_cache, record)
    else:
        prompts = input_ids.repeat_interleave(num_return_sequences, 0)        # (B*R, T)
        if streamer is not None and hasattr(streamer, "put"):
            streamer.put(prompts)
        new_tokens = []
        for tokens in stream(model, input_ids, max_new_tokens, do_sample, temperature, top_k,
                             top_p, num_return_sequences, eos_token_id, pad, repetition_penalty,
                             seed, attention_mask, use_cache, record):
            new_tokens.append(tokens)
            _notify(streamer, tokens)
        sequences = torch.cat((prompts, torch.stack(new_tokens, dim=1)), dim=1)  # (B, T + new)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    if not return_dict_in_generate:
        return sequences
    return GenerateOutput(sequences, tuple(record["scores"]), tuple(record["logits"]),
                          sequences_scores)


@torch.no_grad()
def stream(model, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
           top_p=None, num_return_sequences=1, eos_token_id=None, pad_token_id=None,
           repetition_penalty=1.0, seed=None, attention_mask=None, use_cache=True, record=None):
    """Iterate over the new tokens (B * num_return_sequences,) as they are produced (greedy or
    sampling, generate()'s meanings), e.g. to print text while it is being generated."""
    _check_args(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, 1,
                num_return_sequences, repetition_penalty, attention_mask)
    eos = _as_eos(eos_token_id, model.config.vocab_size, input_ids.device)
    pad = _pad_id(pad_token_id, eos, model.config.vocab_size)
    if num_return_sequences > 1:    # sampling: every prompt is repeated, as in transformers
        input_ids = input_ids.repeat_interleave(num_return_sequences, 0)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, 0)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    yield from decode_steps(model, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p,
                            eos, pad, repetition_penalty, generator, attention_mask, use_cache,
                            record)
