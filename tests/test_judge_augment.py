"""The judge's training augmentation (deepgen.metrics.images.augment): shifts and pixel noise, so that faint
noise in a generated image does not change what the judge reads."""

import torch
from test_gans import blob_images

from deepgen.metrics import images as metrics
from deepgen.metrics import judge

torch.set_num_threads(1)


def test_augment_without_noise_or_shift_is_the_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(metrics.augment(x, 0.0, 0, torch.Generator().manual_seed(0)), x)


def test_augment_translates_each_image_by_at_most_shift_pixels_and_is_seeded():
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 5, 6] = 1.0  # one bright pixel, away from the borders
    out = metrics.augment(x, 0.0, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # moved, not cut
    where = [torch.nonzero(img[0])[0].tolist() for img in out]
    assert all(abs(r - 5) <= 2 and abs(c - 6) <= 2 for r, c in where)
    assert len({tuple(w) for w in where}) > 1  # not every image moved alike
    assert torch.equal(out, metrics.augment(x, 0.0, 2, torch.Generator().manual_seed(0)))


def test_augment_noise_stays_in_the_unit_range_and_is_at_most_the_asked_strength():
    x = torch.full((64, 1, 16, 16), 0.5)
    out = metrics.augment(x, 0.1, 0, torch.Generator().manual_seed(0))
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)
    stds = (out - x).flatten(1).std(1)
    assert stds.max() < 0.12 and stds.min() < stds.max() / 2  # sigma ~ U(0, 0.1) per image


def test_a_classifier_trained_with_noise_reads_noisy_images_as_it_reads_clean_ones():
    """(Trained the same way without the augmentation, it read these noisy blobs at 0.87, the clean ones at 1.0.)"""
    rows, labels = blob_images(512, seed=0)
    x, y = torch.tensor(rows).view(-1, 1, 16, 16), torch.tensor(labels)
    clf = metrics.train_classifier(x[:384], y[:384], num_classes=2, epochs=40, width=8, batch_size=64,
                                   noise=judge.JUDGE_NOISE, shift=1)
    test, truth = x[384:], y[384:]
    noisy = (test + 0.1 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    clean_acc = metrics.classifier_accuracy(clf, test, truth)
    assert clean_acc >= 0.95 and metrics.classifier_accuracy(clf, noisy, truth) >= clean_acc - 0.03


def test_the_augmentation_is_part_of_the_judge_protocol_so_a_cached_judge_without_it_is_not_reused():
    assert judge.protocol()["noise"] == judge.JUDGE_NOISE > 0 and judge.protocol()["shift"] == judge.JUDGE_SHIFT > 0
    assert int(judge.JUDGE_SHIFT * 32) == 2 and int(judge.JUDGE_SHIFT * 8) == 0


def test_a_deeper_classifier_keeps_the_feature_space_size_and_depth_1_is_the_original_net():
    shallow, deep = metrics.FeatureClassifier(1, 10, 8), metrics.FeatureClassifier(1, 10, 8, depth=2)
    convs = lambda m: [k for k, v in m.state_dict().items() if k.endswith("weight") and v.dim() == 4]  # noqa: E731
    assert convs(shallow) == ["body.0.weight", "body.3.weight", "body.6.weight"]  # SRGAN's content maps, old judges
    assert len(convs(deep)) == 6
    x = torch.rand(3, 1, 32, 32)
    assert shallow.features(x).shape == deep.features(x).shape == (3, 32)
    assert deep.feature_maps(x).shape == (3, 32, 8, 8)  # still two stride-2 stages


def test_the_judges_depth_is_part_of_its_protocol_and_a_cached_judge_loads_at_the_depth_it_was_saved(
        tmp_path, monkeypatch):
    from deepgen.config import DataSpec
    from deepgen.data.prepare import prepare_dataset

    manifest, _ = prepare_dataset(DataSpec.model_validate({"source": {"kind": "digits"}}), tmp_path / "data",
                                  log=lambda m: None)
    assert {"depth", "min_steps"} <= set(judge.protocol())
    shipped_path = judge.judge_path(tmp_path / "data", manifest.fingerprint)
    other = 1 if judge.JUDGE_DEPTH != 1 else 2  # the protocol-4 net beside the shipped one
    monkeypatch.setattr(judge, "JUDGE_DEPTH", other)
    monkeypatch.setattr(judge, "JUDGE_STEPS", 5)  # a few updates: this is about the file, not the accuracy
    assert judge.judge_path(tmp_path / "data", manifest.fingerprint) != shipped_path  # not the shipped depth's file
    trained = judge.load_or_train(tmp_path / "data", manifest.fingerprint, manifest.shape)
    loaded = judge.load_or_train(tmp_path / "data", manifest.fingerprint, manifest.shape)
    assert trained.path == loaded.path and loaded.classifier.depth == trained.classifier.depth == other
    x = torch.rand(4, *manifest.shape)
    assert torch.allclose(trained.classifier.eval()(x), loaded.classifier(x), atol=1e-6)
