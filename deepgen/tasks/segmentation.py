"""Binary segmentation as a task: a UNet maps an image to a per-pixel mask; Dice and IoU on test.

Evaluation also scores the best single intensity threshold found on the validation split, so the
registry and the run show what the model adds over thresholding pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from deepgen.config import PipelineSpec
from deepgen.data.dataset import features_to_numpy, split_path
from deepgen.data.manifest import Manifest
from deepgen.errors import DataError, DeepgenError
from deepgen.export import ModelMeta, image_config, load_weights, read_images, read_meta, save_model_dir
from deepgen.files import check_output, writing_output
from deepgen.models.unet import UNet, UNetConfig
from deepgen.serving import Predictor, example_rows, input_rows
from deepgen.tasks import Evaluation, unwrap
from deepgen.train.optim import ScheduledTask


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of binary masks over the whole split (pixels pooled); 1.0 when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    inter = np.logical_and(pred, target).sum()
    total = pred.sum() + target.sum()
    union = np.logical_or(pred, target).sum()
    return (float(2 * inter / total) if total else 1.0), (float(inter / union) if union else 1.0)


def load_pairs(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(split_path(data_dir, split))
    if "target" not in table.column_names:
        raise DataError(f"{split_path(data_dir, split)}: no masks; segmentation needs a shapes or image_masks source")
    return features_to_numpy(table.column("features")), features_to_numpy(table.column("target"))


def best_intensity_threshold(x: np.ndarray, masks: np.ndarray) -> float:
    """The fixed pixel-intensity threshold with the best Dice on (x, masks): the baseline to beat."""
    grid = np.linspace(0.05, 0.95, 19)
    gray = _gray(x, masks.shape[1])
    return float(max(grid, key=lambda t: dice_iou(gray > t, masks)[0]))


def _gray(x: np.ndarray, pixels: int) -> np.ndarray:
    """(N, C*H*W) -> (N, H*W): the channel mean, so the baseline works for colour images too."""
    return x.reshape(len(x), -1, pixels).mean(1)


class SegmentationTask(ScheduledTask):
    def __init__(self, spec: PipelineSpec, manifest: Manifest):
        if manifest.target_shape is None or len(manifest.shape) != 3:
            raise DataError(f"{spec.name}: model.kind unet needs images with masks "
                            "(data.source.kind shapes or image_masks)")
        side = min(manifest.shape[1:])
        if side >> spec.model.depth < 2:  # batch norm needs more than one value per channel at the bottom
            raise DataError(f"model.depth: {spec.model.depth} halvings of {side}-pixel images leave "
                            f"{side >> spec.model.depth} pixel(s) at the bottom; use depth "
                            f"{max(1, (side // 2).bit_length() - 1)} or less, or larger images (data.resize)")
        self.spec = spec
        self.manifest = manifest
        self.config = UNetConfig(input_shape=tuple(manifest.shape), base_channels=spec.model.base_channels,
                                 depth=spec.model.depth)

    def build_models(self):
        return {"model": UNet(self.config)}

    def build_optimizers(self, models):
        t = self.spec.train
        return {"model": torch.optim.AdamW(models["model"].parameters(), lr=t.lr, weight_decay=t.weight_decay)}

    def train_step(self, models, optimizers, batch):
        model = models["model"]
        loss = self.update(models, optimizers, lambda: UNet.loss(model(batch["features"]), batch["target"]),
                           loss_of=lambda loss: loss)
        return {"loss": loss.detach()}

    def eval_step(self, models, batch):
        logits = models["model"](batch["features"])
        target = batch["target"]
        pred = (logits > 0).float()
        n = len(target)
        inter = (pred * target).sum(1)
        dice = (2 * inter + 1) / (pred.sum(1) + target.sum(1) + 1)  # per image, smoothed for empty masks
        return {"loss": UNet.loss(logits, target) * n, "dice": dice.sum()}

    def evaluate(self, models, data_dir: Path) -> Evaluation:
        model = unwrap(models["model"]).eval()
        x_val, m_val = load_pairs(data_dir, "val")
        x_test, m_test = load_pairs(data_dir, "test")
        pred = SegmentationPredictor.masks_of(model, x_test)
        dice, iou = dice_iou(pred, m_test)
        t = best_intensity_threshold(x_val, m_val)
        base_dice, base_iou = dice_iou(_gray(x_test, m_test.shape[1]) > t, m_test)
        metrics = {"dice": dice, "iou": iou, "baseline_dice": base_dice, "baseline_iou": base_iou}
        from deepgen import plots

        figures = {"predictions": plots.segmentations(x_test[:6], m_test[:6], pred[:6], self.manifest.shape)}
        return Evaluation(metrics, registry_tags={"baseline_intensity_threshold": t}, figures=figures)

    def export(self, dest: Path, models, evaluation: Evaluation) -> Path:
        return save_model_dir(dest, "segmentation", self.spec.model, self.manifest, unwrap(models["model"]), {})


class SegmentationPredictor(Predictor):
    """An exported UNet: images in, binary masks out."""

    def __init__(self, model, meta: ModelMeta):
        self.model = model.eval()
        self.meta = meta

    @classmethod
    def load(cls, directory: str | Path) -> SegmentationPredictor:
        meta = read_meta(directory)
        return cls(load_weights(directory, UNet(image_config(meta, UNetConfig))), meta)

    @staticmethod
    @torch.no_grad()
    def masks_of(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scaled image rows (N, C*H*W) -> masks (N, H*W) bool."""
        model.eval()
        out = [(model(torch.tensor(x[i:i + batch_size], dtype=torch.float32)) > 0).numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), bool)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scaled image rows -> masks (N, H, W) uint8 in {0, 1}."""
        _, h, w = self.meta.shape
        return self.masks_of(self.model, x).reshape(-1, h, w).astype(np.uint8)

    def read_input(self, path: str | Path) -> np.ndarray:
        return read_images(path, self.meta)

    def predict_command(self, args, version) -> int:
        """A mask per image of --input, written to --output (.npy, .parquet, or a folder of PNGs)."""
        if not args.input or not args.output:
            raise DeepgenError(f"{args.model}: a segmentation model needs --input IMAGES and --output MASKS")
        out = Path(args.output)
        check_output(out, Path(args.input), folder=out.suffix not in (".npy", ".parquet"), force=args.force)
        masks = self.predict(self.read_input(args.input))  # (N, H, W) uint8
        write_masks(masks, out)
        print(f"predicted {len(masks)} masks with {version.name} v{version.version} "
              f"(mean foreground {masks.mean():.3f}) -> {args.output}")
        return 0

    def answer(self, model_input) -> np.ndarray:
        return self.predict(self.meta.scaler.apply(input_rows(model_input)))  # (N, H, W) uint8

    def example_input(self) -> np.ndarray:
        return example_rows(self.meta)

    def evaluate(self, data_dir: Path, anomaly_spec=None) -> dict[str, float] | None:
        """Dice and IoU on another dataset's test split (for the gate)."""
        x, masks = load_pairs(data_dir, "test")
        if x.shape[1] != self.meta.num_features:
            return None
        dice, iou = dice_iou(self.masks_of(self.model, x), masks)
        return {"dice": dice, "iou": iou}


def write_masks(masks: np.ndarray, out: Path) -> None:
    """Masks (N, H, W) uint8 -> .npy: one array; .parquet: a `mask` list column; otherwise a folder of PNGs."""
    with writing_output(out) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, masks)
        elif out.suffix == ".parquet":
            import pyarrow as pa

            pq.write_table(pa.table({"mask": pa.array(list(masks.reshape(len(masks), -1)))}), tmp)
        else:
            import matplotlib.image

            tmp.mkdir()
            for i, m in enumerate(masks):
                matplotlib.image.imsave(tmp / f"mask_{i:05d}.png", m * 255, cmap="gray", vmin=0, vmax=255,
                                        format="png")


TASKS = {"unet": SegmentationTask}
PREDICTORS = {"segmentation": SegmentationPredictor}


def next_command(kind: str, name: str) -> str:
    return f"deepgen predict --model {name}@champion --input images.npy --output masks.npy"
