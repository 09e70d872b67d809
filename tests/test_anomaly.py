import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from deepgen.anomaly import applied_spec, calibrate_threshold, evaluate_scores, pot_threshold, threshold_tags
from deepgen.config import F1Threshold, FprThreshold, PercentileThreshold, PipelineSpec, PotThreshold
from deepgen.errors import DataError, SpecError


def test_threshold_at_target_fpr_flags_that_share_of_normal_rows():
    normal = np.random.default_rng(0).normal(size=10_000)
    t = calibrate_threshold(normal, None, FprThreshold(target_fpr=0.05))
    assert (normal > t).mean() == pytest.approx(0.05, abs=0.002)
    assert (normal > t).mean() <= 0.05  # never above the target on the calibration rows


@pytest.mark.parametrize("n", [20, 100, 101, 1000])
def test_the_fpr_threshold_leaves_the_target_share_above_it_on_a_small_validation_split(n):
    normal = np.random.default_rng(n).random(n)
    for fpr in (0.05, 0.29):
        above = int((normal > calibrate_threshold(normal, None, FprThreshold(target_fpr=fpr))).sum())
        assert above == int(np.floor(round(n * fpr, 9)))  # 1 of 20 at 5%, not 0: the target, not below it
    assert calibrate_threshold(np.ones(50), None, FprThreshold(target_fpr=0.1)) == 1.0  # all tied: none above


def test_percentile_threshold():
    assert calibrate_threshold(np.arange(101.0), None, PercentileThreshold(percentile=90)) == 90.0


def test_normal_only_methods_ignore_validation_anomalies():
    normal = np.arange(101.0)
    scores = np.concatenate([normal, [1e6, 2e6]])
    truth = np.r_[np.zeros(101, bool), True, True]
    assert calibrate_threshold(scores, truth, PercentileThreshold(percentile=90)) == 90.0


def test_no_normal_rows_is_an_error():
    with pytest.raises(DataError, match="no normal rows"):
        calibrate_threshold(np.array([]), None, FprThreshold())


def test_metrics_at_the_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.8])
    truth = np.array([0, 0, 0, 1, 1, 1], bool)
    m = evaluate_scores(scores, truth, threshold=0.35)
    # flagged: 0.9, 0.4, 0.8 -> tp 3, fp 0
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == pytest.approx(1.0)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert m["pr_auc"] == pytest.approx(average_precision_score(truth, scores))
    m = evaluate_scores(scores, truth, threshold=0.5)  # flagged: 0.9, 0.8
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3) and m["fpr"] == 0.0


def test_single_class_test_split_warns_and_omits_ranking_metrics():
    with pytest.warns(UserWarning, match="only one class"):
        m = evaluate_scores(np.array([0.1, 0.5]), np.array([False, False]), 0.3)
    assert "roc_auc" not in m and m["fpr"] == 0.5


def _f1(scores, truth, t):
    flagged = scores > t
    tp = (flagged & truth).sum()
    return 2 * tp / (flagged.sum() + truth.sum())


def test_f1_threshold_maximises_f1_over_every_cut():
    rng = np.random.default_rng(3)
    truth = rng.random(400) < 0.2
    # overlapping classes, rounded so that ties between scores occur
    scores = np.round(np.where(truth, rng.normal(2, 1, 400), rng.normal(0, 1, 400)), 1)
    t = calibrate_threshold(scores, truth, F1Threshold())
    # brute force: every observed score as threshold, and one below them all (flag every row)
    cuts = np.r_[scores.min() - 1, np.unique(scores)]
    best = max(_f1(scores, truth, c) for c in cuts)
    assert _f1(scores, truth, t) == pytest.approx(best)
    assert evaluate_scores(scores, truth, t)["f1"] == pytest.approx(best)
    assert 0 < (scores > t).mean() < 1  # a real cut here, not a degenerate one


def test_f1_threshold_can_flag_every_row():
    scores, truth = np.array([1.0, 2.0, 3.0]), np.array([True, True, True])
    t = calibrate_threshold(scores, truth, F1Threshold())
    assert (scores > t).all()


def test_f1_without_validation_anomalies_warns_and_uses_the_fpr_default():
    normal = np.random.default_rng(0).normal(size=1000)
    with pytest.warns(UserWarning, match="no anomalous rows.*F1-optimal threshold is undefined.*using fpr"):
        t = calibrate_threshold(normal, np.zeros(1000, bool), F1Threshold())
    assert t == calibrate_threshold(normal, None, FprThreshold())
    assert applied_spec(normal, None, F1Threshold()) == FprThreshold()
    assert threshold_tags(t, applied_spec(normal, None, F1Threshold()))["threshold_method"] == "fpr"


def test_pot_threshold_on_exponential_scores_lands_near_the_true_quantile():
    # Exp(1): P(X > z) = exp(-z), so the true (1 - q) quantile is -ln q (6.91 at q = 1e-3); its tail is
    # exactly GPD with xi = 0, the formula's exponential limit.
    scores = np.random.default_rng(0).exponential(size=20_000)
    spec = PotThreshold(risk=1e-3, initial_quantile=0.9)
    z = calibrate_threshold(scores, None, spec)
    # 6%: the largest error over 20 seeds of this sample size was 5.3%
    assert z == pytest.approx(-np.log(1e-3), rel=0.06)
    assert z > np.quantile(scores, 0.9)  # beyond the initial threshold t = ln 10


def test_pot_threshold_on_a_heavy_tail():
    # Lomax(a): P(X > z) = (1 + z)^-a, a GPD with xi = 1/a; true (1 - q) quantile q^(-1/a) - 1.
    a, q = 4.0, 1e-3
    scores = np.random.default_rng(0).pareto(a, size=20_000)
    z = calibrate_threshold(scores, None, PotThreshold(risk=q))
    assert z == pytest.approx(q ** (-1 / a) - 1, rel=0.15)  # the largest error over 20 seeds was 11%
    assert z > np.quantile(scores, 0.9)


def test_pot_with_too_few_excesses_warns_and_uses_the_empirical_quantile():
    scores = np.arange(50.0)  # 5 scores above the 0.9 quantile
    with pytest.warns(UserWarning, match="only 5 normal validation scores lie above"):
        t = calibrate_threshold(scores, None, PotThreshold(risk=1e-3))
    assert t == 49.0


def test_pot_on_tied_top_scores_warns_and_uses_the_empirical_quantile():
    """Tied largest scores (duplicate rows, saturated errors) give a degenerate tail fit (xi far below -1)
    whose endpoint sits at the tied value: a threshold just below it would flag all of them."""
    normal = np.concatenate([np.random.default_rng(0).random(900), np.ones(100)])
    spec = PotThreshold(risk=1e-3, initial_quantile=0.9)
    with pytest.warns(UserWarning, match=r"puts the threshold below 100 of 1000 .* tied or bounded.*using fpr"):
        t = calibrate_threshold(normal, None, spec)
    assert (normal > t).mean() <= 1e-3
    assert applied_spec(normal, None, spec) == FprThreshold(target_fpr=1e-3)  # what the registry records
    with pytest.raises(DataError, match="tied or bounded"):
        pot_threshold(normal, 1e-3, 0.9)


@pytest.mark.parametrize("threshold", [
    {"method": "fpr", "target_fpr": 0.01},
    {"method": "percentile", "percentile": 99.0},
    {"method": "f1"},
    {"method": "pot", "risk": 1e-4, "initial_quantile": 0.98},
])
def test_threshold_spec_round_trips_through_pipeline_validation(threshold):
    raw = {"name": "t", "data": {"source": {"kind": "digits"}}, "model": {"kind": "dense_autoencoder"},
           "anomaly": {"normal_labels": [0], "threshold": threshold}, "registry": {"model_name": "m"}}
    spec = PipelineSpec.validate_dict(raw)
    assert spec.anomaly.threshold.model_dump() == threshold
    again = PipelineSpec.validate_dict(spec.model_dump(mode="json"))
    assert again == spec and again.spec_hash() == spec.spec_hash()
    tags = threshold_tags(1.5, spec.anomaly.threshold)
    assert tags["threshold_method"] == threshold["method"]
    assert type(spec.anomaly.threshold).model_validate_json(tags["threshold_params"]) == spec.anomaly.threshold


def test_pot_spec_rejects_a_risk_inside_the_fitted_tail():
    raw = {"name": "t", "data": {"source": {"kind": "digits"}}, "model": {"kind": "dense_autoencoder"},
           "anomaly": {"threshold": {"method": "pot", "risk": 0.05, "initial_quantile": 0.98}},
           "registry": {"model_name": "m"}}
    with pytest.raises(SpecError, match=r"anomaly.threshold: risk must be below 1 - initial_quantile"):
        PipelineSpec.validate_dict(raw)
    with pytest.raises(SpecError, match=r"anomaly.threshold.risk: Input should be greater than 0"):
        PipelineSpec.validate_dict({**raw, "anomaly": {"threshold": {"method": "pot", "risk": 0}}})


def _trained_autoencoder(seed: int = 0):
    """A small dense autoencoder trained briefly on bar images (label 0 normal, 1 the anomaly)."""
    import torch
    from helpers import bar_images

    from deepgen.models.autoencoders import AutoencoderConfig, DenseAutoencoder

    x, y = bar_images(300, seed=seed)
    x = (x.reshape(len(x), -1) / 255).astype(np.float32)
    torch.manual_seed(seed)
    model = DenseAutoencoder(AutoencoderConfig(input_shape=(64,), latent_dim=4, hidden=(32,), loss="mse"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    normal = torch.tensor(x[y == 0])
    for _ in range(200):
        loss = model.loss(normal)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


@pytest.mark.parametrize("method", ["reconstruction", "smoothed", "standardized", "latent", "combined"])
def test_every_score_ranks_anomalies_above_normal_rows_and_survives_a_round_trip(tmp_path, method):
    from sklearn.metrics import roc_auc_score

    from deepgen.scoring import Scorer

    model, x, y = _trained_autoencoder()
    scorer = Scorer.fit(method, model, x[y == 0][:150])
    scores = scorer.score(model, x[150:])
    assert scores.dtype == np.float64 and scores.shape == (150,)
    # these vertical bars are encoded *inside* the normal codes' cloud: the code alone misses them (the latent
    # score ranks them below normal rows, and drags the combined one to 0.8); the errors do not
    if method in ("reconstruction", "smoothed", "standardized"):
        assert roc_auc_score(y[150:] == 1, scores) > 0.9
    scorer.save(tmp_path)
    np.testing.assert_array_equal(Scorer.load(tmp_path).score(model, x[150:]), scores)


def test_standardized_errors_weigh_each_feature_by_its_normal_error():
    """A feature that normal rows get wrong by 0.1 counts as much as one they get wrong by 0.01 ten times
    less: each squared error is divided by its feature's mean on normal rows."""
    from deepgen.scoring import Scorer, parts

    model, x, y = _trained_autoencoder()
    scorer = Scorer.fit("standardized", model, x[y == 0])
    sq = parts(model, x[:5], {"sq_error"})["sq_error"]
    np.testing.assert_allclose(scorer.score(model, x[:5]), (sq / scorer.stats["feature_mse"]).mean(1))
    assert scorer.stats["feature_mse"].min() > 0


def test_latent_distance_is_the_mahalanobis_distance_to_the_normal_codes():
    from deepgen.scoring import Scorer, parts

    model, x, y = _trained_autoencoder()
    scorer = Scorer.fit("latent", model, x[y == 0])
    codes = parts(model, x[y == 0], {"code"})["code"]
    np.testing.assert_allclose(scorer.stats["latent_mean"], codes.mean(0), atol=1e-9)
    d = codes[:3] - scorer.stats["latent_mean"]
    expected = np.sqrt(np.einsum("ni,ij,nj->n", d, scorer.stats["latent_precision"], d))
    np.testing.assert_allclose(scorer.score(model, x[y == 0][:3]), expected, rtol=1e-5)  # float32 codes


def test_combined_adds_the_standardised_log_error_and_log_latent_distance():
    from deepgen.scoring import Scorer

    model, x, y = _trained_autoencoder()
    normal = x[y == 0]
    combined, latent = Scorer.fit("combined", model, normal), Scorer.fit("latent", model, normal)

    def z(train, v):
        return (np.log(v + 1e-12) - np.log(train + 1e-12).mean()) / np.log(train + 1e-12).std()

    error = Scorer.fit("standardized", model, normal).score(model, normal)
    distance = latent.score(model, normal)
    np.testing.assert_allclose(combined.score(model, normal), z(error, error) + z(distance, distance), rtol=1e-6)


def test_the_smoothed_score_blurs_the_residual_of_images_in_proportion_to_their_size():
    """sigma = side / 28: a unit impulse spreads into a Gaussian of sigma 1 px on a 28 x 28 image (its
    centre keeps 1 / (2 pi) of it) and keeps its mass; an 8 x 8 image is barely blurred; a table row not."""
    import torch

    from deepgen.scoring import gaussian_blur

    impulse = torch.zeros(1, 28 * 28, dtype=torch.float64)
    impulse[0, 14 * 28 + 14] = 1
    blurred = gaussian_blur(impulse, (1, 28, 28)).view(28, 28)
    assert blurred.sum().item() == pytest.approx(1.0)
    assert blurred[14, 14].item() == pytest.approx(1 / (2 * np.pi), rel=0.01)
    assert blurred[14, 13].item() == pytest.approx(blurred[14, 14].item() * np.exp(-0.5), rel=1e-6)
    small = torch.rand(4, 64, dtype=torch.float64)
    assert (gaussian_blur(small, (1, 8, 8)) - small).abs().max() < 0.02
    assert torch.equal(gaussian_blur(small, (64,)), small)


def test_an_unknown_score_is_refused():
    from deepgen.scoring import Scorer

    with pytest.raises(ValueError, match="anomaly.score: unknown score 'knn'"):
        Scorer("knn")


@pytest.mark.parametrize("method", ["standardized", "latent", "combined"])
def test_score_statistics_fitted_chunk_by_chunk_equal_those_fitted_on_all_rows(method):
    """What lets evaluation fit them on a training split larger than memory (AutoencoderTask.fit_scorer
    reads it chunk by chunk): the same statistics, so the same scores."""
    from deepgen.scoring import Scorer

    model, x, y = _trained_autoencoder()
    normal = x[y == 0]
    whole = Scorer.fit(method, model, normal)
    chunked = Scorer.fit_chunks(method, model, lambda: iter(np.array_split(normal, 4)))
    assert whole.stats.keys() == chunked.stats.keys()
    for k in whole.stats:
        np.testing.assert_allclose(chunked.stats[k], whole.stats[k], rtol=1e-9, err_msg=k)
    with pytest.raises(ValueError, match="at least 2"):
        Scorer.fit_chunks(method, model, lambda: iter([normal[:1], normal[:0]]))
