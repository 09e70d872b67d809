"""GANs through deepgen's own loop (no Ray) on digits: resume, and what a registered generator serves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import train_locally

from deepgen.config import PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import build_task
from deepgen.train.env import LocalEnv
from deepgen.train.loop import STATE_FILE, train_loop


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cgan_spec(root, epochs: int, **model) -> PipelineSpec:
    return PipelineSpec.validate_dict({
        "name": "cgan", "data": {"source": {"kind": "digits"}},
        "model": {"kind": "cgan", "num_classes": 10, "nz": 16, "ngf": 8, "ndf": 8, "embed_dim": 4, **model},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 3}, "scaling": {"num_workers": 1},
        "registry": {"model_name": "cgan", "gate_metric": "frechet_distance", "greater_is_better": False},
        "tracking": {"runs_dir": str(root / "runs")}})


def run(spec, root, name, on_epoch=None):
    history, env, manifest = train_locally(spec, root / name, on_epoch=on_epoch)
    return history, torch.load(env.latest_checkpoint() / STATE_FILE, weights_only=True), manifest


def test_a_resumed_gan_run_continues_the_same_steps_as_an_uninterrupted_one(tmp_path):
    _, straight, _ = run(cgan_spec(tmp_path, 2), tmp_path, "straight")

    def killed_after_epoch_1(metrics):  # epoch 1 is checkpointed, then the process dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cgan_spec(tmp_path, 2), tmp_path, "interrupted", on_epoch=killed_after_epoch_1)
    history, resumed, _ = run(cgan_spec(tmp_path, 2), tmp_path, "interrupted")  # ... and is run again
    assert [h["epoch"] for h in history] == [1, 2]
    for net in ("generator", "discriminator"):
        steps = [int(s["step"]) for s in resumed["optimizers"][net]["state"].values()]
        assert steps == [int(s["step"]) for s in straight["optimizers"][net]["state"].values()]
        for key, value in straight["models"][net].items():
            assert torch.equal(value, resumed["models"][net][key]), (net, key)  # same RNG, same batches


def test_the_conditional_generator_draws_the_label_it_is_asked_for(tmp_path):
    spec = cgan_spec(tmp_path, 1)
    _, state, manifest = run(spec, tmp_path, "ckpt")
    task = build_task(spec, manifest)
    models = task.build_models()
    for k, m in models.items():
        m.load_state_dict(state["models"][k])
    exported = task.export(tmp_path / "export", models, None)
    from deepgen.serving import load_exported

    sampler = load_exported(exported)
    a, b = sampler.sample_grid(16, label=3), sampler.sample_grid(16, label=7)
    assert a.shape == b.shape == (2 * 8, 8 * 8) and a.dtype == np.uint8  # 16 digits of 8x8, 8 per row
    assert not np.array_equal(a, b)
    assert np.array_equal(a, sampler.sample_grid(16, label=3))  # a seed gives the same grid
    for label in (10, -1):
        with pytest.raises(ValueError, match=rf"^label {label}: this generator draws labels 0..9$"):
            sampler.sample_grid(16, label=label)


def test_a_trained_srgan_beats_bicubic_upsampling_on_held_out_digits(tmp_path):
    spec = PipelineSpec.validate_dict({
        "name": "srgan", "data": {"source": {"kind": "digits"}, "resize": 16},
        "model": {"kind": "srgan", "scale": 2, "channels": 8, "num_blocks": 1, "ndf": 8, "feature_width": 8,
                  "warmup_steps": 60},  # about 110 steps in all: the last ~50 are adversarial
        "train": {"epochs": 3, "batch_size": 32}, "scaling": {"num_workers": 1},
        "registry": {"model_name": "srgan", "gate_metric": "psnr"}, "tracking": {"runs_dir": str(tmp_path / "runs")}})
    _, state, manifest = run(spec, tmp_path, "ckpt")
    task = build_task(spec, manifest)
    models = {k: m.eval() for k, m in task.build_models().items()}
    untrained = task.evaluate(models, spec.data_dir).metrics
    # the residual over bicubic starts at zero, so an untrained generator is bicubic upsampling itself
    assert untrained["psnr"] == pytest.approx(untrained["bicubic_psnr"], abs=1e-3)
    for k, m in models.items():
        m.load_state_dict(state["models"][k])
    m = task.evaluate(models, spec.data_dir).metrics
    # the test split, 8x8 -> 16x16: bicubic gives about 29 dB; trained runs gave 36-37 dB on 4 seeds
    assert m["psnr"] > m["bicubic_psnr"] + 3 and m["ssim"] > m["bicubic_ssim"], m


def test_a_last_batch_of_one_row_does_not_stop_a_model_with_batch_norm(tmp_path):
    spec = PipelineSpec.validate_dict({
        "name": "gan", "data": {"source": {"kind": "digits"}},
        "model": {"kind": "gan", "nz": 8, "hidden": [16]},  # BatchNorm1d in the generator
        "train": {"epochs": 1, "batch_size": 64}, "scaling": {"num_workers": 1},
        "registry": {"model_name": "gan"}, "tracking": {"runs_dir": str(tmp_path / "runs")}})
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    rows = manifest.rows["train"]
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": rows - 1})})
    history, _, _ = run(spec, tmp_path, "ckpt")  # batches of rows - 1 and 1
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


def test_under_ddp_the_gan_networks_keep_their_own_batch_norm_statistics(tmp_path):
    """D runs on the real and the generated batch before one backward: with DDP's default buffer
    broadcast before each forward, cuDNN's batch norm backward fails on that in-place rewrite (a GPU-only
    error, pytorch/pytorch issue 175024), so the loop asks Ray Train for DDP without it."""
    spec = cgan_spec(tmp_path, epochs=1)
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    asked, synced = [], []

    class Recording(LocalEnv):
        def prepare_model(self, model, ddp_options=None):
            asked.append(ddp_options)
            return super().prepare_model(model, ddp_options)

        def sync_buffers(self, models):  # ... and takes rank 0's statistics at each epoch's end instead
            synced.append(sorted(models))

    train_loop(spec, manifest, Recording(spec.data_dir, spec.anomaly, tmp_path / "ckpt", seed=spec.train.seed))
    assert asked == [{"broadcast_buffers": False}] * 2  # generator and discriminator
    assert synced == [["discriminator", "generator"]]  # one epoch


def _buffers_after_sync(rank: int, folder: str) -> None:
    import json
    from pathlib import Path

    import torch.distributed as dist

    from deepgen.train.env import broadcast_buffers

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    bn = torch.nn.BatchNorm1d(3)
    bn.train()(torch.randn(8, 3) + rank * 10)  # each rank's own running statistics
    before = bn.running_mean.tolist()
    broadcast_buffers({"discriminator": bn})
    Path(folder, f"rank{rank}.json").write_text(json.dumps([before, bn.running_mean.tolist()]))
    dist.destroy_process_group()


def test_at_an_epochs_end_every_rank_takes_rank_0s_batch_norm_statistics(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_buffers_after_sync, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    (before0, after0), (before1, after1) = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert before0 != before1 and after0 == after1 == before0


def test_the_kept_epoch_is_the_one_whose_validation_frechet_distance_was_lowest(tmp_path):
    """A GAN's model is the epoch with the best validation Frechet distance (measured every
    model.watch_every epochs and at the last), not simply the last: late epochs can be worse."""
    from deepgen.train.checkpoint import BEST_FILE

    # measured at epochs 2 and 3 only: epoch 1 is no candidate (and no error)
    history, env, _ = train_locally(cgan_spec(tmp_path, 3, watch_every=2), tmp_path / "ckpt")
    measured = {h["epoch"]: h["val_frechet_distance"] for h in history if "val_frechet_distance" in h}
    assert sorted(measured) == [2, 3]
    best = min(measured, key=measured.get)
    assert [h.get("best_epoch") for h in history] == [None, 2, best]
    assert torch.load(env.latest_checkpoint() / BEST_FILE, weights_only=False)["epoch"] == best
