"""The `deepgen` command: one parser over the pipeline commands (deepgen.cli.pipeline), the registry commands
(deepgen.cli.registry) and the cluster commands (deepgen.cli.cluster), and one entry point, `main`, whose
errors go through deepgen.console.run_command like every other entry point's."""

from __future__ import annotations

import argparse
import sys
import warnings

from deepgen import console
from deepgen.cli import cluster, pipeline, registry
from deepgen.cli.common import Parser


def build_parser() -> argparse.ArgumentParser:
    from deepgen import __version__

    parser = Parser(
        prog="deepgen",
        description="Train, evaluate and register deep models with Ray Train and MLflow.",
        epilog="exit status: 0 done; 2 a usage or spec error (a flag, a pipeline file, an input argument);\n"
               "  1 a failure at run time (data, training, registry, cluster); 130 interrupted.\n\n"
               + console.environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deepgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    pipeline.add_commands(sub)  # prepare, train, run, tune, validate, schema
    registry.add_use_commands(sub)  # score, predict, embed, search, sample, upscale
    pipeline.add_corpus_command(sub)
    registry.add_models_commands(sub)
    cluster.add_cluster_commands(sub)  # submit, jobs, schedule
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a usage or spec error, 1 a failure at run time, 130 interrupted (see console)."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="mlflow")
    as_json = getattr(args, "json", False) and getattr(args, "json_result", False)
    return console.run_command(lambda: args.func(args), as_json=as_json, address=getattr(args, "address", None))


if __name__ == "__main__":
    sys.exit(main())
