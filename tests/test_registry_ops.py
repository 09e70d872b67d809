"""Production operations on the registry: promote, rollback and the champion history (SQLite, no Ray).

Registering a version logs a pyfunc model (seconds each), so the versions are registered once per module
and every test works on its own copy of the store's database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_pipeline
from mlflow.tracking import MlflowClient

from deepgen import orchestrate, tracking
from deepgen.anomaly import threshold_tags
from deepgen.cli import main
from deepgen.config import FprThreshold, PipelineSpec
from deepgen.data.prepare import prepare_dataset
from deepgen.tasks import Evaluation, build_task

NAME = "t-model"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Two saved stores: "one" = v1 champion (gate), v2 challenger; "three" = that plus v3 champion (gate)."""
    root = tmp_path_factory.mktemp("registry-ops")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = PipelineSpec.from_yaml(write_pipeline(root / "p.yaml"))
        tracking.configure(spec.runs_dir)
        manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
        run_id = orchestrate.start_run(spec, manifest)
        task = build_task(spec, manifest)

        def register(roc_auc):
            ev = Evaluation({"roc_auc": roc_auc}, registry_tags=threshold_tags(0.5, FprThreshold()))
            return orchestrate.register(spec, manifest, ev, task.build_models(), task, run_id)

        assert register(0.80).alias == "champion" and register(0.75).alias == "challenger"
        shutil.copy(spec.runs_dir / "mlflow.db", root / "one.db")
        assert register(0.90).alias == "champion"
        shutil.copy(spec.runs_dir / "mlflow.db", root / "three.db")
    return {"one": root / "one.db", "three": root / "three.db", "run_id": run_id}


class Store:
    """A private copy of a saved store; `deepgen(...)` runs the CLI in-process against it."""

    def __init__(self, db: Path, runs_dir: Path, capsys):
        runs_dir.mkdir()
        shutil.copy(db, runs_dir / "mlflow.db")
        self.runs_dir, self.capsys = runs_dir, capsys
        self.uri = tracking.configure(runs_dir)
        self.client = MlflowClient(self.uri, self.uri)

    def deepgen(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*args, "--runs-dir", str(self.runs_dir)])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def json(self, *args: str):
        code, out, err = self.deepgen(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def champion(self) -> str:
        return str(self.client.get_model_version_by_alias(NAME, "champion").version)


@pytest.fixture
def store(snapshots, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DEEPGEN_USER", raising=False)
    return Store(snapshots["three"], tmp_path / "runs", capsys)


@pytest.fixture
def one_champion(snapshots, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Store(snapshots["one"], tmp_path / "runs", capsys)


def test_promote_moves_champion_and_records_who_and_why(store, monkeypatch):
    code, out, _ = store.deepgen("models", "promote", NAME, "2", "--reason", "INC-42 canary ok", "--by", "alice")
    assert code == 0 and store.champion() == "2"
    assert out.strip() == f"{NAME}: champion v3 -> v2 (promote by alice: INC-42 canary ok)"
    monkeypatch.setenv("DEEPGEN_USER", "bob")  # who, when --by is not given
    assert store.deepgen("models", "promote", NAME, "v1")[0] == 0 and store.champion() == "1"
    last_two = store.json("models", "history", NAME)[-2:]
    assert [(r["version"], r["by"], r["action"], r["reason"]) for r in last_two] == [
        ("2", "alice", "promote", "INC-42 canary ok"), ("1", "bob", "promote", "")]
    code, out, _ = store.deepgen("models", "promote", NAME, "1")
    assert code == 0 and "already champion; nothing moved" in out
    assert len(store.json("models", "history", NAME)) == 4  # a no-op is not recorded


def test_history_lists_gate_promotion_manual_promotion_and_rollback_in_order(store):
    store.deepgen("models", "promote", NAME, "2", "--reason", "hotfix", "--by", "alice")
    store.deepgen("models", "rollback", NAME, "--reason", "alerts", "--by", "carol")
    rows = store.json("models", "history", NAME)
    assert [(r["version"], r["by"], r["action"]) for r in rows] == [
        ("1", "gate", "gate"), ("3", "gate", "gate"), ("2", "alice", "promote"), ("3", "carol", "rollback")]
    assert rows[0]["reason"] == "no champion yet"
    assert rows[1]["reason"] == "roc_auc 0.9000 beats champion v1 (0.8000)"
    assert all(r["until"] == nxt["from"] for r, nxt in zip(rows, rows[1:]))  # one holder at a time
    assert all(r["from"] <= r["until"] for r in rows[:-1])
    assert rows[-1]["until"] is None and [r["current"] for r in rows] == [False, False, False, True]

    code, out, _ = store.deepgen("models", "history", NAME)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["VERSION", "FROM", "UNTIL", "BY", "WHY"]
    assert [line.split()[0] for line in lines[1:]] == ["v1", "v3", "v2", "v3"]
    assert "gate: roc_auc 0.9000 beats champion v1 (0.8000)" in lines[2]
    assert "alice" in lines[3] and lines[3].endswith("promote: hotfix")
    assert lines[4].split()[3] == "now" and lines[4].endswith("rollback: alerts")


def test_rollback_restores_the_previous_champion_then_the_one_before(store):
    store.deepgen("models", "promote", NAME, "2", "--by", "alice")  # champions: v1, v3, v2
    code, out, _ = store.deepgen("models", "rollback", NAME, "--by", "carol")
    assert code == 0 and store.champion() == "3" and out.strip() == f"{NAME}: champion v2 -> v3 (rollback by carol)"
    assert store.deepgen("models", "rollback", NAME, "--by", "carol")[0] == 0 and store.champion() == "1"
    code, _, err = store.deepgen("models", "rollback", NAME)  # v1 was the first champion
    assert code == 1 and store.champion() == "1"
    assert err.strip() == (f"deepgen: error: {NAME}: no previous champion to roll back to (v1 is the first "
                           f"champion on record); `deepgen models promote {NAME} VERSION` moves champion "
                           "to any version")


def test_rollback_with_no_previous_champion_exits_1_with_one_line_and_moves_nothing(one_champion):
    before = one_champion.json("models", "history", NAME)
    env = {**os.environ, "MLFLOW_TRACKING_URI": one_champion.uri}
    out = subprocess.run([sys.executable, "-m", "deepgen.cli", "models", "rollback", NAME],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"deepgen: error: {NAME}: no previous champion") and "deepgen models promote" in line
    assert one_champion.champion() == "1" and one_champion.json("models", "history", NAME) == before


def test_promote_of_a_missing_version_or_model_fails_clearly_and_moves_nothing(store):
    before = store.json("models", "history", NAME)
    code, _, err = store.deepgen("models", "promote", NAME, "9")
    assert code == 1 and err.strip() == (f"deepgen: error: {NAME}: no version 9; `deepgen models show {NAME}` "
                                         "shows the latest, `deepgen models list` the models")
    code, _, err = store.deepgen("models", "promote", "nope", "1")
    [line] = err.strip().splitlines()
    assert code == 1 and line.startswith("deepgen: error: nope: not found in the registry at sqlite:")
    assert line.endswith("(Registered Model with name=nope not found); `deepgen models list` shows what is there")
    assert store.champion() == "3" and store.json("models", "history", NAME) == before


def test_json_output_holds_the_same_facts_as_the_tables(store, snapshots):
    [model] = store.json("models", "list")
    assert model["aliases"] == {"champion": "3", "challenger": "2"}  # versions as strings
    shown = store.json("models", "show", f"{NAME}@champion")
    assert shown["version"] == "3" and shown["tags"]["mlflow_run_id"] == snapshots["run_id"]  # lineage
    moved = store.json("models", "promote", NAME, "2", "--by", "alice", "--reason", "why not")
    assert {k: moved[k] for k in ("moved", "previous", "version", "by", "action", "reason")} == {
        "moved": True, "previous": "3", "version": "2", "by": "alice", "action": "promote", "reason": "why not"}
    assert store.json("models", "history", NAME)[-1]["from"] == moved["at"]
    back = store.json("models", "rollback", NAME, "--by", "carol")
    assert (back["previous"], back["version"], back["action"]) == ("2", "3", "rollback")
    assert store.json("models", "promote", NAME, "3")["moved"] is False


def test_a_champion_moved_outside_deepgen_shows_as_untracked_and_can_be_rolled_back(store):
    store.client.set_registered_model_alias(NAME, "champion", "2")  # e.g. in the MLflow UI
    last = store.json("models", "history", NAME)[-1]
    assert (last["version"], last["action"], last["by"], last["from"]) == ("2", "untracked", "unknown", None)
    assert store.deepgen("models", "rollback", NAME)[0] == 0 and store.champion() == "3"


def test_the_history_keeps_the_newest_moves_that_fit_the_tag(store):
    for i in range(20):
        tracking.move_champion(NAME, "2" if i % 2 == 0 else "3", by="load", reason=f"move {i} " + "x" * 250)
    raw = store.client.get_registered_model(NAME).tags[tracking.HISTORY_TAG]
    assert len(raw) <= tracking.HISTORY_MAX_CHARS
    rows = tracking.champion_history(NAME)
    assert 5 < len(rows) < 20 and rows[-1]["reason"].startswith("move 19 ") and rows[-1]["current"]
    assert tracking.rollback_champion(NAME, by="ops").version == "2"
