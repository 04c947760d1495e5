"""Tests for minimt.train: schedule, clipping, accumulation, determinism, checkpoints, validation."""
import math

import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.data import TokenDataset
from minimt.train import Trainer, TrainConfig, configure_adamw, load_checkpoint, lr_at

TINY = GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_dataset():
    """A learnable stream: a fixed random sequence of 16 tokens repeated (next token is predictable)."""
    g = torch.Generator().manual_seed(0)
    period = torch.randint(16, (37,), generator=g)
    return TokenDataset(period.repeat(200), val_fraction=0.1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(TINY)


def quiet(**kw):
    return TrainConfig(**{"max_iters": 20, "batch_size": 4, "warmup_iters": 2, "eval_interval": 10,
                          "eval_iters": 2, "progress": False, **kw})


def test_loss_falls_on_a_short_run():
    trainer = Trainer(tiny_model(), tiny_dataset(), quiet(max_iters=60, learning_rate=1e-2))
    history = trainer.train()
    first, last = history["val"][0][1], history["val"][-1][1]
    assert first == pytest.approx(math.log(16), abs=0.3)  # an untrained model is near uniform
    assert last < 0.5 * first, history["val"]  # it learns the repeating pattern
    assert [i for i, _ in history["train"]] == list(range(60))
    assert [i for i, _ in history["val"]] == [0, 10, 20, 30, 40, 50, 60]


def test_schedule_values():
    kw = dict(learning_rate=1e-3, warmup_iters=100, lr_decay_iters=2000, min_lr=1e-4)
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 101)
    assert lr_at(99, **kw) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, **kw) == pytest.approx(1e-3)                 # peak after warm-up
    assert lr_at(1050, **kw) == pytest.approx((1e-3 + 1e-4) / 2)   # half-way down the cosine
    assert lr_at(2000, **kw) == pytest.approx(1e-4)
    assert lr_at(5000, **kw) == 1e-4
    lrs = [lr_at(i, **kw) for i in range(2100)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))        # rises during warm-up
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))        # never rises afterwards
    assert TrainConfig(decay_lr=False).lr(7) == 1e-3
    assert TrainConfig(max_iters=2000).lr(1050) == pytest.approx(lr_at(1050, **kw))


def test_the_config_and_the_schedule_have_their_own_files_and_stay_in_minimt_train():
    """minimt.train keeps its public names; each is the one object of the module defining it."""
    import minimt.lr_schedule
    import minimt.train
    import minimt.train_config
    assert minimt.train.lr_at is minimt.lr_schedule.lr_at is lr_at
    assert minimt.train.TrainConfig is minimt.train_config.TrainConfig is TrainConfig
    assert minimt.train.AUTOCAST_DTYPES is minimt.train_config.AUTOCAST_DTYPES
    assert all(hasattr(minimt.train, name) for name in minimt.train.__all__)


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    opt = configure_adamw(model, TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params()  # the tied embedding / lm_head weight appears once


def test_clipping_limits_the_global_norm():
    trainer = Trainer(tiny_model(), tiny_dataset(), quiet(grad_clip=0.01))
    trainer.train_step()
    params = list(trainer.model.parameters())
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert trainer.last_grad_norm > 0.01                   # it had something to clip
    assert clipped.item() == pytest.approx(0.01, rel=1e-4)  # and the update used norm 0.01
    unclipped = Trainer(tiny_model(), tiny_dataset(), quiet(grad_clip=0.0))
    unclipped.train_step()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unclipped.model.parameters()]))
    assert norm.item() == pytest.approx(float(trainer.last_grad_norm), rel=1e-5)  # same batch


def fixed_batches(batch):
    """get_batch that hands out consecutive slices of the rows of `batch` (x, y), cycling."""
    x, y = batch
    state = {"row": 0}

    def get_batch(split, batch_size, block_size, generator):
        rows = torch.arange(state["row"], state["row"] + batch_size) % x.shape[0]
        state["row"] += batch_size
        return x[rows, :block_size], y[rows, :block_size]
    return get_batch


def test_accumulation_equals_a_bigger_batch():
    big = tiny_dataset().get_batch("train", 8, 16, torch.Generator().manual_seed(1))
    one = Trainer(tiny_model(), fixed_batches(big), quiet(batch_size=8))
    four = Trainer(tiny_model(), fixed_batches(big), quiet(batch_size=2, gradient_accumulation_steps=4))
    for _ in range(3):
        loss_one, loss_four = one.train_step(), four.train_step()
        assert loss_four.item() == pytest.approx(loss_one.item(), abs=1e-5)
    for (name, p), q in zip(one.model.named_parameters(), four.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=name)
    assert float(one.last_grad_norm) == pytest.approx(float(four.last_grad_norm), rel=1e-4)


def test_same_seed_same_history_other_seed_differs():
    runs = [Trainer(tiny_model(), tiny_dataset(), quiet(seed=s)).train() for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0]["train"] != runs[2]["train"]


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    config = quiet(max_iters=12, eval_interval=4)
    reference = Trainer(tiny_model(), tiny_dataset(), config)
    reference.train()

    first = Trainer(tiny_model(), tiny_dataset(), config)
    first.train(num_iters=6)
    path = tmp_path / "ckpt" / "last.pt"
    first.save_checkpoint(path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind

    state = load_checkpoint(path)  # weights_only=True: plain containers
    assert state["iter_num"] == 6 and state["model_config"]["n_embd"] == 32
    assert TrainConfig.from_dict(state["train_config"]) == config

    resumed = Trainer(tiny_model(seed=99), tiny_dataset(), config)  # different weights, fresh RNG
    resumed.load_checkpoint(path)
    resumed.train()
    assert resumed.history == reference.history
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_bf16_autocast_runs_and_learns():
    trainer = Trainer(tiny_model(), tiny_dataset(),
                      quiet(max_iters=30, learning_rate=3e-3, autocast_dtype=torch.bfloat16))
    assert trainer.config.autocast_dtype == "bfloat16"
    history = trainer.train()
    assert history["val"][-1][1] < history["val"][0][1] - 0.5


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_iters=0), "max_iters=0 must be a positive integer"),
    (dict(batch_size=2.5), "batch_size=2.5"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps=0"),
    (dict(warmup_iters=-1), "warmup_iters=-1"),
    (dict(learning_rate=0.0), "learning_rate=0.0 must be positive"),
    (dict(min_lr=1.0), "min_lr=1.0 must be in"),
    (dict(max_iters=50, warmup_iters=100), "warmup_iters=100 is longer than the decay"),
    (dict(beta2=1.0), "beta2=1.0"),
    (dict(grad_clip=-1.0), "grad_clip=-1.0"),
    (dict(autocast_dtype="fp8"), "autocast_dtype='fp8'"),
])
def test_config_validation_says_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig(**kwargs)


def test_trainer_rejects_bad_data_and_block_size():
    with pytest.raises(TypeError, match="get_batch"):
        Trainer(tiny_model(), [1, 2, 3], quiet())
    with pytest.raises(ValueError, match="block_size=32 exceeds the model's block_size=16"):
        Trainer(tiny_model(), tiny_dataset(), quiet(block_size=32))
