"""UNet segmentation on synthetic shapes, trained with the plain loop (the same loop Ray Train runs)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_pipeline

from deepgen.config import DataSpec, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.data.shapes import make_shapes
from deepgen.errors import DataError
from deepgen.models.unet import UNet, UNetConfig
from deepgen.serving import load_exported
from deepgen.tasks import build_task
from deepgen.tasks.segmentation import dice_iou
from deepgen.train.env import LocalEnv
from deepgen.train.loop import load_model_weights, train_loop


def test_shapes_are_reproducible_from_the_seed():
    a, ma = make_shapes(5, 16, seed=3)
    b, mb = make_shapes(5, 16, seed=3)
    c, _ = make_shapes(5, 16, seed=4)
    assert np.array_equal(a, b) and np.array_equal(ma, mb) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and set(np.unique(ma)) <= {0, 1}


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 20, 28), (1, 17, 17)])
def test_unet_keeps_the_image_size(shape):
    model = UNet(UNetConfig(input_shape=shape, base_channels=4, depth=2))
    out = model(torch.rand(2, int(np.prod(shape))))
    assert out.shape == (2, shape[1] * shape[2])


def test_dice_and_iou():
    pred = np.array([[1, 1, 0, 0]], bool)
    true = np.array([[1, 0, 0, 0]], bool)
    assert dice_iou(pred, true) == pytest.approx((2 / 3, 1 / 2))
    assert dice_iou(np.zeros((1, 4)), np.zeros((1, 4))) == (1.0, 1.0)


def test_a_unet_deeper_than_its_images_allow_is_refused_in_one_line(tmp_path):
    spec = PipelineSpec.from_yaml(write_pipeline(
        tmp_path / "seg.yaml", name="seg", data={"source": {"kind": "shapes", "num_images": 40, "size": 24}},
        model={"kind": "unet", "depth": 4}, anomaly={}, registry={"model_name": "seg"}))
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    with pytest.raises(DataError, match=r"^model.depth: 4 halvings of 24-pixel images leave 1 pixel\(s\) at the "
                                        r"bottom; use depth 3 or less"):
        build_task(spec, manifest)


def test_unet_beats_a_fixed_intensity_threshold_on_held_out_shapes(tmp_path):
    spec = PipelineSpec.from_yaml(write_pipeline(
        tmp_path / "seg.yaml", name="seg", data={"source": {"kind": "shapes", "num_images": 360, "size": 24}},
        model={"kind": "unet", "base_channels": 8, "depth": 2},
        train={"epochs": 6, "batch_size": 16, "lr": 0.005}, anomaly={}, registry={"model_name": "seg"}))
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    assert manifest.target_shape == [1, 24, 24]
    env = LocalEnv(spec.data_dir, spec.anomaly, tmp_path / "ckpt", seed=0)
    history = train_loop(spec, manifest, env)
    assert history[-1]["val_dice"] > history[0]["val_dice"]
    task = build_task(spec, manifest)
    models = load_model_weights(env.latest_checkpoint(), task)
    metrics = task.evaluate(models, spec.data_dir).metrics
    assert metrics["dice"] > metrics["baseline_dice"] + 0.1, metrics

    exported = task.export(tmp_path / "model", models, task.evaluate(models, spec.data_dir))
    predictor = load_exported(exported)
    x, masks = make_shapes(4, 24, seed=123)
    np.save(tmp_path / "new.npy", x[:, 0])
    pred = predictor.predict(predictor.read_input(tmp_path / "new.npy"))
    assert pred.shape == (4, 24, 24) and pred.dtype == np.uint8
    assert dice_iou(pred, masks[:, 0])[0] > 0.5


def test_image_mask_parquet_source(tmp_path):
    x, m = make_shapes(30, 12, seed=1)
    images = (x.reshape(30, -1) * 255).astype(np.uint8)
    pq.write_table(pa.table({"image": list(images), "mask": list(m.reshape(30, -1))}), tmp_path / "pairs.parquet")
    spec = DataSpec.model_validate({"source": {"kind": "image_masks", "path": str(tmp_path / "pairs.parquet"),
                                               "image_shape": [1, 12, 12]}})
    manifest, _ = prepare_dataset(spec, tmp_path / "out", log=lambda m: None)
    assert manifest.shape == [1, 12, 12] and manifest.target_shape == [1, 12, 12] and manifest.scaler.divisor == 255
    bad = DataSpec.model_validate({"source": {"kind": "image_masks", "path": str(tmp_path / "pairs.parquet"),
                                              "image_shape": [1, 10, 10]}})
    with pytest.raises(DataError, match="column 'image' must hold 100 values in every row"):
        prepare_dataset(bad, tmp_path / "out2", log=lambda m: None)


def test_unet_on_data_without_masks_is_a_clear_error(tmp_path):
    spec = PipelineSpec.from_yaml(write_pipeline(tmp_path / "p.yaml", model={"kind": "unet"}, anomaly={}))
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    with pytest.raises(DataError, match="model.kind unet needs images with masks"):
        build_task(spec, manifest)
