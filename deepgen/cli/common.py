"""What every `deepgen` command shares: the parser class and argument helpers. (The rules for output files,
checked before anything runs and written beside their place, are deepgen.files.check_output and
writing_output.)"""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """A bad flag is one line, `deepgen: error: argument --n: ...`, like every other bad input (argparse
    prints its usage first); `--help` still shows the usage. Subcommand parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"deepgen: error: {message}\n")


def at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number >= minimum (and <= maximum; argparse names the flag when it is not)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is too large; give at most {maximum}")
        return value

    return whole_number


def add_json(p: argparse.ArgumentParser) -> None:
    """--json: the command's result is one JSON object on stdout (console.report / print_json), or
    {error, exit_status} when it fails; everything else it prints goes to stderr."""
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the result, or {error, exit_status}); all else on stderr")
    p.set_defaults(json_result=True)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace an existing output file (a regular file only)")


def add_model_ref(p: argparse.ArgumentParser) -> None:
    """--model (a registry reference) and --runs-dir, for the commands that use one registered model."""
    p.add_argument("--model", required=True, help="NAME@ALIAS, NAME/VERSION or NAME (latest)")
    p.add_argument("--runs-dir", default="deepgen-runs", help="local runs folder (when no MLFLOW_TRACKING_URI)")


def add_models_args(p: argparse.ArgumentParser) -> None:
    """--json and --runs-dir, for the `models` subcommands."""
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--runs-dir", default="deepgen-runs", help="local runs folder (when no MLFLOW_TRACKING_URI)")


def add_move_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why, kept in the history (e.g. a ticket or incident id)")
    p.add_argument("--by", help="who moves it (default: $DEEPGEN_USER, else the OS user)")
    add_models_args(p)


