"""What every `deepgen` command shares: the parser class, argument helpers, and the rules for output files
(checked before anything runs, written beside their place and renamed onto it)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from deepgen import console, files
from deepgen.errors import DataError, DeepgenError


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


def check_output(out: Path, *inputs: Path, folder: bool = False, force: bool = False) -> None:
    """Refuse, before any work, an output that would replace an input, or a folder output that is a file or
    already holds files (they would be mixed with, or lost to, the new ones).

    A file output is a new path, or an existing regular file with --force. The output is renamed into
    place, so a symbolic link, a device node (/dev/full) or a pipe there would be replaced by a file
    (as root, the device node itself): those are refused, as is a folder."""
    for src in inputs:
        if out.resolve() == src.resolve():
            raise DeepgenError(f"{out}: the output would replace the input; give another path")
    if out.is_symlink():
        raise DeepgenError(f"{out}: is a symbolic link; give the path of a new file (links are not followed "
                           "or replaced)")
    if out.exists() and not out.is_dir() and not out.is_file():
        raise DeepgenError(f"{out}: is not a regular file (a device, pipe or socket); give the path of a new file")
    if not folder and out.is_file() and not force:
        raise DeepgenError(f"{out}: already exists; add --force to replace it, or give a new path")
    if folder and out.exists() and not out.is_dir():
        raise DeepgenError(f"{out}: is a file; give a new or empty folder for the images")
    if folder and out.is_dir() and any(out.iterdir()):
        raise DeepgenError(f"{out}: the folder is not empty; give a new or empty folder (nothing is overwritten)")
    if not folder and out.is_dir():
        raise DeepgenError(f"{out}: is a folder; give a file name to write")


@contextlib.contextmanager
def writing_output(out: Path):
    """deepgen.files.writing, its failures said in one line: a failed command leaves no half-written output."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, no permission, ...
        raise DeepgenError(f"{out}: cannot create its folder {out.parent}: {_os_reason(e)}") from None
    try:
        with files.writing(out) as tmp:
            yield tmp
    except OSError as e:  # no room, no permission, ...
        raise DataError(f"{out}: cannot write it: {_os_reason(e)}") from None


_os_reason = console.os_reason
