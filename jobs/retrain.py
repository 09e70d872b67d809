"""Scheduled retraining: `python jobs/retrain.py PIPELINE (--slot SLOT | --cron CRON) [--storage S] [--set F=V]`.

What a RayCronJob tick (`--cron`: the slot is the latest tick at or before the start time, UTC), a
`deepgen submit --slot` job, or a crontab line (`--slot`) runs. Idempotent per slot: the run name is
NAME-SPECHASH-SLOT, so running it again for the same slot resumes the Ray Train run from its last
checkpoint, finds the same MLflow run by name, and registers nothing once that run has registered a
version. A new version moves `champion` only through the registry gate. Inside a Ray job `RAY_ADDRESS`
is set and the pipeline joins the cluster; `MLFLOW_TRACKING_URI` points it at the tracking server.
"""

import sys

from deepgen.cli.cluster import retrain_main

if __name__ == "__main__":
    sys.exit(retrain_main(sys.argv[1:]))
