"""One process at a time per run name: an flock(2) on a file the cluster's nodes share.

Light on purpose (no Ray, MLflow or torch imports): `deepgen run` takes the lock before it imports them, so
a second run of the same name is refused in a second, not after the seconds those imports take.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from deepgen.config import PipelineSpec
from deepgen.errors import BusyError

LOCK_FILE = "deepgen-run.lock"
_held: set[Path] = set()  # locks this process holds: taking one again (the CLI, then run_pipeline) is a no-op


def run_lock(spec: PipelineSpec, run_name: str | None = None):
    """The lock of a run name: in its folder of the storage path (which every node of a cluster sees, so a
    cluster job and a local run of one name exclude each other too), or, for bucket storage, in the runs
    folder (shared on a cluster of more than one node, see the README)."""
    run_name = run_name or spec.run_name
    if "://" in spec.storage_path:
        path = spec.runs_dir / "locks" / f"{run_name}.lock"
    else:
        path = Path(spec.storage_path).absolute() / run_name / LOCK_FILE
    return held_lock(path, f"run {run_name}")


@contextlib.contextmanager
def held_lock(path: Path, what: str):
    """Hold an exclusive lock on `path` while the block runs, or stop at once in one line naming who holds it.

    The kernel releases an flock when its holder exits, however it exits, so a killed run leaves no stale
    lock; on NFS it is an NFS lock. The file is kept (removing it would let a second process lock a file
    the first no longer sees); it holds the last holder's pid, host and start time."""
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            raise BusyError(f"{what} is already running ({holder}); wait for it to end or stop it "
                               f"(lock {path})") from None
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
    finally:
        os.close(fd)
