"""Entry point a Ray cluster runs: `ray job submit --working-dir . -- python jobs/run_pipeline.py PIPELINE.yaml`.

Thin on purpose: parse, run, report. Inside a Ray job `RAY_ADDRESS` is set, so the pipeline joins the
cluster instead of starting a local Ray; `MLFLOW_TRACKING_URI` points it at the shared tracking server.
"""

import sys

from deepgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
