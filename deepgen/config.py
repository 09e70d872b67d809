"""Typed pipeline specs.

A pipeline is a YAML file validated once, at the edge, into a `PipelineSpec`; everything below takes
these typed objects. Every model forbids unknown fields, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepgen.errors import SpecError


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data sources (a discriminated union on `kind`) ------------------------------------------------


class DigitsSource(Spec):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""

    kind: Literal["digits"] = "digits"


class IdxSource(Spec):
    """A directory in the MNIST layout: train-/t10k- images (idx3) and labels (idx1), optionally gzipped.

    The official t10k files become the test split; validation is carved out of the train files.
    """

    kind: Literal["idx"] = "idx"
    path: str = Field(description="directory holding train-images-idx3-ubyte[.gz] and friends")


class NpySource(Spec):
    """A `.npy` array of shape (N, D), (N, H, W) or (N, C, H, W), with optional labels (N,)."""

    kind: Literal["npy"] = "npy"
    path: str = Field(description=".npy file with the features")
    labels: str | None = Field(default=None, description=".npy file with one label per row")


class TableSource(Spec):
    """A CSV or Parquet table of numeric feature columns and an optional label column."""

    kind: Literal["table"] = "table"
    path: str = Field(description=".csv or .parquet file")
    label_column: str | None = Field(default=None, description="column holding the label, if any")
    feature_columns: list[str] | None = Field(
        default=None, description="feature columns; default: every numeric column but the label"
    )


Source = Annotated[Union[DigitsSource, IdxSource, NpySource, TableSource], Field(discriminator="kind")]


class DataSpec(Spec):
    source: Source
    output: str | None = Field(
        default=None, description="where the prepared Parquet dataset goes; default RUNS_DIR/data/NAME"
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=1, description="share of training rows for validation")
    test_fraction: float = Field(
        default=0.15, gt=0, lt=1, description="share of rows for test, where the source has no test split"
    )
    seed: int = Field(default=0, description="seed of the split")

    def with_absolute_paths(self) -> DataSpec:
        """Source paths resolved against the current directory, for a Ray task that runs elsewhere."""
        src = self.source
        updates = {f: str(Path(getattr(src, f)).expanduser().absolute())
                   for f in ("path", "labels") if getattr(src, f, None)}
        return self.model_copy(update={"source": src.model_copy(update=updates)})

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


# --- models (a discriminated union on `kind`) ------------------------------------------------------


class DenseAutoencoderSpec(Spec):
    """Undercomplete MLP autoencoder: h = f(x) through `hidden` to `latent_dim`, r = g(h) mirrored."""

    kind: Literal["dense_autoencoder"] = "dense_autoencoder"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default=[64], description="encoder widths before the code")
    latent_dim: int = Field(default=8, gt=0, description="size of the bottleneck code h")
    loss: Literal["bce", "mse"] = Field(default="bce", description="bce for inputs in [0,1]; mse otherwise")


class ConvAutoencoderSpec(Spec):
    """Undercomplete convolutional autoencoder: strided convs down, transposed convs up."""

    kind: Literal["conv_autoencoder"] = "conv_autoencoder"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default=[16, 32], description="channels per stride-2 stage")
    latent_dim: int = Field(default=16, gt=0, description="size of the bottleneck code h")
    loss: Literal["bce", "mse"] = Field(default="bce", description="bce for inputs in [0,1]; mse otherwise")


ModelSpec = Annotated[Union[DenseAutoencoderSpec, ConvAutoencoderSpec], Field(discriminator="kind")]


# --- training and scaling --------------------------------------------------------------------------


class TrainSpec(Spec):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0, description="per worker")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    seed: int = 0
    run_name: str | None = Field(
        default=None, description="Ray Train run name; the same name resumes. Default: NAME-SPECHASH"
    )
    checkpoints_to_keep: int = Field(default=2, gt=0)
    cache_shards: bool = Field(
        default=True, description="keep each worker's data shard in memory after the first epoch"
    )


class ScalingSpec(Spec):
    num_workers: int = Field(default=2, gt=0, description="Ray Train workers")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    cpus_per_worker: float = Field(default=1.0, gt=0)


# --- anomaly detection -----------------------------------------------------------------------------


class FprThreshold(Spec):
    """Threshold at the (1 - target_fpr) quantile of validation scores of normal rows."""

    method: Literal["fpr"] = "fpr"
    target_fpr: float = Field(default=0.05, gt=0, lt=1)


class PercentileThreshold(Spec):
    """Threshold at a percentile of validation scores of normal rows."""

    method: Literal["percentile"] = "percentile"
    percentile: float = Field(default=95.0, gt=0, lt=100)


ThresholdSpec = Annotated[Union[FprThreshold, PercentileThreshold], Field(discriminator="method")]


class AnomalySpec(Spec):
    normal_labels: list[int | str] | None = Field(
        default=None, description="labels of normal rows; the model trains on these only"
    )
    anomalous_labels: list[int | str] | None = Field(
        default=None, description="alternatively, labels of anomalous rows; every other label is normal"
    )
    threshold: ThresholdSpec = Field(default_factory=FprThreshold)

    @model_validator(mode="after")
    def _one_way_to_say_normal(self) -> AnomalySpec:
        if self.normal_labels is not None and self.anomalous_labels is not None:
            raise ValueError("give normal_labels or anomalous_labels, not both")
        return self


# --- tracking and registry -------------------------------------------------------------------------


class RegistrySpec(Spec):
    model_name: str = Field(description="registered model name in MLflow")
    gate_metric: str = Field(default="roc_auc", description="test metric that decides the champion")
    greater_is_better: bool = True


class TrackingSpec(Spec):
    runs_dir: str = Field(
        default="deepgen-runs",
        description="local folder for the SQLite MLflow store, Ray run state and prepared data",
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; default: the pipeline name")
    storage_path: str | None = Field(
        default=None, description="Ray Train storage (checkpoints); default RUNS_DIR/ray"
    )


class PipelineSpec(Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    anomaly: AnomalySpec = Field(default_factory=AnomalySpec)
    registry: RegistrySpec
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    # -- derived paths and names -- #

    @property
    def runs_dir(self) -> Path:
        return Path(self.tracking.runs_dir).expanduser().resolve()

    @property
    def data_dir(self) -> Path:
        if self.data.output:
            return Path(self.data.output).expanduser().resolve()
        return self.runs_dir / "data" / self.name

    @property
    def storage_path(self) -> str:
        return self.tracking.storage_path or str(self.runs_dir / "ray")

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def spec_hash(self) -> str:
        """Hash of everything that shapes the trained model (not where it is stored or registered)."""
        relevant = self.model_dump(mode="json", include={"data", "model", "train", "anomaly"})
        relevant["train"].pop("run_name", None)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def run_name(self) -> str:
        return self.train.run_name or f"{self.name}-{self.spec_hash()}"

    # -- loading -- #

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] = ()) -> PipelineSpec:
        """Read and validate a pipeline file; `overrides` are `dotted.field=value` strings."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: no such pipeline file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SpecError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: expected a mapping of pipeline fields at the top level")
        for item in overrides:
            apply_override(raw, item, source=str(path))
        return cls.validate_dict(raw, source=str(path))

    @classmethod
    def validate_dict(cls, raw: dict[str, Any], source: str = "<spec>") -> PipelineSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SpecError(f"{source}: {format_validation_error(e)}") from None


def apply_override(raw: dict[str, Any], item: str, source: str = "--set") -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar (`3`, `true`, `[1, 2]`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"{source}: --set {item!r}: expected dotted.field=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{source}: --set {key}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        raise SpecError(f"{source}: --set {key}: cannot parse value {value!r}") from None


def format_validation_error(e: ValidationError) -> str:
    """The first error as `field.path: message`; discriminator tags are dropped from the path."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{'.'.join(loc) or '<root>'}: {err['msg']}{more}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member in the location: data.source.idx.path -> data.source.path
    return isinstance(part, str) and part in _UNION_TAGS


def _union_tags(*unions: Any) -> set[str]:
    members = [m for u in unions for m in get_args(get_args(u)[0])]
    return {m.model_fields[f].default for m in members for f in ("kind", "method") if f in m.model_fields}


_UNION_TAGS = _union_tags(Source, ModelSpec, ThresholdSpec)
