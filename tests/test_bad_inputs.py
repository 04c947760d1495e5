"""Bad input gets a clear error where it enters minimt: each case below is a mistake a learner makes,
and the error must be of the stated type and its message must contain the stated pieces (the
argument's name and value, and what to change). No message may advise weights_only=False."""
import math
import os

import numpy as np
import pytest
import torch

from minimt import generate as gen
from minimt.__main__ import main
from minimt.attention import MultiHeadAttention, scaled_dot_product_attention
from minimt.config import GPTConfig
from minimt.hf_gpt2 import config_from_hf_gpt2, to_hf_gpt2_state_dict
from minimt.model import GPT
from minimt.parallel import ParallelContext, RankError, launch
from minimt.parallel import checkpoint as mesh_checkpoint
from minimt.parallel.tensor import apply_tensor_parallel
from minimt.precision import DynamicLossScaler, StaticLossScaler
from minimt.pruning import layer_sensitivity, magnitude_masks, sparsity_sweep
from minimt.tokenizer import CharTokenizer, train_bpe
from minimt.train import Trainer, TrainConfig, load_checkpoint

CONFIG = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)
HF_FIELDS = dict(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
torch.manual_seed(0)
MODEL = GPT(CONFIG)
IDS = torch.tensor([[1, 2, 3], [4, 5, 6]])                                      # (B=2, T=3)
Q = torch.randn(1, 2, 3, 4)                                                      # (B, H, Tq, D)


def batches(split, batch_size, block_size, generator):
    x = torch.randint(0, CONFIG.vocab_size, (batch_size, block_size), generator=generator)
    return x, x


class Data:
    get_batch = staticmethod(batches)


def trainer(config=CONFIG):
    torch.manual_seed(0)
    return Trainer(GPT(config), batches, TrainConfig(max_iters=1, warmup_iters=0, progress=False))


def checkpoint_file(tmp, name, content):
    """A file in tmp: bytes as they are, a tensor dict through torch.save, or a trainer's checkpoint."""
    path = os.path.join(tmp, name)
    if content == "trainer":
        trainer().save_checkpoint(path)
    elif isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    else:
        torch.save(content, path)
    return path


def truncated(tmp):
    good = checkpoint_file(tmp, "good.pt", "trainer")
    with open(good, "rb") as f:
        return checkpoint_file(tmp, "truncated.pt", f.read()[:3000])


class NotATensor:
    """A pickled object: weights_only=True refuses to run its GLOBAL."""


def hf_gpt2(**changes):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**{**HF_FIELDS, **changes}))


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        tie_word_embeddings=True))


def hf_without(key):
    state = hf_gpt2().state_dict()
    del state[key]
    return state


def mesh_checkpoint_dir(tmp, damage=None):
    """A layout-free checkpoint (minimt.parallel.checkpoint) of GPT(CONFIG) in tmp/mesh, with
    `damage` = (file name, bytes to write over it, or None to delete it)."""
    folder = mesh_checkpoint.save_checkpoint(os.path.join(tmp, "mesh"), MODEL, None,
                                             ParallelContext(), config=CONFIG)
    if damage is not None:
        name, content = damage
        os.remove(folder / name)
        if content is not None:
            (folder / name).write_bytes(content)
    return os.path.join(tmp, "mesh")


def mesh_load(tmp, damage=None, config=CONFIG):
    directory = mesh_checkpoint_dir(tmp, damage)
    mesh_checkpoint.load_checkpoint(directory, GPT(config), None, ParallelContext())


def tp_twice():
    model = apply_tensor_parallel(GPT(CONFIG), ParallelContext())
    apply_tensor_parallel(model, ParallelContext())


# (id, call taking a temporary folder, exception type, pieces the message must contain)
CASES = [
    # ---------------------------------------------------------------- token ids
    ("idx id >= vocab", lambda t: MODEL(torch.tensor([[1, 70]])), ValueError,
     ["idx holds token id 70", "[0, 11)", "GPTConfig(vocab_size=71)"]),
    ("idx id == vocab", lambda t: MODEL(torch.tensor([[11]])), ValueError,
     ["idx holds token id 11", "GPTConfig(vocab_size=12)"]),
    ("idx negative", lambda t: MODEL(torch.tensor([[1, -1]])), ValueError,
     ["idx holds the negative token id -1", "the model's tokenizer"]),
    ("targets id >= vocab", lambda t: MODEL(IDS, torch.tensor([[1, 2, 3], [4, 5, 70]])),
     ValueError, ["targets holds token id 70", "vocab_size=71"]),
    ("targets negative", lambda t: MODEL(IDS, torch.tensor([[1, 2, 3], [4, 5, -5]])),
     ValueError, ["targets holds the negative token id -5", "-100 marks a position to leave out"]),
    ("generate input_ids >= vocab", lambda t: gen.generate(MODEL, torch.tensor([[1, 99]]), 2),
     ValueError, ["input_ids holds token id 99", "vocab_size=100"]),
    ("generate pad_token_id >= vocab", lambda t: gen.generate(MODEL, IDS, 2, pad_token_id=99),
     ValueError, ["pad_token_id=99", "below vocab_size=11"]),
    ("generate pad_token_id negative", lambda t: gen.generate(MODEL, IDS, 2, pad_token_id=-1),
     ValueError, ["pad_token_id=-1", "[0, 11)"]),
    ("generate pad_token_id str", lambda t: gen.generate(MODEL, IDS, 2, pad_token_id="0"),
     TypeError, ["pad_token_id='0'", "int token id", "tokenizer.encode"]),
    ("generate eos_token_id str", lambda t: gen.generate(MODEL, IDS, 2, eos_token_id="x"),
     TypeError, ["eos_token_id='x'", "tokenizer.encode"]),
    ("generate eos_token_id negative", lambda t: gen.generate(MODEL, IDS, 2, eos_token_id=-5),
     ValueError, ["eos_token_id=-5", "below vocab_size=11"]),
    ("generate eos list with one bad id",
     lambda t: gen.generate(MODEL, IDS, 2, eos_token_id=[1, 99]), ValueError,
     ["eos_token_id[1]=99", "below vocab_size=11"]),
    ("stream eos_token_id bool", lambda t: list(gen.stream(MODEL, IDS, 2, eos_token_id=True)),
     TypeError, ["eos_token_id=True", "int token id"]),
    # ---------------------------------------------------------------- types and shapes
    ("idx float", lambda t: MODEL(IDS.float()), TypeError,
     ["idx has dtype torch.float32", "idx.long()"]),
    ("idx bool", lambda t: MODEL(IDS > 2), TypeError, ["idx has dtype torch.bool", "idx.long()"]),
    ("idx numpy", lambda t: MODEL(np.array([[1, 2]])), TypeError,
     ["idx must be a torch.Tensor", "got ndarray", "torch.as_tensor(idx, dtype=torch.long)"]),
    ("idx list", lambda t: MODEL([[1, 2]]), TypeError,
     ["idx must be a torch.Tensor", "got list", "torch.as_tensor"]),
    ("targets float", lambda t: MODEL(IDS, IDS.float()), TypeError,
     ["targets has dtype torch.float32", "targets.long()"]),
    ("targets int32", lambda t: MODEL(IDS, IDS.int()), TypeError,
     ["targets has dtype torch.int32", "torch.int64 here", "targets.long()"]),
    ("idx uint8", lambda t: MODEL(IDS.to(torch.uint8)), TypeError,
     ["idx has dtype torch.uint8", "torch.int64 or torch.int32", "idx.long()"]),
    ("targets transposed", lambda t: MODEL(IDS, IDS.t()), ValueError,
     ["targets have shape (3, 2) but idx (2, 3)", "shapes must be equal"]),
    ("targets flattened", lambda t: MODEL(IDS, IDS.flatten()), ValueError,
     ["targets have shape (6,) but idx (2, 3)", "shapes must be equal"]),
    ("empty sequence with targets",
     lambda t: MODEL(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)),
     ValueError, ["idx of shape (1, 0) has no tokens", "at least one token"]),
    ("attention head counts differ",
     lambda t: scaled_dot_product_attention(Q, torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 4)),
     ValueError, ["q has 2 heads, k 3 and v 3", "repeat_interleave", "q (1, 2, 3, 4), k (1, 3, 3, 4)"]),
    ("attention head sizes differ",
     lambda t: scaled_dot_product_attention(Q, torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5)),
     ValueError, ["head sizes 4 and 5", "needs them equal"]),
    ("attention k and v lengths differ",
     lambda t: scaled_dot_product_attention(Q, Q, torch.randn(1, 2, 5, 4)), ValueError,
     ["k and v hold 3 and 5 positions", "every key needs its value"]),
    ("attention batch sizes differ",
     lambda t: scaled_dot_product_attention(torch.randn(2, 2, 3, 4), torch.randn(3, 2, 3, 4),
                                            torch.randn(3, 2, 3, 4)), ValueError,
     ["2, 3 and 3 batch rows", "must be equal"]),
    ("attention mask does not broadcast",
     lambda t: scaled_dot_product_attention(Q, Q, Q, mask=torch.ones(3, 5, dtype=torch.bool)),
     ValueError, ["mask of shape (3, 5)", "(1, 2, 3, 3)", "(q, k) = (3, 3)"]),
    ("multi-head attention mask does not broadcast",
     lambda t: MultiHeadAttention(8, 2)(torch.randn(1, 3, 8),
                                        mask=torch.ones(2, 2, 3, 5, dtype=torch.bool)),
     ValueError, ["mask of shape (2, 2, 3, 5)", "(q, k) = (3, 3)"]),
    ("multi-head attention input width",
     lambda t: MultiHeadAttention(8, 2)(torch.randn(1, 3, 6)), ValueError,
     ["x must be (batch, seq, n_embd=8)", "(1, 3, 6)"]),
    # ---------------------------------------------------------------- generation arguments
    ("prompt alone fills block_size",
     lambda t: gen.generate(MODEL, torch.zeros(1, 20, dtype=torch.long), 4), ValueError,
     ["a prompt of 20 tokens", "the prompt alone fills the context, so cut it",
      "input_ids[:, -12:]"]),
    ("prompt exactly block_size", lambda t: gen.generate(MODEL, torch.zeros(1, 16, dtype=torch.long), 1),
     ValueError, ["prompt alone fills the context", "input_ids[:, -15:]"]),
    ("max_new_tokens >= block_size", lambda t: gen.generate(MODEL, IDS, 16), ValueError,
     ["max_new_tokens=16", "use max_new_tokens <= 15"]),
    # ---------------------------------------------------------------- tokenizers
    ("CharTokenizer list of lines", lambda t: CharTokenizer(["ab\n", "cd\n"]), TypeError,
     ["CharTokenizer(text) needs one str", "''.join(lines)"]),
    ("CharTokenizer bytes", lambda t: CharTokenizer(b"abc"), TypeError,
     ["CharTokenizer(text) needs one str, got bytes", "text.decode('utf-8')"]),
    ("CharTokenizer None", lambda t: CharTokenizer(None), TypeError,
     ["CharTokenizer(text)", "got NoneType", "open(path, encoding='utf-8').read()"]),
    ("train_bpe None text", lambda t: train_bpe(None, 300), TypeError,
     ["train_bpe(text) needs a str or a list of str", "open(path"]),
    ("train_bpe list of bytes", lambda t: train_bpe([b"ab"], 300), TypeError,
     ["train_bpe(text)", "a list of bytes", "t.decode('utf-8')"]),
    ("train_bpe vocab_size str", lambda t: train_bpe("hello", "300"), TypeError,
     ["vocab_size='300'", "write vocab_size=300"]),
    ("train_bpe vocab_size float", lambda t: train_bpe("hello", 300.0), TypeError,
     ["vocab_size=300.0 must be an int >= 256"]),
    ("train_bpe vocab_size too small", lambda t: train_bpe("hello", 100), ValueError,
     ["vocab_size=100", "use vocab_size >= 256"]),
    # ---------------------------------------------------------------- configs and the Trainer
    ("learning_rate str", lambda t: TrainConfig(learning_rate="3e-4"), TypeError,
     ["learning_rate='3e-4'", "write learning_rate=0.0003"]),
    ("learning_rate nan", lambda t: TrainConfig(learning_rate=math.nan), ValueError,
     ["learning_rate=nan", "finite"]),
    ("beta1 str", lambda t: TrainConfig(beta1="0.9"), TypeError, ["beta1='0.9'", "write beta1=0.9"]),
    ("weight_decay None", lambda t: TrainConfig(weight_decay=None), TypeError,
     ["weight_decay=None must be a number"]),
    ("Trainer with a dict config", lambda t: Trainer(MODEL, batches, {"max_iters": 2}), TypeError,
     ["config must be a TrainConfig, got dict", "TrainConfig(**settings)"]),
    ("Trainer device gpu", lambda t: Trainer(GPT(CONFIG), batches, TrainConfig(device="gpu")),
     ValueError, ["device='gpu' is not a torch device", "'cpu'"]),
    ("GPT with a dict", lambda t: GPT({"vocab_size": 11}), TypeError,
     ["GPT needs a GPTConfig, got dict", "GPTConfig(**fields)"]),
    ("GPTConfig dropout str", lambda t: GPTConfig(dropout="0.1"), TypeError,
     ["dropout='0.1'", "write dropout=0.1"]),
    ("GPTConfig layer_norm_eps inf", lambda t: GPTConfig(layer_norm_eps=math.inf), ValueError,
     ["layer_norm_eps=inf", "finite"]),
    # ---------------------------------------------------------------- checkpoints
    ("checkpoint truncated", lambda t: trainer().load_checkpoint(truncated(t)), ValueError,
     ["cannot read the checkpoint", "truncated.pt", "corrupt or truncated",
      "Trainer.save_checkpoint"]),
    ("checkpoint junk bytes",
     lambda t: load_checkpoint(checkpoint_file(t, "junk.pt", b"not a checkpoint" * 10)),
     ValueError, ["junk.pt", "corrupt or truncated", "Trainer.save_checkpoint"]),
    ("checkpoint empty file", lambda t: load_checkpoint(checkpoint_file(t, "empty.pt", b"")),
     ValueError, ["empty.pt", "corrupt or truncated"]),
    ("checkpoint with a pickled object",
     lambda t: load_checkpoint(checkpoint_file(t, "object.pt", {"model": NotATensor()})),
     ValueError, ["object.pt", "pickled Python object", "NotATensor", "plain tensors"]),
    ("checkpoint is a bare state_dict",
     lambda t: trainer().load_checkpoint(checkpoint_file(t, "bare.pt", MODEL.state_dict())),
     ValueError, ["bare.pt", "bare state_dict", "model.load_state_dict(torch.load(path"]),
    ("checkpoint lacks keys",
     lambda t: load_checkpoint(checkpoint_file(t, "partial.pt", {"model": MODEL.state_dict(),
                                                                 "iter_num": 3})),
     ValueError, ["partial.pt", "lacks ['optimizer'", "Trainer.save_checkpoint"]),
    ("checkpoint of another config",
     lambda t: trainer(CONFIG.replace(n_layer=2, n_embd=16)).load_checkpoint(
         checkpoint_file(t, "small.pt", "trainer")), ValueError,
     ["small.pt", "n_embd=8, n_layer=1", "n_embd=16, n_layer=2",
      "GPTConfig(**load_checkpoint(path)['model_config'])"]),
    ("mesh checkpoint with a truncated shard",
     lambda t: mesh_load(t, ("model_pp0.pt", b"PK\x03\x04 cut short")), ValueError,
     ["cannot read the checkpoint", "model_pp0.pt", "corrupt or truncated",
      "minimt.parallel.checkpoint.save_checkpoint"]),
    ("mesh checkpoint without its shard", lambda t: mesh_load(t, ("model_pp0.pt", None)),
     FileNotFoundError, ["lacks model_pp0.pt", "one model_pp*.pt file per pipeline stage",
                         "copy the whole folder"]),
    ("mesh checkpoint with a broken meta.json",
     lambda t: mesh_load(t, ("meta.json", b'{"format": "minimt-ser')), ValueError,
     ["meta.json is not valid JSON", "write it again with save_checkpoint"]),
    ("mesh checkpoint of another config",
     lambda t: mesh_load(t, config=CONFIG.replace(n_layer=2)), ValueError,
     ["n_layer=1", "n_layer=2", "GPTConfig(**read_checkpoint(directory)[0]['config'])"]),
    ("checkpoint path is a folder", lambda t: trainer().save_checkpoint(t), IsADirectoryError,
     ["cannot write the checkpoint", "not a folder"]),
    ("checkpoint folder is a file",
     lambda t: trainer().save_checkpoint(os.path.join(checkpoint_file(t, "f", b""), "c.pt")),
     OSError, ["cannot write the checkpoint", os.path.join("f", "c.pt"),
               "a part of its folder path is a file", "a folder you can write to"]),
    # ---------------------------------------------------------------- GPT-2 conversion
    ("convert a Llama", lambda t: GPT.from_hf_gpt2(llama()), ValueError,
     ["'llama' model, not GPT-2", "GPT2LMHeadModel"]),
    ("convert a config.json of another model",
     lambda t: config_from_hf_gpt2({"model_type": "gpt_neox", "hidden_size": 16}), ValueError,
     ["'gpt_neox' model, not GPT-2", "model_type 'gpt2'"]),
    ("convert a config without sizes", lambda t: config_from_hf_gpt2({"n_embd": 16}), ValueError,
     ["lacks ['vocab_size', 'n_positions', 'n_layer', 'n_head']", "config.json"]),
    ("convert a state dict with a missing key",
     lambda t: GPT.from_hf_gpt2(hf_without("transformer.h.1.mlp.c_fc.weight"),
                                config=hf_gpt2().config), ValueError,
     ["missing ['transformer.h.1.mlp.c_fc.weight']", "pass the config the weights were saved with"]),
    ("convert with fewer layers in the config",
     lambda t: GPT.from_hf_gpt2(hf_gpt2().state_dict(), config=hf_gpt2(n_layer=1).config),
     ValueError, ["n_layer=1", "unexpected ['transformer.h.1.ln_1.weight'", "pass the config"]),
    ("convert with another width in the config",
     lambda t: GPT.from_hf_gpt2(hf_gpt2().state_dict(), config=hf_gpt2(n_embd=32).config),
     ValueError, ["transformer.wte.weight is (32, 16) but the config needs (32, 32)",
                  "pass the config"]),
    ("convert with a config without biases",
     lambda t: GPT.from_hf_gpt2(hf_gpt2().state_dict(), config=GPTConfig(
         vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)),
     ValueError, ["bias=False", "GPTConfig(..., bias=True)"]),
    ("export a model without biases", lambda t: to_hf_gpt2_state_dict(MODEL), ValueError,
     ["bias=False", "bias=True"]),
    # ---------------------------------------------------------------- tensor parallelism
    ("apply_tensor_parallel twice", lambda t: tp_twice(), ValueError,
     ["already tensor parallel", "freshly built serial GPT(config)"]),
    ("apply_tensor_parallel ctx=None",
     lambda t: apply_tensor_parallel(GPT(CONFIG), None), TypeError,
     ["ctx must be the ParallelContext", "got NoneType", "ParallelContext()"]),
    ("apply_tensor_parallel on a Linear",
     lambda t: apply_tensor_parallel(torch.nn.Linear(2, 2), ParallelContext()), TypeError,
     ["needs a minimt GPT, got Linear", "ColumnParallelLinear"]),
    # ---------------------------------------------------------------- numbers that make no sense
    ("loss scale init inf", lambda t: DynamicLossScaler(init_scale=math.inf), ValueError,
     ["init_scale=inf must be in (0, 3.40282e+38]", "2**16"]),
    ("loss scale init beyond fp32", lambda t: DynamicLossScaler(init_scale=1e300), ValueError,
     ["init_scale=1e+300 must be in (0, 3.40282e+38]", "in fp32"]),
    ("loss scale init nan", lambda t: DynamicLossScaler(init_scale=math.nan), ValueError,
     ["init_scale=nan", "2**16"]),
    ("loss scale growth inf", lambda t: DynamicLossScaler(growth_factor=math.inf), ValueError,
     ["growth_factor=inf must be > 1 and finite"]),
    ("static loss scale inf", lambda t: StaticLossScaler(math.inf), ValueError,
     ["scale=inf must be in (0, 3.40282e+38]", "2**16"]),
    ("pruning sparsity 1.5", lambda t: magnitude_masks(MODEL, 1.5), ValueError,
     ["sparsity=1.5 must be in [0, 1)", "e.g. 0.5"]),
    ("pruning sparsity negative", lambda t: magnitude_masks(MODEL, -0.1, "layer"), ValueError,
     ["sparsity=-0.1 must be in [0, 1)"]),
    ("pruning sparsity str", lambda t: magnitude_masks(MODEL, "0.5"), TypeError,
     ["sparsity='0.5'", "write sparsity=0.5"]),
    ("layer sensitivity sparsity 1.5",
     lambda t: layer_sensitivity(MODEL, Data(), 1.5, batch_size=2, n_batches=1), ValueError,
     ["sparsity=1.5 must be in [0, 1)"]),
    ("sparsity sweep with one bad entry",
     lambda t: sparsity_sweep(MODEL, Data(), [0.5, 1.5], batch_size=2, n_batches=1), ValueError,
     ["sparsities[1]=1.5 must be in [0, 1)"]),
]


@pytest.mark.parametrize("call, error, pieces", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_gets_a_clear_error(call, error, pieces, tmp_path):
    with pytest.raises(error) as info:
        call(str(tmp_path))
    message = str(info.value)
    missing = [piece for piece in pieces if piece not in message]
    assert not missing, f"message lacks {missing}: {message}"
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_says_what_to_use():
    with pytest.raises(ValueError, match=r"device='cuda' but this machine has no usable CUDA GPU.*"
                                         r"use device='cpu'"):
        Trainer(GPT(CONFIG), batches, TrainConfig(device="cuda"))


@pytest.mark.parametrize("kwargs, name, mode", [
    (dict(temperature=0.37), "temperature=0.37", "greedy decoding"),
    (dict(top_k=7), "top_k=7", "greedy decoding"),
    (dict(top_p=0.61), "top_p=0.61", "greedy decoding"),
    (dict(num_beams=2, temperature=0.53), "temperature=0.53", "beam search"),
])
def test_sampling_arguments_without_do_sample_warn_once(kwargs, name, mode):
    with pytest.warns(UserWarning) as record:
        for _ in range(3):
            gen.generate(MODEL, IDS, 2, **kwargs)
    messages = [str(w.message) for w in record if name in str(w.message)]
    assert len(messages) == 1, messages  # once, although generate ran three times
    assert f"{name} is ignored: do_sample=False ({mode})" in messages[0]
    assert "set do_sample=True" in messages[0]
    assert record[0].filename == __file__  # points at the caller's line, not at minimt


def test_transformers_warns_for_the_same_sampling_arguments():
    """The upstream rule this follows: GenerationConfig flags temperature/top_p/top_k without
    do_sample (transformers logs it once; minimt warns once)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GenerationConfig(temperature=0.37, top_k=7, top_p=0.61)
    with pytest.raises(ValueError, match="temperature.*top_p.*top_k|do_sample"):
        config.validate(strict=True)


@pytest.mark.parametrize("argv, flag", [
    (["allreduce", "--tp", "0"], "argument --tp: '0' is not an integer >= 1"),
    (["allreduce", "--pp", "-1"], "argument --pp: '-1' is not an integer >= 1"),
    (["allreduce", "--dp", "two"], "argument --dp: 'two' is not an integer >= 1"),
    (["allreduce", "--timeout-s", "0"], "argument --timeout-s: '0' is not a number > 0"),
    (["allreduce", "--timeout-s", "inf"], "argument --timeout-s: 'inf' is not a number > 0"),
    (["allreduce", "--tpp", "2"], "unrecognized arguments: --tpp 2"),
    (["tp-train", "--steps", "0"], "argument --steps: '0' is not an integer >= 1"),
    (["tp-train", "--batch-size", "0"], "argument --batch-size: '0' is not an integer >= 1"),
    (["tp-train", "--lr", "0"], "argument --lr: '0' is not a number > 0"),
    (["tp-train", "--tolerance=-1"], "argument --tolerance: '-1' is not a number >= 0"),
    (["train", "--iters", "0", "--out", "{tmp}"], "argument --iters: '0' is not an integer >= 1"),
    (["train", "--iters", "5", "--lr", "fast", "--out", "{tmp}"],
     "argument --lr: 'fast' is not a number > 0"),
    (["train", "--iters", "5", "--dp", "0", "--out", "{tmp}"],
     "argument --dp: '0' is not an integer >= 1"),
    (["generate", "--checkpoint", "{tmp}", "--top-p", "1.5"],
     "argument --top-p: '1.5' is not a number > 0 and <= 1"),
    (["generate", "--checkpoint", "{tmp}", "--max-new-tokens", "-3"],
     "argument --max-new-tokens: '-3' is not an integer >= 1"),
    (["generate", "--checkpoint", "{checkpoint}", "--prompt", "naïve"],
     "character 'ï' (U+00EF) is not in the vocabulary"),
    (["generate", "--checkpoint", "{checkpoint}", "--prompt", ""],
     "--prompt is empty: give at least one character"),
    pytest.param(["allreduce", "--backend", "nccl"], "backend='nccl' needs one GPU per rank",
                 marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="has GPUs")),
])
def test_bad_command_line_flags_print_one_line_and_exit_2(argv, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main([word.format(tmp=tmp_path, checkpoint=mesh_checkpoint_dir(str(tmp_path)))
              if "{" in word else word for word in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "[rank" not in err  # refused before any rank started
    assert flag in err.splitlines()[-1], err
    assert err.splitlines()[0].startswith("usage: python -m minimt")


def _tp_forward(ctx, idx, targets):
    torch.manual_seed(0)
    model = apply_tensor_parallel(GPT(CONFIG), ctx)
    return model(idx, targets)[1]


@pytest.mark.parametrize("idx, targets, message", [
    (torch.tensor([[1, 70]]), None, "idx holds token id 70"),
    (torch.tensor([[1, 2]]), torch.tensor([[3, 70]]), "targets holds token id 70"),
])
def test_tensor_parallel_model_refuses_ids_like_the_serial_one(idx, targets, message):
    """The vocab-parallel embedding would give zeros (a finite loss) for an unknown id."""
    with pytest.raises(ValueError, match=message):
        MODEL(idx, targets)
    with pytest.raises(RankError, match=f"rank [01] raised ValueError: {message}"):
        launch(_tp_forward, idx, targets, tp=2, timeout_s=30)
