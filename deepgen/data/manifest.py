"""A prepared dataset's manifest (deepgen.data.prepare writes it last, beside the splits): its schema, row
counts, row shape, the scaler fitted on train, and the fingerprint that says whether it is up to date.
Both prepares (in memory: deepgen.data.prepare; Ray Data: deepgen.data.prepare_ray) write it; training,
evaluation and serving read it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from deepgen.config import DataSpec
from deepgen.data.dataset import read_manifest_as

if TYPE_CHECKING:
    from deepgen.data.sources import RawData

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2  # 2: manifests record binary_features


class Scaler(BaseModel):
    """Maps raw features to [0, 1]: a fixed divisor for images, min-max (fit on train) for tables."""

    divisor: float | None = None
    minimum: list[float] | None = None
    maximum: list[float] | None = None

    @classmethod
    def fit(cls, raw: RawData, x_train: np.ndarray) -> Scaler:
        if raw.divisor:
            return cls(divisor=raw.divisor)
        flat = x_train.reshape(len(x_train), -1)
        return cls(minimum=flat.min(0).tolist(), maximum=flat.max(0).tolist())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) raw -> (N, D) float32; table values beyond the training range fall outside [0, 1]."""
        x = x.astype(np.float32, copy=False)
        if self.divisor:
            return x / np.float32(self.divisor)
        lo, span = self._range()
        return (x - lo) / span

    def rescale(self, x: np.ndarray, scaled_by: Scaler) -> np.ndarray:
        """Rows that `scaled_by` scaled (another dataset's prepared split) -> rows as this scaler scales
        them: a table's min-max range moves when its data gains rows."""
        return x if scaled_by == self else self.apply(scaled_by.invert(x))

    def invert(self, x: np.ndarray) -> np.ndarray:
        """(N, D) scaled -> (N, D) raw float32: what `apply` was given."""
        x = x.astype(np.float32, copy=False)
        if self.divisor:
            return x * np.float32(self.divisor)
        lo, span = self._range()
        return x * span + lo

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.minimum, np.float32)
        span = np.asarray(self.maximum, np.float32) - lo
        return lo, np.where(span > 0, span, 1).astype(np.float32)


class Manifest(BaseModel):
    format: int = FORMAT_VERSION
    fingerprint: str  # source bytes + data spec: equal fingerprints mean equal outputs
    source_fingerprint: str
    shape: list[int]
    rows: dict[str, int]
    label_type: str | None  # "int", "str", "float", "bool" or None for unlabelled data
    feature_names: list[str] | None
    target_shape: list[int] | None = None  # per-row target, e.g. a (1, H, W) segmentation mask
    scaler: Scaler
    arrow_schema: dict[str, str]  # column -> Arrow type
    # the Ray Data prepare: split -> its part files (name, rows, bytes) under DIR/SPLIT.parquet/; None: one
    # file per split (DIR/SPLIT.parquet)
    files: dict[str, list[dict]] | None = None
    # every scaled training value is 0 or 1: the one case where a Bernoulli likelihood (sigmoid + BCE)
    # describes the data; grey levels and table values get a Gaussian one (mse) under `loss: auto`
    binary_features: bool = False

    @property
    def num_features(self) -> int:
        return int(np.prod(self.shape))


def manifest_from_dict(raw: dict):
    """A manifest passed around as JSON: an image/table `Manifest` or a text one (`TextManifest`)."""
    if "task" in raw:
        from deepgen.data.text import TextManifest

        return TextManifest.model_validate(raw)
    return Manifest.model_validate(raw)


def read_manifest(directory: str | Path) -> Manifest | None:
    return read_manifest_as(Manifest, directory)


def dataset_fingerprint(data: DataSpec, source_fingerprint: str, engine: str = "memory") -> str:
    """Source bytes + spec (+ the engine, when Ray Data wrote it: its split is by row hash, not a permutation)."""
    spec = data.model_dump(mode="json", exclude={"output", "engine"})
    key = {"spec": spec, "source": source_fingerprint, "format": FORMAT_VERSION}
    if engine != "memory":
        key["engine"] = engine
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
