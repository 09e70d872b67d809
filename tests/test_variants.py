"""Autoencoder variants: each does what its paper claims, on small generated data, and each trains, scores
and exports through the same task and loop as the undercomplete autoencoder.

The behaviour tests train tiny MLPs full-batch for a few hundred steps; the thresholds leave room for other
seeds (the numbers seen with the seeds here are in the comments).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bar_images

from deepgen.config import PipelineSpec
from deepgen.errors import SpecError
from deepgen.models import build_autoencoder
from deepgen.models.autoencoders import AutoencoderConfig, DenoisingConfig, OvercompleteConfig, SparseConfig
from deepgen.models.vae import VAE, VAEConfig

D = 32  # features of the generated table rows
QUICKSTART = Path(__file__).parent.parent / "pipelines" / "quickstart.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; more only contend for the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def low_rank_rows(n: int, basis: torch.Tensor, g: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """(n, D) rows near a 3-dim affine subspace: 0.5 + 0.15 z @ basis + noise * eps, clamped to [0, 1]."""
    z = torch.randn(n, len(basis), generator=g)  # (n, 3)
    return (0.5 + 0.15 * z @ basis + noise * torch.randn(n, D, generator=g)).clamp(0, 1)


def fit(model, x: torch.Tensor, steps: int, lr: float = 1e-2, weight_decay: float = 0.0, batch: int | None = None):
    """AdamW on x (full batch, or random batches of `batch` rows); returns the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        xb = x if batch is None else x[torch.randint(0, len(x), (batch,), generator=g)]
        loss = model.loss(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# --- overcomplete ----------------------------------------------------------------------------------


def test_overcomplete_copies_without_regularisation_and_separates_anomalies_with_it():
    # Normal rows are 3-dim structure plus noise in every direction (std 0.1), so a model that copies its
    # input has seen every direction and reconstructs anything; one that learned the structure does not.
    g = torch.Generator().manual_seed(0)
    normal_basis, other_basis = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)
    x_train = low_rank_rows(512, normal_basis, g, noise=0.1)
    x_normal = low_rank_rows(256, normal_basis, g, noise=0.1)
    anomalies = {"other structure": low_rank_rows(256, other_basis, g, noise=0.1),
                 "uniform noise": torch.rand(256, D, generator=g)}
    gaps = {}  # regularised? -> anomaly kind -> mean score of anomalies / mean score of held-out normal rows
    for dropout, weight_decay in ((0.0, 0.0), (0.5, 1e-2)):
        torch.manual_seed(0)
        config = OvercompleteConfig(input_shape=(D,), latent_dim=2 * D, hidden=(), loss="mse", dropout=dropout)
        model = fit(build_autoencoder("overcomplete_autoencoder", config), x_train, 400, weight_decay=weight_decay)
        with torch.no_grad():
            normal = model.anomaly_score(x_normal).mean()
            gaps[dropout > 0] = {k: (model.anomaly_score(a).mean() / normal).item() for k, a in anomalies.items()}
    for kind in anomalies:
        # seen: unregularised 1.3 (other structure), 1.9 (noise); regularised 4.0, 7.5. Dropout does nearly
        # all of it: weight decay 1e-2 alone leaves the gaps at 1.3 and 1.9, dropout alone gives 4.0 and 7.5.
        assert gaps[False][kind] < 3, f"unregularised gap on {kind}: {gaps}"
        assert gaps[True][kind] > 2 * gaps[False][kind], f"regularisation should widen the gap on {kind}: {gaps}"


def test_overcomplete_refuses_a_code_or_layer_narrower_than_the_input():
    with pytest.raises(ValueError, match=r"code \(8\) must be wider than the input \(32\)"):
        build_autoencoder("overcomplete_autoencoder", OvercompleteConfig(input_shape=(D,), latent_dim=8, hidden=()))
    with pytest.raises(ValueError, match="no layer before it narrower"):
        build_autoencoder("overcomplete_autoencoder", OvercompleteConfig(input_shape=(D,), latent_dim=64, hidden=(16,)))


# --- sparse ----------------------------------------------------------------------------------------


def _mean_code_activations(penalty: str, weights: dict) -> list[torch.Tensor]:
    """Per-unit mean activations rho_hat (latent,) on held-out rows, one per trained penalty weight."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, D, generator=g)
    x_train, x_test = low_rank_rows(512, basis, g), low_rank_rows(256, basis, g)
    out = []
    for weight in weights:
        torch.manual_seed(0)
        config = SparseConfig(input_shape=(D,), latent_dim=16, hidden=(32,), penalty=penalty, rho=0.05,
                              **{weights[weight]: weight})
        model = fit(build_autoencoder("sparse_autoencoder", config), x_train, 300)
        with torch.no_grad():
            out.append(model.encode(x_test).mean(0))
    return out


def test_sparse_kl_penalty_pulls_each_units_mean_activation_to_rho():
    rho_hats = _mean_code_activations("kl", {0.0: "beta", 1e-3: "beta", 1.0: "beta"})
    deviation = [(r - 0.05).abs().mean().item() for r in rho_hats]  # mean over units of |rho_hat_j - rho|
    # seen: 0.62, 0.025, 0.0008
    assert deviation[0] > deviation[1] > deviation[2], deviation
    assert deviation[2] < 0.005, deviation


def test_sparse_l1_penalty_lowers_code_activity():
    rho_hats = _mean_code_activations("l1", {0.0: "l1_weight", 1e-3: "l1_weight", 1e-1: "l1_weight"})
    activity = [r.mean().item() for r in rho_hats]  # seen: 0.67, 0.075, 1e-6
    assert activity[0] > activity[1] > activity[2], activity
    assert activity[2] < 0.01, activity


# --- denoising -------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise, max_ratio", [("mask", 0.75), ("gaussian", 0.95)])
def test_denoising_reconstructs_corrupted_rows_closer_to_the_clean_rows(noise, max_ratio):
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, D, generator=g)
    x_train, x_test = low_rank_rows(512, basis, g), low_rank_rows(256, basis, g)
    shared = dict(input_shape=(D,), latent_dim=8, hidden=(32,))
    torch.manual_seed(0)
    dae = fit(build_autoencoder("denoising_autoencoder", DenoisingConfig(
        **shared, noise=noise, mask_fraction=0.5, noise_std=0.2)), x_train, 300)
    ae = fit(build_autoencoder("dense_autoencoder", AutoencoderConfig(**shared)), x_train, 300)  # clean data
    torch.manual_seed(1)
    x_corrupted = dae.corrupt(x_test)  # held-out rows, corrupted as in training
    with torch.no_grad():
        errors = [(m.reconstruct(x_corrupted) - x_test).pow(2).mean().item() for m in (dae, ae)]
    # seen: mask 0.017 vs 0.026 (ratio 0.66); gaussian 0.0064 vs 0.0074 (ratio 0.87)
    assert errors[0] < max_ratio * errors[1], errors


def test_mask_noise_zeroes_the_configured_share_of_inputs():
    dae = build_autoencoder("denoising_autoencoder", DenoisingConfig(input_shape=(D,), mask_fraction=0.3))
    torch.manual_seed(0)
    zeroed = (dae.corrupt(torch.ones(500, D)) == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.01)


def test_the_task_corrupts_in_training_only(tmp_path):
    from deepgen.tasks.autoencoder import AutoencoderTask

    spec = quickstart_spec(tmp_path, "denoising_autoencoder")
    task = AutoencoderTask(spec, _manifest([1, 8, 8]))
    models = task.build_models()
    seen = []
    corrupt = models["model"].corrupt
    models["model"].corrupt = lambda x: seen.append(x) or corrupt(x)
    batch = {"features": torch.rand(16, 64)}
    train_terms = task.train_step(models, task.build_optimizers(models), batch)
    assert len(seen) == 1 and set(train_terms) == {"loss"}
    models["model"].eval()
    first, second = task.eval_step(models, batch), task.eval_step(models, batch)
    assert len(seen) == 1  # no corruption outside training
    assert first["loss"] == second["loss"]


# --- VAE -------------------------------------------------------------------------------------------


def bars(n: int, seed: int, anomaly_fraction: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """8x8 images in [0, 1] as (n, 64) rows: horizontal bars are normal, vertical bars (label 1) anomalous."""
    x, y = bar_images(n, seed=seed, anomaly_fraction=anomaly_fraction)
    return torch.tensor(x.reshape(n, -1) / 255.0, dtype=torch.float32), y


def horizontal_share(images: torch.Tensor) -> float:
    """Share of 8x8 images whose brightest row is brighter than their brightest column."""
    img = images.view(-1, 8, 8)
    return (img.mean(2).max(1).values > img.mean(1).max(1).values).float().mean().item()


def test_vae_kl_is_positive_and_matches_the_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    vae = build_autoencoder("vae", VAEConfig(input_shape=(D,), latent_dim=4, hidden=(16,))).train()
    out = vae(torch.rand(8, D))
    kl = VAE.kl(out)  # (B,)
    q = torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar))
    p = torch.distributions.Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu))
    assert (kl > 0).all()
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)


def test_vae_reparameterises_in_training_and_decodes_the_mean_in_eval():
    torch.manual_seed(0)
    vae = build_autoencoder("vae", VAEConfig(input_shape=(D,), latent_dim=4, hidden=(16,)))
    x = torch.rand(8, D)
    out = vae.train()(x)
    assert not torch.equal(out.code, out.mu)  # h = mu + sigma * eps
    vae.reconstruction_error(x, out).sum().backward()  # the NLL alone reaches logvar through h
    assert vae.to_logvar.weight.grad.abs().sum() > 0
    out = vae.eval()(x)
    assert torch.equal(out.code, out.mu) and torch.equal(vae.anomaly_score(x), vae.anomaly_score(x))


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_vae_training_lowers_negative_elbo_and_prior_samples_look_like_the_data(decoder):
    x_train, _ = bars(512, seed=1)
    x_test, _ = bars(256, seed=2)
    torch.manual_seed(0)
    vae = build_autoencoder("vae", VAEConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(64,), decoder=decoder))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = vae.eval().objective(x_test, vae(x_test))["loss"].item()
    untrained_share = horizontal_share(vae.sample(256, g))
    fit(vae, x_train, 300, lr=3e-3, batch=128)
    with torch.no_grad():
        after = vae.objective(x_test, vae(x_test))
    samples = vae.sample(256, g)
    # seen: -ELBO 44 -> 19 (bernoulli), 65 -> 3 (gaussian); horizontal share 0.17 -> 1.0
    assert after["loss"].item() < 0.6 * before, (before, after)
    assert after["kl"].item() > 0
    assert samples.shape == (256, 64) and samples.min() >= 0 and samples.max() <= 1
    assert horizontal_share(samples) >= 0.9 > untrained_share


@pytest.mark.parametrize("score", ["elbo", "reconstruction"])
def test_vae_scores_flag_the_anomalous_bars(score):
    from sklearn.metrics import roc_auc_score

    x_train, _ = bars(512, seed=1)
    x_test, y_test = bars(256, seed=2, anomaly_fraction=0.3)
    torch.manual_seed(0)
    vae = fit(build_autoencoder("vae", VAEConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(64,), score=score)),
              x_train, 300, lr=3e-3, batch=128)
    with torch.no_grad():
        scores = vae.anomaly_score(x_test)
        out = vae(x_test)
        nll, kl = vae.reconstruction_error(x_test, out), VAE.kl(out)
    assert torch.allclose(scores, nll + kl if score == "elbo" else nll)
    assert roc_auc_score(y_test, scores.numpy()) > 0.95


# --- specs, the task and export --------------------------------------------------------------------


def quickstart_spec(tmp_path: Path, kind: str, *overrides: str) -> PipelineSpec:
    return PipelineSpec.from_yaml(QUICKSTART, [f"model.kind={kind}", f"tracking.runs_dir={tmp_path / 'runs'}",
                                               *overrides])


def _manifest(shape: list[int]):
    from deepgen.data.manifest import Manifest, Scaler

    return Manifest(fingerprint="x", source_fingerprint="x", shape=shape, rows={"train": 1}, label_type=None,
                    scaler=Scaler(divisor=16.0), feature_names=None, arrow_schema={})


def test_quickstart_runs_every_variant_by_kind_alone(tmp_path):
    for kind in ("sparse_autoencoder", "denoising_autoencoder", "vae"):
        spec = quickstart_spec(tmp_path, kind)
        assert spec.model.kind == kind and spec.model.hidden == [256] and spec.model.latent_dim == 32
    # quickstart's 32-unit code contradicts an overcomplete model, so it names its own widths
    spec = quickstart_spec(tmp_path, "overcomplete_autoencoder", "model.hidden=[]", "model.latent_dim=null")
    from deepgen.tasks.autoencoder import autoencoder_config

    assert autoencoder_config(spec.model, [1, 8, 8]).latent_dim == 128  # twice the input's 64 features


def test_vae_decoder_and_loss_must_agree(tmp_path):
    assert quickstart_spec(tmp_path, "vae", "model.loss=mse").model.likelihood(True) == "gaussian"
    assert quickstart_spec(tmp_path, "vae", "model.loss=null", "model.decoder=gaussian").model.likelihood(True) \
        == "gaussian"
    with pytest.raises(SpecError, match="decoder gaussian contradicts loss bce"):
        quickstart_spec(tmp_path, "vae", "model.loss=bce", "model.decoder=gaussian")


@pytest.mark.parametrize("kind", ["overcomplete_autoencoder", "sparse_autoencoder", "denoising_autoencoder", "vae"])
def test_conv_architecture_builds_from_the_spec_and_rebuilds_from_its_exported_config(tmp_path, kind):
    from deepgen.tasks.autoencoder import autoencoder_config

    spec = quickstart_spec(tmp_path, kind, "model.architecture=conv", "model.channels=[8, 16]",
                           *(["model.hidden=[]", "model.latent_dim=null"] if kind.startswith("over") else []))
    config = autoencoder_config(spec.model, [1, 8, 8])
    assert config.architecture == "conv" and config.hidden == (8, 16)
    model = build_autoencoder(kind, config).eval()
    twin = build_autoencoder(kind, asdict(config))  # as AnomalyScorer.load rebuilds it from JSON
    twin.load_state_dict(model.state_dict())
    x = torch.rand(5, 64)
    with torch.no_grad():
        assert torch.equal(model.anomaly_score(x), twin.eval().anomaly_score(x))
        assert model(x).logits.shape == (5, 64)


@pytest.mark.parametrize("kind", ["overcomplete_autoencoder", "sparse_autoencoder", "denoising_autoencoder", "vae"])
def test_every_objective_term_is_float32_under_bf16_autocast(tmp_path, kind):
    from deepgen.tasks.autoencoder import autoencoder_config

    if kind == "vae":
        spec = quickstart_spec(tmp_path, kind, "model.decoder=gaussian", "model.loss=null")
    else:
        spec = quickstart_spec(tmp_path, kind, *(["model.hidden=[]", "model.latent_dim=null"]
                                                 if kind.startswith("over") else []))
    model = build_autoencoder(kind, autoencoder_config(spec.model, [64])).train()
    x = torch.rand(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.objective(x, model(model.corrupt(x)))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values()), terms


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from deepgen.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("variants")
    spec = quickstart_spec(root, "dense_autoencoder")
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    return root, manifest


@pytest.mark.parametrize("kind, overrides, terms", [
    ("overcomplete_autoencoder", ["model.hidden=[]", "model.latent_dim=null"], set()),
    ("sparse_autoencoder", [], {"val_recon", "val_sparsity"}),
    ("denoising_autoencoder", [], set()),
    ("vae", [], {"val_recon", "val_kl"}),
])
def test_each_variant_trains_through_the_loop_and_exports_without_pickle(digits, kind, overrides, terms):
    from deepgen.tasks import Evaluation, build_task
    from deepgen.tasks.autoencoder import AnomalyScorer
    from deepgen.train.env import LocalEnv
    from deepgen.train.loop import load_model_weights, train_loop

    root, manifest = digits
    spec = quickstart_spec(root, kind, "train.epochs=3", "train.lr=0.01", *overrides)
    env = LocalEnv(spec.data_dir, spec.anomaly, root / kind, keep=1, seed=0)
    history = train_loop(spec, manifest, env)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert terms <= set(history[-1])

    task = build_task(spec, manifest)
    models = load_model_weights(env.latest_checkpoint(), task)
    dest = task.export(root / f"{kind}-export", models, Evaluation({}, registry_tags={"threshold": 1.0}))
    scorer = AnomalyScorer.load(dest)
    assert type(scorer.model) is type(models["model"]) and scorer.model.config == models["model"].config
    x = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    # the exported folder scores by the pipeline's score (auto: smoothed for these images), as the trained
    # model does with the statistics fitted on its training rows
    assert scorer.scorer.method == task.score == "smoothed"
    fitted = task.fit_scorer(models["model"], spec.data_dir)
    np.testing.assert_array_equal(scorer.score(x), fitted.score(models["model"], x))


def test_vae_figures_show_samples_from_the_prior(digits):
    from deepgen.tasks import build_task

    root, manifest = digits
    spec = quickstart_spec(root, "vae")
    task = build_task(spec, manifest)
    ev = task.evaluate(task.build_models(), spec.data_dir)
    assert "prior_samples" in ev.figures and "reconstructions" in ev.figures
