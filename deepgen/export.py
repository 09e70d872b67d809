"""The exported model: a folder of weights plus a JSON description, loadable without unpickling code.

    DIR/weights.pt          state_dict only, read with torch.load(weights_only=True)
    DIR/deepgen-model.json  family, model kind and config, row shape, scaler, feature names, and the
                            family's extras (for anomaly detectors: the threshold and its method)

This module is the folder format only: each family's predictor (deepgen.tasks.<family>) reads its folder
with it, and deepgen.serving.load_exported finds the predictor of any folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel

from deepgen.data.dataset import features_to_numpy
from deepgen.data.manifest import Manifest, Scaler
from deepgen.data.sources import load_npy, load_table, read_idx_file, table_features
from deepgen.errors import DataError

WEIGHTS = "weights.pt"
META = "deepgen-model.json"


class ModelMeta(BaseModel):
    family: str  # which predictor of its kind's family reads this folder: "anomaly", ...
    kind: str  # model.kind of the pipeline
    config: dict[str, Any]  # the model's own config dataclass, as a dict
    shape: list[int]  # one input row
    scaler: Scaler
    feature_names: list[str] | None
    extra: dict[str, Any]  # family specifics, e.g. the anomaly threshold and its method

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape))


def save_model_dir(dest: Path, family: str, model_spec, manifest: Manifest, model: torch.nn.Module,
                   extra: dict[str, Any]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest / WEIGHTS)
    meta = ModelMeta(family=family, kind=model_spec.kind, config=asdict(model.config), shape=manifest.shape,
                     scaler=manifest.scaler, feature_names=manifest.feature_names, extra=extra)
    (dest / META).write_text(meta.model_dump_json(indent=2))
    return dest


def read_meta(directory: str | Path) -> ModelMeta:
    return ModelMeta.model_validate_json((Path(directory) / META).read_text())


def image_config(meta: ModelMeta, config_cls):
    """An image model's config dataclass from its metadata (JSON gives its input_shape back as a list)."""
    return config_cls(**{**meta.config, "input_shape": tuple(meta.config["input_shape"])})


def load_weights(directory: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def read_images(path: str | Path, meta: ModelMeta) -> np.ndarray:
    """A file of raw images -> scaled rows (N, C*H*W), checked against the model's image shape."""
    x, _ = read_rows(Path(path), meta)
    if x.shape[1] != meta.num_features:
        raise DataError(f"{path}: images have {x.shape[1]} values, the model expects "
                        f"{meta.num_features} ({' x '.join(map(str, meta.shape))})")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: images hold NaN or infinite values")
    return x


def read_rows(path: Path, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray | None]:
    """A file of raw rows (.npy, IDX images, CSV, Parquet) -> (rows scaled as in training, labels or None)."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name = path.name
    if name.endswith(".npy"):
        return _image_rows(read_npy(path), path, meta), None
    if "idx3-ubyte" in name or "idx3_ubyte" in name:
        return _image_rows(read_idx_file(path), path, meta), None
    if path.suffix not in (".csv", ".parquet") and not path.is_dir():
        raise DataError(f"{path}: unknown input format; give a .npy, .csv or .parquet file, or IDX images "
                        "(*-idx3-ubyte)")
    table = load_table(str(path))
    if not table.num_rows:
        raise DataError(f"{path}: no rows; give at least one row")
    if "features" in table.column_names:
        if not pa.types.is_fixed_size_list(table.schema.field("features").type):
            raise DataError(f"{path}: column 'features' is {table.schema.field('features').type}, expected a "
                            "fixed-size list of numbers (as `deepgen prepare` writes)")
        x = features_to_numpy(table.column("features"))
        labels = table.column("label").to_numpy(zero_copy_only=False) if "label" in table.column_names else None
        if (table.schema.metadata or {}).get(b"deepgen.prepared") != b"1":
            return meta.scaler.apply(x), labels
        # a prepared split: scaled for its own dataset, whose range may not be the model's
        from deepgen.data.manifest import read_manifest

        manifest = read_manifest(path.parent)
        if manifest is None:
            raise DataError(f"{path}: a prepared split without its manifest.json beside it, so its scaling is "
                            "unknown; score the raw rows instead (.npy, CSV/Parquet columns, IDX)")
        return meta.scaler.rescale(x, scaled_by=manifest.scaler), labels
    return table_rows(table, meta, str(path)), None


def read_npy(path: Path) -> np.ndarray:
    """A .npy array of numbers, or a DataError naming the file."""
    x = load_npy(path)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: an array of {x.dtype}, expected numbers")
    return x


def _image_rows(x: np.ndarray, path: Path, meta: ModelMeta) -> np.ndarray:
    if x.ndim == 0:
        raise DataError(f"{path}: a single value, expected an array of rows (N, ...)")
    if not len(x):
        raise DataError(f"{path}: no rows (shape {x.shape}); give at least one row")
    return meta.scaler.apply(x.reshape(len(x), -1))


def table_rows(table, meta: ModelMeta, where: str) -> np.ndarray:
    """A table's raw feature columns, picked by the names the model was trained on (any order, extra
    columns ignored), scaled as in training."""
    if not meta.feature_names:
        raise DataError(f"{where}: this model scores image rows; give a .npy, an IDX images file, "
                        "or a Parquet file with a `features` column")
    missing = [c for c in meta.feature_names if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing feature column {missing[0]!r} that the model was trained on")
    return meta.scaler.apply(table_features(table, meta.feature_names, where))
