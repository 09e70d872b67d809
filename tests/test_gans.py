"""GANs on tiny generated images: what each variant's networks, losses, task step and metrics guarantee."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from deepgen.data.manifest import Manifest, Scaler
from deepgen.data.prepare import to_arrow
from deepgen.errors import DataError, TrainingError
from deepgen.metrics import images as metrics
from deepgen.models import gans
from deepgen.tasks.gan import (
    CGANSpec,
    DCGANSpec,
    DivergenceGuard,
    GanSpec,
    GanTask,
    GeneratorSampler,
    LapGANSpec,
    SRGANSpec,
    frechet_figures,
)
from deepgen.tasks.registry import task_class
from deepgen.tasks.srgan import Upscaler

torch.set_num_threads(1)  # tiny nets: threads only contend on a shared machine

TINY = {
    "gan": lambda: GanSpec(nz=8, hidden=[32]),
    "dcgan": lambda: DCGANSpec(nz=8, ngf=4, ndf=4),
    "dcgan_minimax_2_d_steps": lambda: DCGANSpec(nz=8, ngf=4, ndf=4, loss="minimax", d_steps=2),
    "cgan": lambda: CGANSpec(num_classes=2, nz=8, ngf=4, ndf=4, embed_dim=4),
    "cgan_mlp": lambda: CGANSpec(architecture="mlp", num_classes=2, nz=8, hidden=[32], embed_dim=4),
    "lapgan": lambda: LapGANSpec(levels=3, nz=8, hidden=[32], ngf=4, ndf=4),
    "dcgan_hinge_sn_ema": lambda: DCGANSpec(nz=8, ngf=4, ndf=4, loss="hinge", spectral_norm=True, ema_decay=0.9),
    "cgan_projection_sn_ema": lambda: CGANSpec(num_classes=2, nz=8, ngf=4, ndf=4, embed_dim=4, loss="hinge",
                                               conditioning="projection", spectral_norm=True, ema_decay=0.9),
    "lapgan_sn_ema": lambda: LapGANSpec(levels=3, nz=8, hidden=[32], ngf=4, ndf=4, spectral_norm=True,
                                        ema_decay=0.9),
    "srgan": lambda: SRGANSpec(scale=2, channels=4, num_blocks=1, ndf=2, feature_width=4, warmup_steps=0),
}


def blob_images(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, C*H*W) rows in [0, 1] and labels: label 0 = a bright blob in the top half, 1 = in the bottom half."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = rng.integers(0, 2, n)
    rows = np.empty((n, channels, size, size), np.float32)
    for i, lab in enumerate(labels):
        cy = rng.uniform(0.15, 0.4) * size + lab * size / 2
        cx = rng.uniform(0.2, 0.8) * size
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        rows[i] = np.clip(blob + rng.normal(0, 0.03, (size, size)), 0, 1)
    return rows.reshape(n, -1), labels.astype(np.int64)


def make_task(model, shape=(1, 16, 16), label_type="int") -> GanTask:
    manifest = Manifest(fingerprint="f", source_fingerprint="s", shape=list(shape), rows={"train": 8},
                        label_type=label_type, feature_names=None, scaler=Scaler(divisor=255.0), arrow_schema={})
    return task_class(model.kind)(SimpleNamespace(name="t", model=model), manifest)


def batch_of(n=8, shape=(1, 16, 16), seed=0):
    rows, labels = blob_images(n, shape[1], shape[0], seed)
    return {"features": torch.tensor(rows), "label": torch.tensor(labels)}


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# --- the task step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TINY))
def test_one_training_step_changes_both_networks(kind):
    torch.manual_seed(0)
    task = make_task(TINY[kind]())
    models = task.build_models()
    opts = task.build_optimizers(models)
    g0, d0 = snapshot(models["generator"]), snapshot(models["discriminator"])
    out = task.train_step(models, opts, batch_of())
    assert changed(g0, models["generator"]) and changed(d0, models["discriminator"])
    assert {"loss", "d_loss", "g_loss", "d_real", "d_fake"} <= set(out)
    assert all(v.requires_grad is False and torch.isfinite(v) for v in out.values())
    with torch.no_grad():
        sums = task.eval_step({k: m.eval() for k, m in models.items()}, batch_of(seed=1))
    assert "loss" in sums and torch.isfinite(sums["loss"])


@pytest.mark.parametrize("kind", ["cgan", "lapgan", "srgan"])
def test_a_step_under_bf16_autocast(kind):
    """The loop runs steps under bf16 autocast on GPUs; the networks and losses must take mixed dtypes."""
    task = make_task(TINY[kind]())
    models = task.build_models()
    opts = task.build_optimizers(models)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task.train_step(models, opts, batch_of())
    task.guard.flush()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_srgan_warmup_trains_the_content_network_and_g_on_mse_only():
    torch.manual_seed(0)
    task = make_task(SRGANSpec(scale=2, channels=4, num_blocks=1, ndf=2, feature_width=4, warmup_steps=2))
    models = task.build_models()
    opts = task.build_optimizers(models)
    d0, f0 = snapshot(models["discriminator"]), snapshot(models["feature_extractor"])
    out = task.train_step(models, opts, batch_of())
    assert "d_loss" not in out and torch.equal(out["loss"], out["pixel_loss"])
    assert not changed(d0, models["discriminator"]) and changed(f0, models["feature_extractor"])
    task.train_step(models, opts, batch_of())
    assert int(models["feature_extractor"].steps) == 2
    f1 = snapshot(models["feature_extractor"])
    out = task.train_step(models, opts, batch_of())  # past the warm-up: D plays, phi is frozen
    assert "d_loss" in out and not changed(f1, models["feature_extractor"])
    assert changed(d0, models["discriminator"])


def test_divergence_raises_training_error():
    task = make_task(TINY["dcgan"]())
    models = task.build_models()
    opts = task.build_optimizers(models)
    batch = batch_of()
    batch["features"][0, 0] = float("nan")
    with pytest.raises(TrainingError, match="diverged at step 1"):
        for _ in range(2):  # the guard reads a step's losses after queueing the next one
            task.train_step(models, opts, batch)


def test_a_nan_on_the_epochs_last_step_is_caught_at_the_epochs_end():
    task = make_task(TINY["dcgan"]())
    models = task.build_models()
    opts = task.build_optimizers(models)
    task.train_step(models, opts, batch_of())
    bad = batch_of()
    bad["features"][0, 0] = float("nan")
    task.train_step(models, opts, bad)  # the last step: no later step to read its losses after ...
    with pytest.raises(TrainingError, match="diverged at step 2"):
        task.end_epoch(models, opts)  # ... so the loop's end-of-epoch hook checks it before the checkpoint


def test_a_discriminator_that_wins_completely_stops_training_after_the_patience():
    guard = DivergenceGuard("t", collapse_d_loss=1e-4, patience=3)
    g = torch.tensor(5.0)
    for d in (1e-5, 1e-5, 0.5, 1e-5, 1e-5):  # a healthy step resets the count
        guard.observe(torch.tensor(d), g)
    guard.flush()
    guard.observe(torch.tensor(1e-6), g)
    with pytest.raises(TrainingError, match="won completely"):
        guard.flush()
    lap = DivergenceGuard("t", 1e-4, patience=1)  # LAPGAN: any level's D
    lap.observe(torch.tensor([0.7, 1e-6, 0.9]), g)
    with pytest.raises(TrainingError):
        lap.flush()


# each rank's (d_loss, g_loss) per step: rank 0's discriminator alone collapses at step 2 and its
# generator alone diverges at step 3; rank 1 stays healthy throughout
RANK_LOSSES = [[(0.7, 1.0), (1e-6, 1.0), (0.7, float("nan"))],
               [(0.7, 1.0), (0.6, 1.0), (0.7, 1.0)]]


def _guard_on_rank(rank: int, folder: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    guard = DivergenceGuard("t", collapse_d_loss=1e-4, patience=1)
    guard.all_reduce = lambda t: (dist.all_reduce(t), t)[1]  # what GanTask.share_losses installs
    guard.world_size = 2
    stopped = None
    try:
        for d, g in RANK_LOSSES[rank]:
            guard.observe(torch.tensor(d), torch.tensor(g))
        guard.flush()
    except TrainingError as e:
        stopped = str(e)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(stopped))
    dist.destroy_process_group()


def test_under_ddp_the_guard_judges_the_mean_over_ranks_so_every_rank_stops_together(tmp_path):
    """Two real gloo ranks: one rank's lone collapse does not stop the run, one rank's NaN stops every rank
    at the same step (a rank stopping alone would leave the others blocked in their next all-reduce)."""
    import json

    import torch.multiprocessing as mp

    alone = DivergenceGuard("t", collapse_d_loss=1e-4, patience=1)  # rank 0's losses judged by rank 0 only
    alone.observe(*map(torch.tensor, RANK_LOSSES[0][0]))
    with pytest.raises(TrainingError, match="won completely at step 2"):
        for d, g in RANK_LOSSES[0][1:]:
            alone.observe(torch.tensor(d), torch.tensor(g))
    mp.start_processes(_guard_on_rank, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    stopped = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(s is not None and "diverged at step 3" in s for s in stopped), stopped


def test_cgan_without_labels_in_the_data_is_refused():
    with pytest.raises(DataError, match="integer labels"):
        make_task(TINY["cgan"](), label_type=None)
    with pytest.raises(DataError, match="square images of side"):
        make_task(TINY["dcgan"](), shape=(1, 12, 12))


# --- losses and networks ---------------------------------------------------------------------------


def test_minimax_and_non_saturating_losses_for_known_logits():
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    fake = torch.tensor([2.0, -1.0])
    ns = gans.generator_loss(fake, "non_saturating").item()
    mm = gans.generator_loss(fake, "minimax").item()
    assert ns == pytest.approx(np.mean([-math.log(sig(2.0)), -math.log(sig(-1.0))]), rel=1e-6)
    assert mm == pytest.approx(np.mean([math.log(1 - sig(2.0)), math.log(1 - sig(-1.0))]), rel=1e-6)
    real = torch.tensor([3.0, 0.5])
    d = gans.discriminator_loss(real, fake).item()
    expect = -np.mean([math.log(sig(3.0)), math.log(sig(0.5))]) - np.mean([math.log(1 - sig(2.0)),
                                                                          math.log(1 - sig(-1.0))])
    assert d == pytest.approx(expect, rel=1e-6)
    # where D cannot tell (D = 1/2): d_loss = log 4, non-saturating = log 2, minimax = -log 2
    zero = torch.zeros(4)
    assert gans.discriminator_loss(zero, zero).item() == pytest.approx(math.log(4))
    assert gans.generator_loss(zero).item() == pytest.approx(math.log(2))
    assert gans.generator_loss(zero, "minimax").item() == pytest.approx(-math.log(2))


def test_conditional_generators_output_depends_on_the_label():
    for cfg, cls in ((gans.DCGANConfig((1, 16, 16), nz=8, ngf=4, ndf=4, num_classes=3, embed_dim=4),
                      gans.DCGANGenerator),
                     (gans.GANConfig((1, 16, 16), nz=8, hidden=(16,), num_classes=3, embed_dim=4),
                      gans.MLPGenerator)):
        torch.manual_seed(0)
        G = cls(cfg).eval()
        z = torch.randn(4, 8)
        a, b = G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.full((4,), 2))
        assert a.shape == (4, 1, 16, 16) and not torch.allclose(a, b)
        with pytest.raises(ValueError, match="needs a label"):
            G(z)


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (32, 4), (64, 3)])
def test_dcgan_shapes_for_sizes_and_channel_counts(size, channels):
    cfg = gans.DCGANConfig((channels, size, size), nz=8, ngf=2, ndf=2)
    x = gans.DCGANGenerator(cfg)(torch.randn(2, 8))
    assert x.shape == (2, channels, size, size) and x.abs().max() <= 1
    assert gans.DCGANDiscriminator(cfg)(x).shape == (2,)


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    cfg = gans.DCGANConfig((3, 32, 32), nz=100, ngf=64, ndf=64)
    for net in (gans.DCGANGenerator(cfg), gans.DCGANDiscriminator(cfg)):
        convs = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                      torch.nn.ConvTranspose2d))])
        assert abs(convs.mean().item()) < 1e-3 and convs.std().item() == pytest.approx(0.02, rel=0.02)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        scale = torch.cat([m.weight for m in bns]).detach()
        assert scale.mean().item() == pytest.approx(1.0, abs=0.01)
        assert scale.std().item() == pytest.approx(0.02, rel=0.2)
        assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)


def test_laplacian_pyramid_inverts_and_the_sampler_returns_every_level():
    x = torch.rand(2, 3, 16, 16)
    bands, lowpass = gans.laplacian_pyramid(x, 3)
    assert [b.shape[-1] for b in bands] == [16, 8, 4] and [lp.shape[-1] for lp in lowpass] == [16, 8]
    assert torch.allclose(gans.reconstruct_from_pyramid(bands), x, atol=1e-6)
    G = gans.LapGANGenerator(gans.LapGANConfig((3, 16, 16), levels=3, nz=8, hidden=(16,), ngf=4, ndf=4))
    image, residuals = G.sample(5, generator=torch.Generator().manual_seed(0), return_residuals=True)
    assert image.shape == (5, 3, 16, 16)
    assert [tuple(r.shape) for r in residuals] == [(5, 3, 16, 16), (5, 3, 8, 8)]
    # coarse to fine: the image is the coarsest sample, upsampled and added to each residual in turn
    coarsest = G.coarse.sample(5, generator=torch.Generator().manual_seed(0))  # the same z
    expect = gans.upsample(gans.upsample(coarsest) + residuals[1]) + residuals[0]
    assert torch.allclose(image, expect, atol=1e-5)
    D = gans.LapGANDiscriminator(G.config)
    assert D(bands, lowpass).shape == (2, 3)


@pytest.mark.parametrize("scale", [2, 4])
def test_srgan_output_is_exactly_scale_times_the_input(scale):
    cfg = gans.SRGANConfig((3, 32, 32), scale=scale, channels=4, num_blocks=2, ndf=2)
    G = gans.SRGANGenerator(cfg)
    sr = G(torch.rand(2, 3, 32 // scale, 32 // scale) * 2 - 1)
    assert sr.shape == (2, 3, 32, 32)
    assert G(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5 * scale, 7 * scale)  # fully convolutional
    assert gans.SRGANDiscriminator(cfg)(sr).shape == (2,)


# --- metrics ---------------------------------------------------------------------------------------


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    a = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    d1 = metrics.frechet_distance(a, a + 0.5)
    d2 = metrics.frechet_distance(a, a + 1.0)
    # equal covariances: the distance is exactly ||mean shift||^2
    assert d1 == pytest.approx(8 * 0.25, rel=1e-4) and d2 == pytest.approx(8 * 1.0, rel=1e-4)
    b = np.random.default_rng(1).normal(size=(500, 8)) * 2
    assert metrics.frechet_distance(a, b) > 1


def test_frechet_distance_is_exact_for_singular_covariances():
    """Dead features and a generator collapsed onto one image give singular covariances; the distance
    must still be the closed form, not a value biased by an offset."""
    rng = np.random.default_rng(0)
    a = np.c_[rng.normal(size=(300, 6)), np.zeros((300, 2))]  # two dead features
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    s_a = np.cov(a, rowvar=False)
    collapsed = np.tile(rng.normal(size=(1, 8)), (300, 1))  # S_b = 0: d = ||mu_a - mu_b||^2 + Tr S_a
    expected = np.sum((a.mean(0) - collapsed[0]) ** 2) + np.trace(s_a)
    assert metrics.frechet_distance(a, collapsed) == pytest.approx(expected, rel=1e-9)
    # S_b = c^2 S_a (b a scaled copy): Tr (S_a S_b)^(1/2) = c Tr S_a, so d = (1 - c)^2 Tr S_a + the means' term
    b = 3 * a
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + (1 - 3) ** 2 * np.trace(s_a)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.frechet_distance(a[:1], a)


def test_psnr_and_ssim():
    x = torch.rand(3, 3, 16, 16)
    assert (metrics.psnr(x, x) == metrics.PSNR_CAP_DB).all()  # identical: capped, so means stay finite
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    shifted = (x + 0.1).clamp(max=10)  # MSE 0.01 -> 20 dB
    assert metrics.psnr(x, shifted) == pytest.approx(torch.full((3,), 20.0, dtype=torch.float64), abs=1e-4)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    s = metrics.ssim(x, noisy)
    assert (s < 0.9).all() and (s > -1).all()
    assert (metrics.ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)) > s).all()


def test_the_feature_classifier_trains_on_the_smallest_images_with_a_last_batch_of_one():
    model = metrics.train_classifier(torch.rand(129, 1, 4, 4), epochs=1, batch_size=128, min_steps=1)
    assert metrics.classifier_features(model, torch.rand(3, 1, 4, 4)).shape == (3, 128)


def test_self_supervised_targets_keep_a_non_square_images_shape():
    x = torch.arange(2 * 8 * 12, dtype=torch.float32).view(2, 1, 8, 12).repeat(20, 1, 1, 1)
    out, k = metrics.rotation_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and set(k.tolist()) == {0, 1, 2, 3}
    for i, r in enumerate(k.tolist()):  # each target names a distinct transform
        assert torch.equal(out[i], [x[i], x[i].flip(2), x[i].flip(1, 2), x[i].flip(1)][r])
    square = torch.rand(8, 1, 6, 6)
    turned, k = metrics.rotation_batch(square, torch.Generator().manual_seed(1))
    assert all(torch.equal(turned[i], torch.rot90(square[i], r, dims=(1, 2))) for i, r in enumerate(k.tolist()))


def test_feature_classifier_learns_blob_positions():
    rows, labels = blob_images(256, seed=0)
    x = torch.tensor(rows).view(-1, 1, 16, 16)
    clf = metrics.train_classifier(x[:192], torch.tensor(labels[:192]), epochs=4, batch_size=32, width=8)
    assert metrics.classifier_accuracy(clf, x[192:], torch.tensor(labels[192:])) > 0.9
    assert metrics.classifier_features(clf, x[:5]).shape == (5, 32)


# --- evaluation and export -------------------------------------------------------------------------


def write_splits(directory, n=(96, 16, 48)):
    for split, rows, seed in zip(("train", "val", "test"), n, (0, 1, 2)):
        x, y = blob_images(rows, seed=seed)
        pq.write_table(to_arrow(x, y), directory / f"{split}.parquet")


def test_cgan_evaluation_export_and_sampling(tmp_path):
    write_splits(tmp_path)
    torch.manual_seed(0)
    task = make_task(TINY["cgan"]())
    models = task.build_models()
    opts = task.build_optimizers(models)
    for i in range(3):
        task.train_step(models, opts, batch_of(seed=i))
    ev = task.evaluate({k: m.eval() for k, m in models.items()}, tmp_path)
    m = ev.metrics
    assert {"frechet_distance", "frechet_distance_train_vs_test", "conditional_accuracy",
            "classifier_test_accuracy"} <= set(m)
    assert m["fid_samples"] == 48 and 0 <= m["conditional_accuracy"] <= 1
    # three steps of training are far from the data: worse than real train images against the test split
    assert m["frechet_distance"] > m["frechet_distance_train_vs_test"] >= 0
    sampler = GeneratorSampler.load(task.export(tmp_path / "model", models, ev))
    grid = sampler.sample_grid(16, label=1)
    assert grid.shape == (2 * 16, 8 * 16) and grid.dtype == np.uint8


def test_frechet_figures_average_draws_and_give_every_model_on_a_split_the_same_floor(tmp_path):
    write_splits(tmp_path)
    clf = metrics.FeatureClassifier(1, 2, 8).eval()
    x_test, y_test = blob_images(48, seed=2)  # the test split's rows, as written
    asked = []

    def copies(draw, n, labels):  # a "generator" returning the split's own rows: distance 0 in every draw
        asked.append((draw, n, sorted(labels.tolist())))
        return torch.tensor(x_test).view(48, 1, 16, 16)

    def blank(draw, n, labels):
        return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(draw)) * 0.1

    same, _ = frechet_figures(clf, tmp_path, "test", (1, 16, 16), copies, draws=4)
    far, (_, labels) = frechet_figures(clf, tmp_path, "test", (1, 16, 16), blank, draws=4)
    # each draw is asked for N images with the labels of the N rows (a cGAN's class mix), draws 0..3
    assert asked == [(k, 48, sorted(y_test.tolist())) for k in range(4)] and sorted(labels) == sorted(y_test)
    assert same["frechet_distance"] == pytest.approx(0, abs=1e-6) and same["fid_draws"] == 4
    assert far["frechet_distance"] > far["frechet_distance_train_vs_test"] > 0
    # the floor is the split's, not the model's: every model judged on it is divided by the same number
    assert same["frechet_distance_train_vs_test"] == far["frechet_distance_train_vs_test"]
    one, _ = frechet_figures(clf, tmp_path, "test", (1, 16, 16), blank, draws=1)
    assert one["frechet_distance_train_vs_test"] != far["frechet_distance_train_vs_test"]  # draws are averaged


def test_srgan_evaluation_compares_with_bicubic_and_exports_an_upscaler(tmp_path):
    write_splits(tmp_path)
    task = make_task(TINY["srgan"]())
    models = task.build_models()
    ev = task.evaluate({k: m.eval() for k, m in models.items()}, tmp_path)
    assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(ev.metrics)
    assert ev.metrics["bicubic_psnr"] > 15 and "super_resolution" in ev.figures
    sampler = Upscaler.load(task.export(tmp_path / "model", models, ev))
    assert sampler.upscale(np.random.rand(2, 1, 8, 8).astype(np.float32)).shape == (2, 1, 16, 16)
