"""deepgen.schedule: cron parsing and slots, and the three schedule targets it renders. No Ray, no cluster."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from deepgen import schedule
from deepgen.errors import DeepgenError
from deepgen.schedule import ScheduleError, format_slot, parse_cron, slot_for

PIPELINE = "pipelines/quickstart.yaml"
ROOT = Path(__file__).resolve().parents[1]


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- cron parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, field", [
    ("0 3 * *", None),                 # field count
    ("0 3 * * * *", None),
    ("60 3 * * *", "minute"),
    ("0 24 * * *", "hour"),
    ("0 3 0 * *", "day-of-month"),
    ("0 3 * 13 *", "month"),
    ("0 3 * * 8", "day-of-week"),
    ("*/0 * * * *", "minute"),
    ("0 5-1 * * *", "hour"),
    ("0 3 * foo *", "month"),
    ("0 3 31 2 *", "day-of-month"),    # never happens
    ("0 3 30 2,4 *", None),            # fine: April has a 30th (checked below)
    ("0,,5 * * * *", "minute"),
    ("a * * * *", "minute"),
])
def test_bad_cron_expressions_name_the_field_in_one_line(expr, field):
    if expr == "0 3 30 2,4 *":
        assert schedule.validate_cron(expr) == expr
        return
    with pytest.raises(ScheduleError) as e:
        parse_cron(expr)
    message = str(e.value)
    assert "\n" not in message and expr in message
    if field:
        assert f"{field} field" in message
    else:
        assert "expected 5 fields" in message


def test_schedule_errors_are_deepgen_errors_so_the_cli_prints_them():
    assert issubclass(ScheduleError, DeepgenError)
    with pytest.raises(ScheduleError, match="empty"):
        parse_cron("  ")
    with pytest.raises(ScheduleError, match="unknown macro"):
        parse_cron("@sometimes")


def test_lists_ranges_steps_names_and_macros():
    c = parse_cron("5,10-20/5,*/30 8-18/2 * jan,JUL-sep mon-fri")
    assert c.minutes == {0, 5, 10, 15, 20, 30}
    assert c.hours == {8, 10, 12, 14, 16, 18}
    assert c.months == {1, 7, 8, 9}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}       # N/step runs to the top of the range
    assert parse_cron("0 0 * * 7").weekdays == {0}                  # 7 is Sunday too
    assert parse_cron("0 0 * * 3/4").weekdays == {3, 0}             # 3 and 7
    daily = parse_cron("@daily")
    assert (daily.minutes, daily.hours, daily.expr) == ({0}, {0}, "@daily")
    assert parse_cron("@hourly").minutes == {0} and len(parse_cron("@hourly").hours) == 24


# --- slots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cron, now, slot", [
    # daily at 03:00
    ("0 3 * * *", "2026-11-27T03:00:00", "2026-11-27T03:00"),
    ("0 3 * * *", "2026-11-27T03:00:59", "2026-11-27T03:00"),
    ("0 3 * * *", "2026-11-27T02:59:59", "2026-11-26T03:00"),
    ("0 3 * * *", "2026-11-27T23:10:00", "2026-11-27T03:00"),
    # every 15 minutes
    ("*/15 * * * *", "2026-11-27T10:14:59", "2026-11-27T10:00"),
    ("*/15 * * * *", "2026-11-27T10:15:00", "2026-11-27T10:15"),
    ("*/15 * * * *", "2026-11-27T00:07:00", "2026-11-27T00:00"),
    ("*/15 * * * *", "2026-01-01T00:01:00", "2026-01-01T00:00"),
    # weekdays at 09:00 (2026-11-27 is a Friday)
    ("0 9 * * 1-5", "2026-11-27T09:30:00", "2026-11-27T09:00"),
    ("0 9 * * 1-5", "2026-11-29T12:00:00", "2026-11-27T09:00"),    # Sunday -> Friday
    ("0 9 * * 1-5", "2026-11-30T08:59:00", "2026-11-27T09:00"),    # Monday before nine -> Friday
    ("0 9 * * mon-fri", "2026-11-30T09:00:00", "2026-11-30T09:00"),
    # month and year boundaries
    ("0 0 1 * *", "2026-03-01T00:00:00", "2026-03-01T00:00"),
    ("0 0 1 * *", "2026-02-28T23:59:00", "2026-02-01T00:00"),
    ("30 23 31 * *", "2026-05-15T12:00:00", "2026-03-31T23:30"),   # April has no 31st
    ("0 0 1 1 *", "2026-01-01T00:00:00", "2026-01-01T00:00"),
    ("59 23 31 12 *", "2026-01-01T00:00:00", "2025-12-31T23:59"),
    ("0 0 29 2 *", "2026-05-01T00:00:00", "2024-02-29T00:00"),     # leap day, two years back
    ("0 12 28-31 * *", "2026-03-01T11:00:00", "2026-02-28T12:00"),
    # day-of-month OR day-of-week when both are restricted (cron semantics)
    ("0 0 13 * 5", "2026-11-25T00:00:00", "2026-11-20T00:00"),     # Friday 20th beats the 13th
    ("0 0 13 * 5", "2026-11-14T00:00:00", "2026-11-13T00:00"),
    # a stepped star counts as restricted (as Kubernetes' and KubeRay's cron library reads it)
    ("0 0 */10 * 1", "2026-11-24T00:00:00", "2026-11-23T00:00"),   # a Monday, not a 1st/11th/21st
])
def test_slot_is_the_latest_scheduled_time_at_or_before_now(cron, now, slot):
    got = slot_for(cron, dt(now))
    assert got.strftime("%Y-%m-%dT%H:%M") == slot
    assert parse_cron(cron).matches(got)
    # and nothing later up to now matches
    t = got + timedelta(minutes=1)
    while t <= dt(now):
        assert not parse_cron(cron).matches(t), t
        t += timedelta(minutes=1)
        if t - got > timedelta(days=3):
            break


def test_slot_keeps_the_time_zone_and_formats_in_utc():
    cet = timezone(timedelta(hours=1))
    got = slot_for("0 3 * * *", datetime(2026, 11, 27, 3, 30, tzinfo=cet))
    assert got == datetime(2026, 11, 27, 3, 0, tzinfo=cet)
    assert format_slot(got) == "2026-11-27T02:00Z"
    assert format_slot(datetime(2026, 11, 27, 3, 0)) == "2026-11-27T03:00Z"   # naive = UTC
    assert schedule.parse_slot("2026-11-27T03:00Z") == datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="YYYY-MM-DDTHH:MMZ"):
        schedule.parse_slot("2026-11-27 03:00")


def test_retries_and_late_starts_of_one_tick_share_its_slot():
    base = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    slots = {schedule.current_slot("0 3 * * *", base + timedelta(minutes=m)) for m in (0, 1, 59, 600, 1439)}
    assert slots == {"2026-11-27T03:00Z"}
    assert schedule.current_slot("0 3 * * *", base + timedelta(days=1)) == "2026-11-28T03:00Z"


def test_next_after_is_the_following_tick():
    assert schedule.next_after("0 3 * * *", dt("2026-11-27T03:00:00")) == dt("2026-11-28T03:00:00")
    assert schedule.next_after("*/15 * * * *", dt("2026-12-31T23:50:00")) == dt("2027-01-01T00:00:00")
    assert schedule.next_after("0 9 * * 1-5", dt("2026-11-27T09:00:00")) == dt("2026-11-30T09:00:00")


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
