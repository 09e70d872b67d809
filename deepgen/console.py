"""What the `deepgen` command shows: exit statuses, one JSON object for scripts (`--json`), and the
environment variables deepgen reads. Commands added later adopt these instead of their own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepgen.errors import DeepgenError, first_line, os_reason

# Exit statuses: 0 success; 2 a usage or spec error (argparse's own status too); 1 a failure at run time.
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

# Every environment variable deepgen reads, for `deepgen --help` and the README.
ENVIRONMENT = {
    "MLFLOW_TRACKING_URI": "tracking store and registry (default: SQLite under --runs-dir / the spec's runs folder)",
    "MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD": "an MLflow server's login; `submit` passes them to the job",
    "RAY_ADDRESS": "a running Ray cluster for run/train/tune (HOST:6379 or ray://HOST:10001); "
                   "submit/jobs also take its http://HOST:8265 form",
    "RAY_API_SERVER_ADDRESS": "the Ray job API for submit/jobs, http://HOST:8265 (before RAY_ADDRESS)",
    "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH": "a token-auth cluster's token, or its file (default ~/.ray/auth_token); "
                                          "when one is there, RAY_AUTH_MODE=token is set for you",
    "RAY_AUTH_MODE": "token or disabled: Ray's own setting, respected when set",
    "DEEPGEN_USER": "who moves the champion alias (default: the OS user)",
    "DEEPGEN_GIT_COMMIT": "the commit recorded on runs where there is no git checkout",
}


def environment_help() -> str:
    import textwrap

    lines = ["environment variables deepgen reads:"]
    for name, what in ENVIRONMENT.items():
        lines += [f"  {name}", *textwrap.wrap(what, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)]
    return "\n".join(lines)


def exit_status(error: BaseException) -> int:
    """2 for usage and spec errors, 1 for failures at run time (an unreadable or unwritable file is one)."""
    if isinstance(error, DeepgenError):
        return error.exit_status
    return FAILED


_pending: list[dict[str, Any]] | None = None  # the --json result, written once stdout is stdout again


@contextlib.contextmanager
def json_stdout(enabled: bool):
    """Under --json, everything the command and the libraries under it print (Python or C, this process or
    its children) goes to stderr; the object `print_json` was given is written to stdout at the end."""
    global _pending
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved_fd, real_stdout = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout, _pending = sys.stderr, []
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout, results, _pending = real_stdout, _pending, None
        for info in results:
            print_json(info)


def print_json(info: dict[str, Any]) -> None:
    """The command's one JSON object, on stdout."""
    if _pending is not None:
        _pending.append(info)
        return
    sys.stdout.write(json.dumps(info, default=str) + "\n")
    sys.stdout.flush()


def report(args, info: dict[str, Any], text: str) -> int:
    """A command's result: `text` for a person, or `info` as one JSON object under --json."""
    if getattr(args, "json", False):
        print_json(info)
    else:
        print(text)
    return OK


def run_command(command: Callable[[], int], *, as_json: bool = False, address: str | None = None,
                interrupted: str = "interrupted; rerun the same command to resume") -> int:
    """The one error handler of every entry point (`deepgen`, jobs/retrain.py, `python -m deepgen.schedule`):
    runs `command()` and returns its exit status; a DeepgenError or OSError is one line `deepgen: error: ...`
    on stderr (and {error, exit_status} under --json) with its exit status, an interrupt 130, a refused Ray
    token its own line. Any other exception is a bug, and keeps its traceback."""
    try:
        with json_stdout(as_json):
            return command()
    except BrokenPipeError:  # `deepgen schema | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    except (DeepgenError, OSError) as e:  # OSError: a file that cannot be read or written, a full disk, ...
        status, line = exit_status(e), error_line(e)
    except KeyboardInterrupt:
        status, line = INTERRUPTED, interrupted
    except Exception as e:
        from deepgen.ray_access import is_auth_error, token_refusal

        if not is_auth_error(e):  # a bug: its traceback is worth more than a line
            raise
        refusal = token_refusal(address or os.environ.get("RAY_ADDRESS") or "RAY_ADDRESS")
        status, line = refusal.exit_status, str(refusal)
    print(f"deepgen: {'error: ' if status != INTERRUPTED else ''}{line}", file=sys.stderr)
    if as_json:
        print_json({"error": line, "exit_status": status})
    return status


def when(ms: int | None) -> str:
    """A time in milliseconds since the epoch (MLflow's, Ray's) as UTC, `-` for none."""
    from datetime import UTC, datetime

    return "-" if not ms else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def error_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {os_reason(error)}"
    return str(error) if isinstance(error, DeepgenError) else first_line(error)


# --- a calm screen -----------------------------------------------------------------------------------

_screen = None  # the terminal (or stderr under --json) while `calm` sends everything else to its log file


def say(message: str) -> None:
    """One of deepgen's own lines: on the screen, also while Ray's and MLflow's go to the log file."""
    line = f"[deepgen] {message}"
    if _ticker is not None:
        _ticker.line(line)
        return
    stream = _screen or sys.stdout
    stream.write(line + "\n")
    stream.flush()


class _Ticker:
    """On a terminal, below the last line, the time its step has taken so far, redrawn every second: a
    step that works for minutes without a line (prepare, evaluation, registering) shows it is alive."""

    def __init__(self, screen):
        import threading

        self.screen, self.lock, self.stop = screen, threading.Lock(), threading.Event()
        self.since, self.drawn, self.epochs = time.monotonic(), False, None
        self.thread = threading.Thread(target=self._run, name="deepgen-ticker", daemon=True)
        self.thread.start()

    def line(self, text: str) -> None:
        with self.lock:
            self._clear()
            self.screen.write(text + "\n")
            self.screen.flush()
            self.since = time.monotonic()
            if "epoch" in text or "train:" in text:  # `train: ... N epochs`, then `epoch k/N ...` per epoch
                epoch = re.search(r"\bepoch (\d+)/(\d+)\b", text)
                self.epochs = (int(epoch[1]), int(epoch[2])) if epoch else None
            else:
                self.epochs = None

    def _clear(self) -> None:
        if self.drawn:
            self.screen.write("\r\033[K")
            self.drawn = False

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                elapsed = int(time.monotonic() - self.since)
                if elapsed >= 3:
                    status = f"{elapsed // 60}:{elapsed % 60:02d}"
                    if self.epochs:  # training: how many epochs are done, as a bar
                        done, total = self.epochs
                        filled = round(30 * done / max(total, 1))
                        status = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} epochs, this one {status}"
                    self.screen.write(f"\r\033[K  ... {status}")
                    self.screen.flush()
                    self.drawn = True

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        with self.lock:
            self._clear()
            self.screen.flush()


_ticker: _Ticker | None = None


@contextlib.contextmanager
def calm(runs_dir: str | Path, verbose: bool = False):
    """deepgen's own lines on the screen, one per step and per epoch; everything else this process and its
    children write (Ray's driver and worker lines, MLflow's, C++ logs, warnings) to RUNS_DIR/logs/*.log,
    whose path is said first. `verbose` (-v) leaves the screen as it was. Yields the log's path (None)."""
    global _screen
    if verbose or _screen is not None:
        yield None
        return
    # Ray folds repeated worker lines and prints the fold when the process exits, after the screen is back:
    # in a log file the fold saves nothing (read when Ray is imported, so before that)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    path = Path(runs_dir) / "logs" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:  # the terminal stdout (or stderr, under --json) is, before fds 1 and 2 go to the log
        _screen = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    except (OSError, ValueError, AttributeError):  # a stdout with no file descriptor (captured in a test)
        _screen = _Unclosed(sys.stdout)
    say(f"Ray's and MLflow's own lines go to {path} (-v shows them here)")
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    global _ticker
    _ticker = _Ticker(_screen) if _screen.isatty() else None
    worker_lines = _WorkerLines(_screen, path)
    worker_lines.attach()
    try:
        yield path
    finally:
        _flush_ray_folds()
        worker_lines.detach()
        if _ticker is not None:
            _ticker.close()
            _ticker = None
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        _screen.close()
        _screen = None


def _flush_ray_folds() -> None:
    """Print Ray's folded repeated lines now, into the log (where Ray was imported before RAY_DEDUP_LOGS=0)."""
    if "ray" not in sys.modules:
        return
    try:
        from ray._private.ray_logging import stderr_deduplicator, stdout_deduplicator
        from ray._private.worker import print_worker_logs
    except ImportError:
        return
    for deduplicator, stream in ((stdout_deduplicator, sys.stdout), (stderr_deduplicator, sys.stderr)):
        for batch in deduplicator.flush():
            print_worker_logs(batch, stream)


class _WorkerLines:
    """Ray hands the driver every line its workers print; deepgen's own (`[deepgen] ...`) go to the screen.
    While `calm` holds, Ray's own handler still writes every line to the log file. A worker's line can reach
    the driver after its step returned, so when the Ray that `calm` started outlives it, this handler takes
    over from Ray's: deepgen's lines to the screen, the rest appended to the log."""

    name = "deepgen_screen"

    def __init__(self, screen, log_path: Path):
        self.screen, self.log_path, self.late = screen, log_path, False

    @staticmethod
    def _dispatcher():
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher
        except ImportError:  # no Ray: nothing to route
            return None
        return global_worker_stdstream_dispatcher

    def attach(self) -> None:
        dispatcher = self._dispatcher()
        self.ray_had_printer = dispatcher is not None and any(n == "ray_print_logs" for n, _ in dispatcher.handlers)
        if dispatcher is not None:
            dispatcher.remove_handler(self.name)  # an earlier command's, in the same process
            dispatcher.add_handler(self.name, self)

    def detach(self) -> None:
        dispatcher = self._dispatcher()
        if dispatcher is None:
            return
        if not self.ray_had_printer and any(n == "ray_print_logs" for n, _ in dispatcher.handlers):
            dispatcher.remove_handler("ray_print_logs")  # ray.init ran under calm: its late lines are ours
            self.screen, self.late = sys.stdout, True
        else:
            dispatcher.remove_handler(self.name)

    def __call__(self, data: dict) -> None:
        rest = []
        for line in data.get("lines", ()):
            at = line.find("[deepgen]")
            if at < 0:
                rest.append(line)
            elif _ticker is not None:
                _ticker.line(line[at:])
            else:
                self.screen.write(line[at:] + "\n")
                self.screen.flush()
        if self.late and rest:
            with open(self.log_path, "a") as log:
                log.write("".join(f"({data.get('pid')}) {line}\n" for line in rest))


class _Unclosed:
    """A stream `calm` writes to but does not own."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self.stream.flush()
