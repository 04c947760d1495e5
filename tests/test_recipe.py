"""MT-NLG's schedules in samples: the batch ramp equals megatron-core's
RampupBatchsizeNumMicroBatchesCalculator, the learning rate its OptimizerParamScheduler."""
import pytest
import torch

from minimt.recipe import (MT_NLG_LR, MT_NLG_RAMP, MT_NLG_TOKENS, Ramp, lr_at_sample,
                           num_microbatches, rampup_global_batch_size)
from helpers import oracle



def megatron_ramp(ramp, micro, dp):
    calculators = oracle("megatron.core.num_microbatches_calculator")
    return calculators.RampupBatchsizeNumMicroBatchesCalculator(
        ramp.global_batch_size, micro, dp, False, 0, ramp.start, ramp.increment, ramp.samples)


@pytest.mark.parametrize("ramp, micro, dp", [(MT_NLG_RAMP, 4, 8), (Ramp(4, 4, 40, 16), 2, 2),
                                             (Ramp(3, 6, 100, 21), 3, 1), (Ramp(8, 8, 1, 16), 4, 2)])
def test_rampup_equals_megatron_core_at_every_consumed_sample_count(ramp, micro, dp):
    theirs = megatron_ramp(ramp, micro, dp)
    stride = max(1, ramp.samples // 20000)
    for consumed in list(range(0, ramp.samples + 3 * ramp.global_batch_size, stride)) + [
            ramp.samples, ramp.samples + 1]:
        theirs.update(consumed, consistency_check=True)
        ours = rampup_global_batch_size(consumed, ramp.start, ramp.increment, ramp.samples,
                                        ramp.global_batch_size)
        assert ours == theirs.get_current_global_batch_size(), consumed
        assert num_microbatches(ours, micro, dp) == theirs.get()


def test_mt_nlg_ramp_counts():
    """32 -> 1920 by 32 over 12B tokens (5,859,375 samples of 2048): 1920 from step 14,476 on,
    80,087 steps to 270B tokens; each step matches megatron-core's calculator."""
    assert MT_NLG_RAMP.samples == 5_859_375
    ramp_steps, total_steps = MT_NLG_RAMP.count(MT_NLG_TOKENS // 2048)
    assert (ramp_steps, total_steps) == (14_475, 80_087)
    theirs, consumed = megatron_ramp(MT_NLG_RAMP, 1, 1), 0
    for step in range(ramp_steps + 1):
        theirs.update(consumed, consistency_check=False)
        assert theirs.get_current_global_batch_size() == MT_NLG_RAMP.batch_at(consumed)
        consumed += MT_NLG_RAMP.batch_at(consumed)
    assert MT_NLG_RAMP.batch_at(consumed - 1920) == 1920  # step ramp_steps + 1 is the first at 1920
    assert len(MT_NLG_RAMP.steps(20_000)) == sum(1 for _ in MT_NLG_RAMP.steps(20_000))


def test_bad_ramps_say_what_to_change():
    with pytest.raises(ValueError, match="whole number of INCR"):
        rampup_global_batch_size(0, 32, 30, 1000, 1920)
    with pytest.raises(ValueError, match="not a multiple"):
        num_microbatches(48, 4, 8)


def megatron_lr_scheduler(max_lr, min_lr, warmup, decay):
    scheduler_module = oracle("megatron.core.optimizer_param_scheduler")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    return optimizer, scheduler_module.OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=max_lr, min_lr=min_lr, lr_warmup_steps=warmup,
        lr_decay_steps=decay, lr_decay_style="cosine", start_wd=0.1, end_wd=0.1,
        wd_incr_steps=decay, wd_incr_style="constant")


@pytest.mark.parametrize("ramp, lr", [
    (Ramp(4, 4, 400, 32), dict(max_lr=1e-3, min_lr=1e-4, warmup_samples=300, decay_samples=4000)),
    (MT_NLG_RAMP, MT_NLG_LR)])
def test_lr_in_samples_equals_megatron_core_at_every_step_of_a_ramped_run(ramp, lr):
    optimizer, scheduler = megatron_lr_scheduler(lr["max_lr"], lr["min_lr"], lr["warmup_samples"],
                                                 lr["decay_samples"])
    consumed = 0
    # every step through the ramp and the warm-up and a stretch of the cosine
    horizon = min(lr["decay_samples"], ramp.samples + lr["warmup_samples"]) + 500 * ramp.global_batch_size
    for batch in ramp.steps(horizon):
        assert lr_at_sample(consumed, **lr) == pytest.approx(optimizer.param_groups[0]["lr"],
                                                             rel=1e-12, abs=1e-18)
        consumed += batch
        scheduler.step(increment=batch)
    for jump in (lr["decay_samples"] // 2 - consumed, lr["decay_samples"] // 2 + 1):
        consumed += jump
        scheduler.step(increment=jump)
        assert lr_at_sample(consumed, **lr) == pytest.approx(optimizer.param_groups[0]["lr"],
                                                             rel=1e-12)
    assert lr_at_sample(consumed, **lr) == lr["min_lr"]


def test_iteration_counted_warmup_goes_wrong_under_a_ramp():
    """Warm-up of 1B tokens counted as iterations of the final batch (254 steps of 1920) ends
    after 254 * 2048 * (ramp's small batches) far fewer samples than 488,281."""
    steps = MT_NLG_RAMP.steps(MT_NLG_LR["warmup_samples"])
    iteration_warmup = MT_NLG_LR["warmup_samples"] // MT_NLG_RAMP.global_batch_size
    samples_at_iteration_warmup = sum(steps[:iteration_warmup])
    assert len(steps) > 10 * iteration_warmup
    assert samples_at_iteration_warmup < MT_NLG_LR["warmup_samples"] / 10
    assert lr_at_sample(samples_at_iteration_warmup, **MT_NLG_LR) < MT_NLG_LR["max_lr"] / 10


def test_scale_estimate_counts_mt_nlg_iterations_with_the_ramp():
    from minimt import GPTConfig
    from minimt.scale import estimate
    layout = estimate(GPTConfig.from_preset("mt-nlg-530b"), 8, 35, 8, 1, 1920, achieved_tflops=126)
    assert layout.iterations(MT_NLG_TOKENS) == 68_665  # 270B / (1920 x 2048), rounded up
    assert layout.iterations(MT_NLG_TOKENS, MT_NLG_RAMP) == 80_087


def test_mt_nlg_preset_init_std_and_optimizer():
    import math

    from minimt import GPTConfig
    from minimt.recipe import MT_NLG_OPTIMIZER
    config = GPTConfig.from_preset("mt-nlg-530b")
    assert config.init_std == pytest.approx(math.sqrt(1 / (3 * 20480)))
    assert config.init_std == pytest.approx(4.0e-3, abs=5e-5)  # the paper's 4.0e-3
    assert MT_NLG_OPTIMIZER == dict(beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0,
                                    weight_decay=0.1)
    from minimt import GPT
    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=256,
                          init_std=0.004))
    assert small.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.004, rel=0.05)


def test_scale_time_counts_the_ramps_small_batches():
    """Each ramp step of batch b runs b / (micro x dp) micro-batches through the same p - 1 bubble
    slots; without a pipeline that is just the samples, so the time is the ramp-free one."""
    from minimt import GPTConfig
    from minimt.scale import estimate
    mt_nlg = GPTConfig.from_preset("mt-nlg-530b")
    layout = estimate(mt_nlg, 8, 35, 8, 1, 1920, achieved_tflops=126)
    first = layout.training_time_s(32 * 2048, MT_NLG_RAMP)  # one step of 32 sequences
    assert first == pytest.approx((32 / 8 + 34) / (240 + 34) * layout.iteration_time_s)
    days = layout.training_time_s(MT_NLG_TOKENS, MT_NLG_RAMP) / 86400
    assert 0.5 < days - layout.training_time_s(MT_NLG_TOKENS) / 86400 < 2  # the ramp's bubbles
    flat = estimate(mt_nlg, 8, 1, 8, 1, 1920, achieved_tflops=126)
    samples = sum(MT_NLG_RAMP.steps(MT_NLG_TOKENS // 2048))
    assert flat.training_time_s(MT_NLG_TOKENS, MT_NLG_RAMP) == pytest.approx(
        flat.training_time_s(samples * 2048), rel=1e-9)


def test_trainer_lr_equals_megatron_core_at_every_step_of_a_ramped_run():
    """The Trainer sets each step's lr from the samples consumed (Megatron's scheduler stepped by
    the global batch); the iteration-counted schedule, the bug class, differs under the ramp."""
    from minimt import GPT, GPTConfig
    from minimt.data import TokenDataset
    from minimt.lr_schedule import lr_at
    from minimt.train import Trainer, TrainConfig
    config = TrainConfig(max_iters=40, batch_size=2, gradient_accumulation_steps=8,
                         rampup_batch_size=(2, 2, 96), learning_rate=1e-3, min_lr=1e-4,
                         warmup_iters=4, lr_decay_iters=30, progress=False)
    final = 16
    optimizer, scheduler = megatron_lr_scheduler(1e-3, 1e-4, 4 * final, 30 * final)
    trainer = Trainer(GPT(GPTConfig(vocab_size=16, block_size=4, n_layer=1, n_head=1, n_embd=8)),
                      TokenDataset(torch.arange(200) % 16), config)
    differs = 0
    for step in range(config.max_iters):
        if step < 3:  # the Trainer itself, a few real steps
            trainer.train_step()
            ours = trainer.param_groups[0]["lr"]
        else:
            ours = config.lr(step)  # what trainer.zero_grad() sets at this step
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), step
        differs += abs(lr_at(step, 1e-3, 4, 30, 1e-4) - ours) > 1e-6
        scheduler.step(increment=config.ramp.global_batch(step))
    assert differs > 20


def test_mt_nlg_train_preset_carries_its_optimizer_settings():
    from minimt import GPT, GPTConfig
    from minimt.train import TrainConfig, configure_adamw
    config = TrainConfig.from_preset("mt-nlg-530b")
    assert (config.learning_rate, config.min_lr, config.grad_clip) == (5e-5, 5e-6, 1.0)
    assert config.ramp.global_batch(0) == 32 and config.ramp.ramp.global_batch_size == 1920
    adam = configure_adamw(GPT(GPTConfig(vocab_size=16, block_size=4, n_layer=1, n_head=1,
                                         n_embd=8)), config)
    group = adam.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.95), 1e-8, 0.1)
    with pytest.raises(ValueError, match="mt-nlg-530b"):
        TrainConfig.from_preset("mt-nlg")
