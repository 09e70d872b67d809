"""Which family trains, exports and serves each `model.kind`: one line per family.

A family is one module under deepgen/tasks/ that holds everything deepgen knows of it:

    TASKS: dict[str, type]        model.kind -> its task (deepgen.tasks.Task): models, steps, evaluation and
                                  figures, export
    PREDICTORS: dict[str, type]   the `family` an exported folder records -> its predictor
                                  (deepgen.serving.Predictor): load, score/predict/sample/upscale, the pyfunc's
                                  answer, its input example and signature, the gate's evaluation
    next_command(kind, name)      what the CLI tells the user to run with a registered model

Adding a family is one new module and one line in FAMILIES. The config's model union, the CLI, the pyfunc
(deepgen.mlflow_model, through deepgen.serving.load_exported) and tracking read this table; nothing else
switches on kind strings. The modules are
imported when first asked for, so reading the table (deepgen.config does) costs no torch import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Family:
    module: str  # deepgen.tasks.<module>
    kinds: tuple[str, ...]  # the model.kind values it trains
    sources: tuple[str, ...] = ()  # the data.source.kind values it reads; () = images or tables, not text
    detector: bool = False  # an anomaly detector: normal/anomalous labels, a calibrated threshold


FAMILIES = (
    Family("autoencoder", ("dense_autoencoder", "conv_autoencoder", "overcomplete_autoencoder", "sparse_autoencoder",
                           "denoising_autoencoder", "vae", "mae"), detector=True),
    Family("segmentation", ("unet",)),
    Family("bert", ("bert_pretrain",), sources=("text_files", "text_table")),
    Family("bert", ("bert_classifier",), sources=("labelled_text",)),
    Family("vit", ("vit_classifier",)),
    Family("gan", ("gan", "dcgan", "cgan", "lapgan")),
    Family("srgan", ("srgan",)),
)

KINDS: dict[str, Family] = {kind: f for f in FAMILIES for kind in f.kinds}
DETECTOR_KINDS = tuple(kind for kind, f in KINDS.items() if f.detector)


def family(kind: str) -> Family:
    if kind not in KINDS:
        raise ValueError(f"no family for model.kind {kind!r}")
    return KINDS[kind]


def module(kind: str) -> ModuleType:
    """The family module of a `model.kind`."""
    return importlib.import_module(f"deepgen.tasks.{family(kind).module}")


def task_class(kind: str) -> type:
    """The task that trains a `model.kind`."""
    return module(kind).TASKS[kind]


def predictor_class(kind: str, folder_family: str) -> type:
    """The predictor of an exported folder, from the kind and family its metadata records."""
    from deepgen.errors import DataError

    predictors = module(kind).PREDICTORS if kind in KINDS else {}
    if folder_family not in predictors:
        raise DataError(f"unknown model family {folder_family!r} (model.kind {kind!r}); is this deepgen older than "
                        "the model?")
    return predictors[folder_family]


def next_command(kind: str, name: str) -> str:
    """What a user runs next with the model a pipeline registered."""
    return module(kind).next_command(kind, name)
