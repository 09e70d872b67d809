"""The exported model: a folder of weights plus a JSON description, loadable without unpickling code.

    DIR/weights.pt          state_dict only, read with torch.load(weights_only=True)
    DIR/deepgen-model.json  model spec, row shape, scaler, feature names, threshold and its method

`ScoringModel` turns raw input files into anomaly scores exactly as the pipeline scored its test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, TypeAdapter

from deepgen.config import ModelSpec
from deepgen.data.dataset import features_to_numpy
from deepgen.data.prepare import Manifest, Scaler
from deepgen.data.sources import load_table, read_idx_file, table_features
from deepgen.errors import DataError
from deepgen.models.autoencoders import Autoencoder, build_autoencoder
from deepgen.tasks.autoencoder import autoencoder_config

WEIGHTS = "weights.pt"
META = "deepgen-model.json"


class ModelMeta(BaseModel):
    model: dict[str, Any]  # the pipeline's model spec
    shape: list[int]
    scaler: Scaler
    feature_names: list[str] | None
    threshold: float
    threshold_method: dict[str, Any]

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape))


def save_model_dir(dest: Path, model_spec, manifest: Manifest, model: torch.nn.Module,
                   threshold: float, threshold_method: dict[str, Any]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), dest / WEIGHTS)
    meta = ModelMeta(model=model_spec.model_dump(mode="json"), shape=manifest.shape, scaler=manifest.scaler,
                     feature_names=manifest.feature_names, threshold=threshold, threshold_method=threshold_method)
    (dest / META).write_text(meta.model_dump_json(indent=2))
    return dest


class ScoringModel:
    """An exported autoencoder with its scaler and threshold."""

    def __init__(self, model: Autoencoder, meta: ModelMeta):
        self.model = model.eval()
        self.meta = meta

    @classmethod
    def load(cls, directory: str | Path) -> ScoringModel:
        directory = Path(directory)
        meta = ModelMeta.model_validate_json((directory / META).read_text())
        spec = TypeAdapter(ModelSpec).validate_python(meta.model)
        model = build_autoencoder(spec.kind, autoencoder_config(spec, meta.shape))
        model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
        return cls(model, meta)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scaled rows (N, D) -> anomaly scores (N,)."""
        return reconstruction_scores(self.model, x)

    def read_input(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """A file of raw rows -> (scaled rows (N, D), labels or None), checked against the model's shape."""
        x, labels = read_rows(Path(path), self.meta)
        if x.shape[1] != self.meta.num_features:
            raise DataError(f"{path}: rows have {x.shape[1]} features, the model expects {self.meta.num_features}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(1).sum())
            raise DataError(f"{path}: {bad} rows hold NaN or infinite values; clean or drop them")
        return x, labels


@torch.no_grad()
def reconstruction_scores(model: Autoencoder, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scaled rows (N, D) -> per-row reconstruction error (N,), the anomaly score."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.tensor(x[i:i + batch_size], dtype=torch.float32)
        out.append(model.reconstruction_error(xb, model(xb)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def read_rows(path: Path, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name = path.name
    if name.endswith(".npy"):
        x = np.load(path, allow_pickle=False)
        return meta.scaler.apply(x.reshape(len(x), -1)), None
    if "idx3-ubyte" in name or "idx3_ubyte" in name:
        x = read_idx_file(path)
        return meta.scaler.apply(x.reshape(len(x), -1)), None
    if path.suffix == ".parquet" and "features" in pq.read_schema(path).names:
        table = pq.read_table(path)
        x = features_to_numpy(table.column("features"))
        labels = table.column("label").to_numpy(zero_copy_only=False) if "label" in table.column_names else None
        prepared = (table.schema.metadata or {}).get(b"deepgen.prepared") == b"1"
        return (x if prepared else meta.scaler.apply(x)), labels
    table = load_table(str(path))
    if not meta.feature_names:
        raise DataError(f"{path}: this model scores image rows; give a .npy, an IDX images file, "
                        "or a Parquet file with a `features` column")
    missing = [c for c in meta.feature_names if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing feature column {missing[0]!r} that the model was trained on")
    return meta.scaler.apply(table_features(table, meta.feature_names, str(path))), None
