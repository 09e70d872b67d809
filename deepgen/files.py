"""Folders written so that an interrupted write never leaves a half folder where a reader looks."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def copy_into_place(src: Path, dest: Path) -> None:
    """Copy the folder `src` beside `dest`, then rename it onto `dest` (replacing an older one): a crash
    mid-copy leaves `dest` as it was, and the hidden partial copy is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

