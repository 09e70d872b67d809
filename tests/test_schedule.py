"""deepgen.schedule: the three schedule targets it renders, and `python -m deepgen.schedule slot` (cron parsing
and slots: tests/test_cron.py). No Ray, no cluster."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from deepgen import schedule
from deepgen.cron import ScheduleError, parse_cron

PIPELINE = "pipelines/quickstart.yaml"
ROOT = Path(__file__).resolve().parents[1]


def test_slot_command_line(capsys):
    assert schedule.main(["slot", "--cron", "0 3 * * *", "--now", "2026-11-27T04:10"]) == 0
    assert capsys.readouterr().out == "2026-11-27T03:00Z\n"
    assert schedule.main(["slot", "--cron", "0 3 * *"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepgen: error: cron '0 3 * *': expected 5 fields") and "\n" not in err


# --- what each target gets -------------------------------------------------------------------------


@pytest.mark.parametrize("cron, written", [
    ("0 3 * * 7", "0 3 * * 0"), ("0 3 * * 5-7", "0 3 * * 0,5,6"), ("0 3 * * 3/4", "0 3 * * 0,3"),
    ("0 3 * * mon-fri", "0 3 * * mon-fri"), ("@weekly", "@weekly"), ("*/5 * * * *", "*/5 * * * *"),
])
def test_schedules_are_written_in_the_day_of_week_range_kubernetes_accepts(cron, written):
    """robfig/cron (Kubernetes CronJob, KubeRay RayCronJob) refuses a day-of-week of 7 and ends N/step at 6."""
    assert schedule.render_raycronjob(PIPELINE, "quickstart", cron)["spec"]["schedule"] == written
    assert parse_cron(written).weekdays == parse_cron(cron).weekdays


def test_raycronjob_holds_the_cron_the_entrypoint_and_the_pipeline():
    m = schedule.render_raycronjob(PIPELINE, "quickstart", "0 3 * * *", storage="s3://bucket/ray")
    m = yaml.safe_load(schedule.to_yaml(m))                 # survives a YAML round trip
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayCronJob")
    assert m["spec"]["schedule"] == "0 3 * * *"
    job = m["spec"]["jobTemplate"]
    assert "spec" not in job                                 # RayCronJob takes RayJob fields directly
    assert shlex.split(job["entrypoint"]) == [
        "python", "jobs/retrain.py", PIPELINE, "--cron", "0 3 * * *", "--storage", "s3://bucket/ray"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"env_vars": {"MLFLOW_TRACKING_URI": schedule.TRACKING_URI}}
    assert m["metadata"]["name"] == "deepgen-retrain-quickstart"
    with pytest.raises(ScheduleError, match="hour field"):
        schedule.render_raycronjob(PIPELINE, "quickstart", "0 25 * * *")


def test_rayjob_runs_the_pipeline_once():
    m = yaml.safe_load(schedule.to_yaml(schedule.render_rayjob(PIPELINE, "quickstart")))
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayJob")
    assert shlex.split(m["spec"]["entrypoint"]) == ["python", "jobs/run_pipeline.py", PIPELINE]
    m = schedule.render_rayjob(PIPELINE, "quickstart", storage="/mnt/x")
    assert shlex.split(m["spec"]["entrypoint"])[-2:] == ["--set", "tracking.storage_path=/mnt/x"]


def test_kubernetes_cronjob_submits_with_a_slot_computed_in_the_pod():
    m = schedule.render_cronjob(PIPELINE, "quickstart", "*/15 * * * *", address="http://head:8265",
                                tracking_uri="http://mlflow:5000", storage="/shared/ray")
    m = yaml.safe_load(schedule.to_yaml(m))
    assert (m["apiVersion"], m["kind"]) == ("batch/v1", "CronJob")
    spec = m["spec"]
    assert spec["schedule"] == "*/15 * * * *" and spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    sh, dash_c, text = container["command"]
    assert (sh, dash_c) == ("sh", "-c")
    # Kubernetes turns $$ into $, then the shell substitutes the slot
    text = text.replace("$$", "$")
    words = shlex.split(text)
    assert words[:3] == ["exec", "deepgen", "submit"]
    assert words[3:12] == [PIPELINE, "--address", "http://head:8265", "--tracking-uri", "http://mlflow:5000",
                           "--storage", "/shared/ray", "--slot",
                           "$(python -m deepgen.schedule slot --cron '*/15 * * * *')"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "deepgen-ray-token", "key": "auth_token"}
    assert "value" not in env["RAY_AUTH_TOKEN"]


def test_crontab_line_submits_or_runs_locally(tmp_path):
    line = schedule.render_crontab_line(PIPELINE, "quickstart", "0 3 * * 1-5", project_dir=tmp_path,
                                        address="http://127.0.0.1:8265", tracking_uri="http://mlflow:5000")
    fields = line.split(" ", 5)
    assert fields[:5] == ["0", "3", "*", "*", "1-5"]
    command = fields[5]
    assert command.startswith(f"cd {tmp_path} && mkdir -p deepgen-runs/schedule && RAY_AUTH_MODE=token "
                              ".venv/bin/deepgen submit pipelines/quickstart.yaml --address http://127.0.0.1:8265 "
                              "--tracking-uri http://mlflow:5000 --slot \"$(.venv/bin/python -m deepgen.schedule "
                              "slot --cron '0 3 * * 1-5' --local)\"")
    assert command.endswith(" >> deepgen-runs/schedule/quickstart.log 2>&1")
    assert "\n" not in line and "%" not in line

    local = schedule.render_crontab_line(PIPELINE, "quickstart", "@daily", project_dir=tmp_path)
    assert local.startswith("@daily cd ")
    assert ".venv/bin/python jobs/retrain.py pipelines/quickstart.yaml --slot \"$(" in local
    assert "deepgen submit" not in local and "RAY_AUTH_MODE" not in local

    odd = schedule.render_crontab_line(PIPELINE, "q", "0 3 * * *", project_dir=tmp_path / "100%")
    assert "100\\%" in odd                                     # cron reads a bare % as a newline


def test_write_schedule_writes_three_files(tmp_path):
    pipeline = tmp_path / "nightly.yaml"
    pipeline.write_text("name: Nightly_AE.v2\ndata: {source: {kind: digits}}\n")
    paths = schedule.write_schedule(tmp_path / "out", str(pipeline), "0 3 * * *", project_dir=tmp_path)
    assert [p.name for p in paths] == ["nightly-ae-v2.raycronjob.yaml", "nightly-ae-v2.cronjob.yaml",
                                       "nightly-ae-v2.crontab"]
    assert all(p.is_file() for p in paths)
    rcj = yaml.safe_load(paths.raycronjob.read_text())
    cj = yaml.safe_load(paths.cronjob.read_text())
    assert rcj["kind"] == "RayCronJob" and cj["kind"] == "CronJob"
    assert rcj["metadata"]["labels"]["deepgen.io/pipeline"] == "Nightly_AE.v2"
    assert cj["metadata"]["name"] == "deepgen-submit-nightly-ae-v2"
    assert paths.raycronjob.read_text().startswith("# KubeRay RayCronJob")
    crontab = [ln for ln in paths.crontab.read_text().splitlines() if not ln.startswith("#")]
    assert len(crontab) == 1 and crontab[0].startswith("0 3 * * * cd ")
    with pytest.raises(ScheduleError, match="minute field"):
        schedule.write_schedule(tmp_path / "bad", str(pipeline), "99 3 * * *")
    assert not (tmp_path / "bad").exists()


def test_names_fit_kubernetes():
    long_a = schedule.k8s_name("deepgen-retrain", "A_Very.Long.Pipeline-Name-That-Goes-On-And-On")
    long_b = schedule.k8s_name("deepgen-retrain", "A_Very.Long.Pipeline-Name-That-Goes-Elsewhere")
    assert long_a.startswith("deepgen-retrain-a-very-l") and len(long_a) <= 30 and long_a != long_b
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long_a)
    assert schedule.k8s_name("deepgen-retrain", "Nightly_AE.v2") == "deepgen-retrain-nightly-ae-v2"
    assert len(schedule.k8s_name("x" * 100)) == 30
    with pytest.raises(ScheduleError):
        schedule.k8s_name("___")
    assert schedule.pipeline_name(ROOT / PIPELINE) == "quickstart"
    with pytest.raises(ScheduleError, match="no such pipeline file"):
        schedule.pipeline_name(ROOT / "pipelines" / "nope.yaml")
