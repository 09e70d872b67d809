"""The family registry (deepgen.tasks.registry): every model.kind the pipeline file accepts has exactly one
family, whose module trains, exports and serves it; the exported folder's format knows no family."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from deepgen.config import ModelSpec
from deepgen.errors import DataError
from deepgen.tasks import Task, registry

ROOT = Path(__file__).resolve().parents[1]


def spec_kinds() -> set[str]:
    union = typing.get_args(ModelSpec)[0]
    return {typing.get_args(cls.model_fields["kind"].annotation)[0] for cls in typing.get_args(union)}


def test_every_kind_of_the_config_has_one_family_and_no_family_has_another():
    assert set(registry.KINDS) == spec_kinds()
    kinds = [k for f in registry.FAMILIES for k in f.kinds]
    assert len(kinds) == len(set(kinds))


@pytest.mark.parametrize("kind", sorted(registry.KINDS))
def test_each_kind_is_trained_by_a_task_of_its_family_module(kind):
    module = registry.module(kind)
    assert issubclass(registry.task_class(kind), Task)
    assert module.PREDICTORS and callable(module.next_command)
    assert "@champion" in registry.next_command(kind, "m")


def test_a_folder_of_an_unknown_family_is_refused_in_one_line():
    with pytest.raises(DataError, match="unknown model family 'hologram'"):
        registry.predictor_class("dense_autoencoder", "hologram")
    with pytest.raises(DataError, match="unknown model family"):
        registry.predictor_class("no_such_kind", "anomaly")


def test_the_export_format_imports_no_family():
    tree = ast.parse((ROOT / "deepgen/export.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith(("deepgen.tasks", "deepgen.train", "deepgen.tracking"))}
