"""Checkpoints that change layout, on real gloo ranks: saved at (tp 2, pp 2, dp 2) with ZeRO-1, read
at (1, 1, 1) with torch.optim.AdamW, at (4, 1, 2) with ZeRO-1 and back; weights bit-equal, the
optimizer state equal, training resumed at any layout continues with the uninterrupted losses;
the serial model's and Hugging Face GPT-2's state dicts come out of it."""
import json

import pytest
import torch

from minimt.config import GPTConfig
from minimt.model import GPT
from minimt.parallel import (DistributedOptimizer, MeshModel, ParallelContext,
                             checkpoint_to_hf_gpt2_state_dict, full_state_dict, launch,
                             load_checkpoint, load_serial_model, read_checkpoint, save_checkpoint,
                             unique_parameters)

from helpers import decays, reference_adamw, token_batch

CONFIG = GPTConfig(vocab_size=40, block_size=8, n_layer=4, n_head=4, n_embd=16, bias=True,
                   gelu_approximate="tanh")
GLOBAL_BATCH, LR = 8, 1e-3


def batch(step):
    return token_batch(step, CONFIG, GLOBAL_BATCH)


def mesh_share(ctx, seed=0, **layout):
    """This rank's share of GPT(CONFIG) built with `seed`, as the Trainer cuts it (1F1B over 2
    micro-batches when pp > 1)."""
    torch.manual_seed(seed)
    return MeshModel(GPT(CONFIG), ctx, GLOBAL_BATCH, num_microbatches=2, **layout)


def train_steps(share, opt, steps, on_step=None):
    """The Trainer's step on `share` for each of `steps`; the global batch's losses (last
    stage). on_step(step + 1) runs after each optimizer step."""
    losses = []
    for step in steps:
        x, y = share.local_batch(*batch(step))
        opt.zero_grad()
        loss = share.forward_backward(x, y)
        share.finish_gradients()
        opt.step()
        mean = share.global_mean(loss)  # the mean over data-parallel replicas, on every rank
        if share.ctx.is_last_stage:
            losses.append(mean.item())
        if on_step:
            on_step(step + 1)
    return losses


def _train(ctx, first_step, last_step, load_dir=None, save_dir=None, save_at=None):
    """Steps first_step..last_step-1 on this layout with ZeRO-1; load before, save after save_at."""
    share = mesh_share(ctx, seed=1 if load_dir else 0, zero=True)  # a loaded run starts elsewhere
    stages = share.chunks
    opt = DistributedOptimizer(stages, ctx, lr=LR, weight_decay=0.1, decay_filter=decays)
    if load_dir:
        meta = load_checkpoint(load_dir, stages, opt, ctx)
        assert meta["step"] == first_step and meta["extra"]["note"] == "resume here"
    loaded = full_state_dict(stages, ctx)
    if save_dir and save_at == first_step:  # re-save what was just loaded, at this layout
        save_checkpoint(save_dir, stages, opt, ctx, step=first_step, extra={"note": "resume here"})

    def maybe_save(step):
        if save_dir and save_at == step:
            save_checkpoint(save_dir, stages, opt, ctx, step=step, extra={"note": "resume here"})
    return train_steps(share, opt, range(first_step, last_step), maybe_save), loaded


def serial_from(load_dir, first_step, last_step):
    """The serial model with torch.optim.AdamW, resumed from a checkpoint of any layout."""
    torch.manual_seed(1)
    model = GPT(CONFIG)
    opt = reference_adamw(model.parameters(), LR)
    load_checkpoint(load_dir, model, opt, ParallelContext())
    loaded_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    loaded_state = {n: {k: v.clone() for k, v in opt.state[p].items()}
                    for n, p in model.named_parameters()}
    losses = []
    for step in range(first_step, last_step):
        _, loss = model(*batch(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, loaded_weights, loaded_state, model, opt


def last_stage_losses(results):
    return next(losses for losses, _ in results if losses)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Four steps at (2, 2, 2) with ZeRO-1, a checkpoint after the second."""
    directory = tmp_path_factory.mktemp("ckpt_222")
    results = launch(_train, 0, 4, None, str(directory), 2, tp=2, pp=2, dp=2, timeout_s=120)
    return directory, last_stage_losses(results)


def test_save_writes_the_serial_layout_atomically(saved):
    directory, _ = saved
    assert (directory / "latest").read_text() == "iter_0000002"
    folder = directory / "iter_0000002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "extra.pt", "meta.json", "model_pp0.pt", "model_pp1.pt", "optim_pp0.pt", "optim_pp1.pt"]
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no temporary left
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["layout"] == {"tp": 2, "pp": 2, "dp": 2, "zero": True}
    assert meta["step"] == meta["optimizer_steps"] == 2
    _, weights, state = read_checkpoint(directory)
    serial_names = {n for n, _ in GPT(CONFIG).named_parameters()}
    assert weights.keys() == serial_names == state.keys()
    for name, tensor in weights.items():
        assert state[name]["exp_avg"].shape == tensor.shape


def test_load_at_1_1_1_bit_equal_and_resumes_with_the_same_losses(saved):
    directory, losses = saved
    _, weights, state = read_checkpoint(directory)
    resumed, loaded_weights, loaded_state, model, opt = serial_from(directory, 2, 4)
    for name, tensor in weights.items():
        assert torch.equal(loaded_weights[name], tensor), name
        assert torch.equal(loaded_state[name]["exp_avg"], state[name]["exp_avg"]), name
        assert torch.equal(loaded_state[name]["exp_avg_sq"], state[name]["exp_avg_sq"]), name
        assert loaded_state[name]["step"].item() == 2
    assert resumed == pytest.approx(losses[2:], abs=1e-5)


def test_load_at_4_1_2_and_back(saved, tmp_path):
    """(2,2,2) -> (4,1,2): bit-equal weights, resumed losses equal; (4,1,2) saves again, and
    (2,2,2) reads that back: the same files, the same losses as the uninterrupted run."""
    directory, losses = saved
    back = tmp_path / "ckpt_412"
    results = launch(_train, 2, 4, str(directory), str(back), 2, tp=4, pp=1, dp=2, timeout_s=120)
    _, weights, state = read_checkpoint(directory)
    for _, loaded in results:
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[n], weights[n]) for n in weights)
    assert last_stage_losses(results) == pytest.approx(losses[2:], abs=1e-5)
    meta, weights_back, state_back = read_checkpoint(back)
    assert meta["layout"] == {"tp": 4, "pp": 1, "dp": 2, "zero": True}
    for name in weights:
        assert torch.equal(weights_back[name], weights[name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state_back[name][key], state[name][key]), (name, key)
    again = launch(_train, 2, 4, str(back), None, None, tp=2, pp=2, dp=2, timeout_s=120)
    assert last_stage_losses(again) == pytest.approx(losses[2:], abs=1e-6)


def test_serial_and_hugging_face_state_dicts(saved):
    transformers = pytest.importorskip("transformers")
    from minimt.hf_gpt2 import hf_gpt2_config_dict
    directory, _ = saved
    model = load_serial_model(directory)
    _, weights, _ = read_checkpoint(directory)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config_dict(CONFIG)))
    hf.load_state_dict(checkpoint_to_hf_gpt2_state_dict(directory), strict=False)
    hf.eval()
    x, _ = batch(0)
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x)[0], atol=1e-5)
        assert torch.equal(hf.transformer.wte.weight, weights["transformer.wte.weight"])


def test_a_bf16_zero_checkpoint_keeps_its_fp32_master(tmp_path):
    def run(ctx):
        torch.manual_seed(0)
        model = GPT(CONFIG).to(torch.bfloat16)
        opt = DistributedOptimizer(model, ctx, lr=LR)
        model(*(t.chunk(2)[ctx.dp_rank] for t in batch(0)))[1].backward()
        opt.step()
        save_checkpoint(tmp_path, model, opt, ctx, step=1)
        return torch.cat([opt.master]), opt.shard_start
    results = launch(run, dp=2, timeout_s=60)
    meta, weights, state = read_checkpoint(tmp_path)
    assert meta["dtype"] == "bfloat16" and all(t.dtype == torch.bfloat16 for t in weights.values())
    flat_master = torch.cat([master for master, _ in results])
    masters = torch.cat([state[n]["master"].flatten() for n, _ in GPT(CONFIG).named_parameters()])
    assert torch.equal(flat_master[:masters.numel()], masters)
    assert load_serial_model(tmp_path).transformer.wte.weight.dtype == torch.bfloat16


def test_an_unfinished_save_leaves_the_last_checkpoint(saved, tmp_path):
    """A crash while writing leaves a hidden folder, never a step folder `latest` points to."""
    directory, _ = saved
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(directory, copy)
    (copy / ".tmp-iter_0000004").mkdir()  # what a crash during the next save leaves
    (copy / ".tmp-iter_0000004" / "model_pp0.pt").write_bytes(b"partial")
    meta, _, _ = read_checkpoint(copy)
    assert meta["step"] == 2


def _train_ddp(ctx, steps, save_dir):
    """The same two steps with DDP + torch.optim.AdamW (no ZeRO), then a checkpoint."""
    share = mesh_share(ctx)
    opt = reference_adamw(unique_parameters(share.chunks), LR)
    train_steps(share, opt, range(steps))
    save_checkpoint(save_dir, share.ddp, opt, ctx, step=steps, extra={"note": "resume here"})


def test_a_checkpoint_without_zero_loads_into_zero(saved, tmp_path):
    """(2,2,2) with DDP + AdamW writes the same weights and Adam moments as (2,2,2) with ZeRO-1
    (1e-6: the same arithmetic, summed in another order); (4,1,2) with ZeRO-1 resumes from it with
    the uninterrupted losses."""
    directory, losses = saved
    launch(_train_ddp, 2, str(tmp_path), tp=2, pp=2, dp=2, timeout_s=120)
    meta, weights, state = read_checkpoint(tmp_path)
    assert meta["layout"] == {"tp": 2, "pp": 2, "dp": 2, "zero": False}
    _, zero_weights, zero_state = read_checkpoint(directory)
    for name in zero_weights:
        assert torch.allclose(weights[name], zero_weights[name], atol=1e-6, rtol=0), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(state[name][key], zero_state[name][key], atol=1e-6), (name, key)
    resumed = launch(_train, 2, 4, str(tmp_path), None, None, tp=4, pp=1, dp=2, timeout_s=120)
    assert last_stage_losses(resumed) == pytest.approx(losses[2:], abs=1e-5)


def test_loading_refuses_another_model(saved):
    directory, _ = saved
    other = GPT(CONFIG.replace(n_layer=2))
    with pytest.raises(ValueError, match="differs"):
        load_checkpoint(directory, other, None, ParallelContext())


def test_bf16_master_weights_move_between_zero_and_mixed_precision_adamw(tmp_path):
    """A serial bf16 model with MixedPrecisionOptimizer(AdamW) saves its fp32 masters and moments;
    ZeRO-1 on 2 ranks loads them (its shards equal the saved masters), steps once and saves; the
    serial optimizer loads that back with the masters ZeRO wrote."""
    from minimt.precision import MixedPrecisionOptimizer
    torch.manual_seed(0)
    model = GPT(CONFIG).to(torch.bfloat16)
    opt = MixedPrecisionOptimizer(torch.optim.AdamW(model.parameters(), lr=LR))
    model(*batch(0))[1].backward()
    opt.step()
    save_checkpoint(tmp_path / "serial", model, opt, ParallelContext(), step=1)
    _, _, saved_state = read_checkpoint(tmp_path / "serial")
    names = [n for n, _ in model.named_parameters()]
    saved_master = torch.cat([saved_state[n]["master"].flatten() for n in names])
    assert saved_state[names[0]]["master"].dtype == torch.float32

    def zero_side(ctx):
        torch.manual_seed(5)
        replica = GPT(CONFIG).to(torch.bfloat16)
        zero = DistributedOptimizer(replica, ctx, lr=LR)
        load_checkpoint(tmp_path / "serial", replica, zero, ctx)
        loaded = zero.master.clone()
        replica(*(t.chunk(2)[ctx.dp_rank] for t in batch(1)))[1].backward()
        zero.step()
        save_checkpoint(tmp_path / "zero", replica, zero, ctx, step=2)
        return loaded, zero.shard_start, zero.num_steps

    results = launch(zero_side, dp=2, timeout_s=60)
    loaded = torch.cat([master for master, _, _ in results])[:saved_master.numel()]
    assert torch.equal(loaded, saved_master) and results[0][2] == 2
    torch.manual_seed(7)
    again = GPT(CONFIG).to(torch.bfloat16)
    opt2 = MixedPrecisionOptimizer(torch.optim.AdamW(again.parameters(), lr=LR))
    load_checkpoint(tmp_path / "zero", again, opt2, ParallelContext())
    _, weights, state = read_checkpoint(tmp_path / "zero")
    for (name, p), master in zip(again.named_parameters(), opt2.master_params):
        assert torch.equal(p, weights[name]) and torch.equal(master, state[name]["master"]), name
        inner = opt2.optimizer.state[master]
        assert torch.equal(inner["exp_avg"], state[name]["exp_avg"]) and inner["step"].item() == 2


def test_a_folder_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'latest'"):
        read_checkpoint(tmp_path)


def test_interleaved_chunks_save_and_load(tmp_path):
    """pp 2 with 2 chunks per rank (virtual stages 0, 2 on rank 0 and 1, 3 on rank 1): the saved
    state is the serial model's; loading it back into the chunks restores every tensor."""
    def run(ctx):
        interleaved = dict(schedule="interleaved", num_chunks=2, zero=True)
        stages = mesh_share(ctx, seed=0, **interleaved).chunks
        opt = DistributedOptimizer(stages, ctx, lr=LR)
        save_checkpoint(tmp_path, stages, opt, ctx, step=0)
        fresh = mesh_share(ctx, seed=3, **interleaved).chunks
        load_checkpoint(tmp_path, fresh, DistributedOptimizer(fresh, ctx, lr=LR), ctx)
        return full_state_dict(fresh, ctx)
    results = launch(run, pp=2, timeout_s=60)
    torch.manual_seed(0)
    serial = dict(GPT(CONFIG).named_parameters())
    merged = {n: t for r in results for n, t in r.items()}
    assert merged.keys() == serial.keys()
    assert all(torch.equal(merged[n], serial[n]) for n in serial)
    assert all(torch.equal(p, serial[n]) for n, p in load_serial_model(tmp_path).named_parameters())


def _bf16_trainer(ctx, seed):
    """A Trainer of bf16 weights with fp32 masters (MixedPrecisionOptimizer, no ZeRO) on ctx."""
    from minimt.train import TrainConfig, Trainer

    def random_batch(split, batch_size, block_size, generator):
        x = torch.randint(0, CONFIG.vocab_size, (batch_size, block_size), generator=generator)
        return x, torch.roll(x, -1, dims=1)
    torch.manual_seed(seed)
    config = TrainConfig(max_iters=4, batch_size=GLOBAL_BATCH, learning_rate=1e-2, decay_lr=False,
                         warmup_iters=0, dtype="bfloat16", num_microbatches=2, progress=False,
                         seed=3)
    return Trainer(GPT(CONFIG), random_batch, config, ctx=ctx)


def _bf16_resume(ctx, directory):
    """4 steps in one go; then 2 steps, a checkpoint, and 2 more steps in a fresh Trainer (other
    initial weights) that loads it: the losses of both runs."""
    whole = _bf16_trainer(ctx, seed=0)
    uninterrupted = [whole.train_step().item() for _ in range(4)]
    first = _bf16_trainer(ctx, seed=0)
    losses = [first.train_step().item() for _ in range(2)]
    save_checkpoint(directory, first.mesh.chunks, first.optimizer, ctx, step=first.iter_num,
                    extra={"batch_rng": first.generator.get_state()})
    second = _bf16_trainer(ctx, seed=1)
    meta = load_checkpoint(directory, second.mesh.chunks, second.optimizer, ctx)
    second.iter_num = meta["step"]
    second.generator.set_state(meta["extra"]["batch_rng"])
    losses += [second.train_step().item() for _ in range(2)]
    return uninterrupted, losses


@pytest.mark.parametrize("mesh", [dict(), dict(tp=2, pp=2)], ids=["serial", "tp2-pp2"])
def test_a_resumed_bf16_run_continues_with_the_same_losses(tmp_path, mesh):
    """16-bit weights without ZeRO: the checkpoint holds MixedPrecisionOptimizer's fp32 masters
    and Adam moments, so the resumed run's losses are the uninterrupted run's, bit for bit."""
    for uninterrupted, resumed in launch(_bf16_resume, str(tmp_path), timeout_s=60, **mesh):
        assert resumed == uninterrupted
    _, _, state = read_checkpoint(tmp_path)
    assert state and all(s["master"].dtype == torch.float32 for s in state.values())


def _unwritable(tmp_path, kind):
    if kind == "read-only folder":
        import os
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "ckpt"
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "ckpt"


@pytest.mark.parametrize("kind", ["read-only folder", "a file in the path"])
def test_an_unwritable_folder_is_named_as_the_user_gave_it(tmp_path, kind):
    """The error names the folder the caller passed, not save_checkpoint's hidden temporary."""
    directory = _unwritable(tmp_path, kind)
    torch.manual_seed(0)
    model = GPT(CONFIG)
    with pytest.raises(OSError, match="cannot write the checkpoint") as caught:
        save_checkpoint(directory, model, None, ParallelContext(), step=3)
    assert repr(str(directory)) in str(caught.value) and ".tmp-iter" not in str(caught.value)
    assert "folder you can write to" in str(caught.value)
