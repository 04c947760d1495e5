"""The scale calculator against the papers: MT-NLG's iteration times (Smith et al. 2022, arXiv
2201.11990), Narayanan et al. 2021's FLOPs and training-time estimates (arXiv 2104.04473),
Korthikanti et al. 2022's activation table (arXiv 2205.05198); and against minimt itself: the
parameters its pipeline stages hold, the activation bytes it saves, 1F1B's micro-batches in
flight."""
import pytest
import torch

from minimt import GPT, GPTConfig
from minimt.memory import measure_layer
from minimt.model import param_count
from minimt.parallel.pipeline import peak_in_flight, pipeline_schedule
from minimt.parallel.pipeline_runtime import GPTStage, stage_parameters
from minimt.scale import (GPU_BYTES, best_layout, end_to_end_training_time_s, estimate,
                          flops_per_iteration, megatron_layer_activation_bytes,
                          stage_params_per_gpu)

MT_NLG = GPTConfig.from_preset("mt-nlg-530b")
# Narayanan et al. 2021, Table 1: GPT-3 (96 layers, hidden 12288, 96 heads) and the 1T model
# (128 layers, hidden 25600, 160 heads); vocabulary 51200, sequence 2048.
GPT3 = GPTConfig(vocab_size=51200, block_size=2048, n_layer=96, n_head=96, n_embd=12288, bias=True)
ONE_T = GPTConfig(vocab_size=51200, block_size=2048, n_layer=128, n_head=160, n_embd=25600,
                  bias=True)
DAY = 86400


@pytest.mark.parametrize("nodes, tflops, seconds", [(280, 126, 60.1), (350, 121, 50.2),
                                                   (420, 113, 44.4)])
def test_mt_nlg_iteration_times(nodes, tflops, seconds):
    # 8 GPUs per DGX node; 8-way tensor x 35-way pipeline = 280 GPUs per replica
    est = estimate(MT_NLG, tp=8, pp=35, dp=nodes * 8 // 280, micro_batch_size=1,
                   global_batch_size=1920, achieved_tflops=tflops)
    assert est.num_gpus == nodes * 8
    assert abs(est.iteration_time_s / seconds - 1) < 0.03, est.iteration_time_s


def test_flops_are_narayanans_equation_3_with_full_recomputation():
    for config, B in ((MT_NLG, 1920), (GPT3, 1536), (ONE_T, 3072)):
        s, l, h, V = config.block_size, config.n_layer, config.n_embd, config.vocab_size
        eq3 = 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))
        assert flops_per_iteration(config, B, "full") == pytest.approx(eq3, rel=1e-12)
        # no recomputation: 3/4 of the layers' part; selective adds back only attention's 4Bs^2h
        none, selective = (flops_per_iteration(config, B, r) for r in ("none", "selective"))
        assert selective - none == pytest.approx(4 * B * s * s * h * l, rel=1e-12)
        assert none < selective < flops_per_iteration(config, B, "full")


@pytest.mark.parametrize("config, gpus, tflops, tokens, days", [
    (GPT3, 1024, 140, 300e9, 34), (ONE_T, 3072, 163, 450e9, 84)])
def test_narayanans_end_to_end_training_times(config, gpus, tflops, tokens, days):
    # the time depends on the GPU count only; tp = 8 inside a node, pp = 8, dp fills the rest
    est = estimate(config, tp=8, pp=8, dp=gpus // 64, micro_batch_size=1,
                   global_batch_size=gpus // 64 * 64, achieved_tflops=tflops)
    eq4 = end_to_end_training_time_s(tokens, est.params, gpus, tflops)
    assert round(eq4 / DAY) == days            # the paper's rounded estimate, its own formula
    assert abs(est.training_time_s(tokens) / DAY / days - 1) < 0.03  # eq. 3, iteration by iteration
    assert abs(est.params / {34: 175e9, 84: 1.008e12}[days] - 1) < 0.01


def test_korthikanti_table_2():
    s, b, h, a = 2048, 1, 20480, 128
    assert megatron_layer_activation_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)
    tp = megatron_layer_activation_bytes(s, b, h, a, t=8)
    sp_selective = megatron_layer_activation_bytes(s, b, h, a, 8, True, "selective")
    assert sp_selective == s * b * h * 34 / 8
    assert 4.5 < tp / sp_selective < 5.5  # "reduce activation memory by 5x" (their abstract)
    assert megatron_layer_activation_bytes(s, b, h, a, 8, False, "full") == 2 * s * b * h


def test_stage_parameters_match_the_pipeline_stages():
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=4, n_head=4, n_embd=32, bias=True)
    assert stage_params_per_gpu(config, 1, 1) == param_count(config)
    torch.manual_seed(0)
    model = GPT(config)
    for pp in (2, 4):
        held = [sum(p.numel() for p in stage_parameters([GPTStage(model, r, pp)]))
                for r in range(pp)]
        # the last stage holds the tied output layer too (here shared; on ranks, a copy)
        assert stage_params_per_gpu(config, 1, pp) == max(held)


def test_activation_term_is_the_measured_bytes_scaled():
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=4, n_head=4, n_embd=32, bias=True)
    for recompute in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = GPT(config, recompute=recompute)
        measured = measure_layer(model, torch.randn(2, 16, 32)).bytes
        for pp, m in ((1, 1), (2, 4), (4, 2)):
            est = estimate(config, 1, pp, 1, micro_batch_size=2, global_batch_size=2 * m,
                           recompute=recompute, dtype="fp32", activation_model="minimt")
            in_flight = peak_in_flight(pipeline_schedule("1f1b", pp, m))[0]
            assert est.memory_bytes_per_gpu["activations"] == measured * (4 // pp) * in_flight


def test_memory_accounting_fits_and_dominant_term():
    est = estimate(MT_NLG, 8, 35, 8, 1, 1920)
    mem = est.memory_bytes_per_gpu
    n = stage_params_per_gpu(MT_NLG, 8, 35)
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == (2 * n, 2 * n, 12 * n)
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert est.fits(80 * 2**30) and est.dominant == "optimizer"
    zero = estimate(MT_NLG, 8, 35, 8, 1, 1920, zero=True)
    assert zero.memory_bytes_per_gpu["optimizer"] == 12 * n / 8
    no_recompute = estimate(MT_NLG, 8, 35, 8, 1, 1920, recompute="none")
    assert not no_recompute.fits() and no_recompute.dominant == "activations"
    assert est.bubble == pytest.approx(34 / 240)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp=8, pp=8, dp=8), "n_layer=105 is not divisible by pp=8: .*use pp in \\[1, 3, 5, 7"),
    (dict(tp=3, pp=35, dp=8), "n_head=128 is not divisible by tp=3: .*use tp in \\[1, 2, 4, 8"),
    (dict(tp=8, pp=35, dp=7), "global_batch_size=1920 is not divisible by dp x micro_batch_size"
                              "=7: .*multiple of 7"),
])
def test_layouts_that_do_not_divide_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate(MT_NLG, micro_batch_size=1, global_batch_size=1920, **kwargs)


def test_best_layout_fits_with_the_least_bubble():
    est = best_layout(MT_NLG, 2240, 1920, gpu_bytes=GPU_BYTES)
    assert est.fits() and est.num_gpus == 2240
    with pytest.raises(ValueError, match="no layout of 8 GPUs fits"):
        best_layout(MT_NLG, 8, 1920)


@pytest.mark.parametrize("dp", [1, 8, 64])
def test_zero_stages_and_bytes_per_parameter_conventions(dp):
    n = stage_params_per_gpu(MT_NLG, 8, 35)
    per_param = {}
    for convention in ("zero", "megatron"):
        for stage in (0, 1, 2, 3):
            mem = estimate(MT_NLG, 8, 35, dp, 1, 1920 // dp * dp, zero=stage,
                           bytes_per_parameter=convention).memory_bytes_per_gpu
            per_param[convention, stage] = (mem["weights"] + mem["gradients"] + mem["optimizer"]) / n
    # Rajbhandari et al. 2019, Figure 1: 2 + 2 + K, 2 + 2 + K/N, 2 + (2 + K)/N, (4 + K)/N, K = 12
    assert per_param["zero", 0] == 16
    assert per_param["zero", 1] == pytest.approx(4 + 12 / dp)
    assert per_param["zero", 2] == pytest.approx(2 + 14 / dp)
    assert per_param["zero", 3] == pytest.approx(16 / dp)
    # Megatron-LM: 18 bytes (fp32 main gradients), distributed optimizer 6 + 12/d
    assert per_param["megatron", 0] == 18
    assert per_param["megatron", 1] == pytest.approx(6 + 12 / dp)
    old_switch = estimate(MT_NLG, 8, 35, dp, 1, 1920 // dp * dp, zero=True)
    assert old_switch.zero == 1 and "ZeRO-1" in old_switch.summary()


def test_bad_zero_stage_and_convention_are_refused():
    with pytest.raises(ValueError, match="zero=4: choose a ZeRO stage in"):
        estimate(MT_NLG, 8, 35, 8, 1, 1920, zero=4)
    with pytest.raises(ValueError, match="bytes_per_parameter='deepspeed': choose one of"):
        estimate(MT_NLG, 8, 35, 8, 1, 1920, bytes_per_parameter="deepspeed")
