"""What the streamed reader costs per storage format: one epoch of the same 42,000 x 784 random 8-bit rows
through `deepgen.train.stream.stream_batches` (as shipped) from Parquet written three ways: float32 with
snappy (as prepare writes today), float32 uncompressed, and uint8 uncompressed with the batches turned into
float32 / 255 (as training would need them). Epochs alternate between the formats; the figure is the CPU
seconds of the whole process (the reader thread and a consumer taking every batch).

    python benchmarks/stream_codec.py [--epochs 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen.data.dataset import ROW_GROUP_BYTES  # noqa: E402
from deepgen.train import stream  # noqa: E402
from deepgen.train.env import column_to_numpy  # noqa: E402

ROWS, WIDTH, FILES = 42_000, 784, 4


def write(folder: Path, x: np.ndarray, compression: str) -> None:
    folder.mkdir()
    for i, part in enumerate(np.array_split(x, FILES)):
        table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), WIDTH)})
        pq.write_table(table, folder / f"part-{i}.parquet", compression=compression,
                       row_group_size=max(1024, ROW_GROUP_BYTES // part[0].nbytes))


def epoch(folder: Path, e: int) -> float:
    files = sorted(folder.glob("*.parquet"))
    c0 = time.process_time()
    for b in stream.stream_batches(files, stream.row_groups(files), 128, e, 0, 0, 1, True, ("features",), None,
                                   column_to_numpy, torch.device("cpu")):
        f = b["features"]
        if f.dtype == torch.uint8:
            f = f.float().div_(255)
    return time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    x8 = np.random.default_rng(0).integers(0, 256, size=(ROWS, WIDTH), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="deepgen-codec-") as tmp:
        formats = {"float32, snappy": ((x8 / 255).astype(np.float32), "snappy"),
                   "float32, uncompressed": ((x8 / 255).astype(np.float32), "none"),
                   "uint8, uncompressed, / 255": (x8, "none")}
        folders = {}
        for i, (name, (x, compression)) in enumerate(formats.items()):
            folders[name] = Path(tmp) / str(i)
            write(folders[name], x, compression)
        cpu = {name: [] for name in formats}
        for e in range(args.epochs):
            for name in (list(formats) if e % 2 == 0 else list(reversed(formats))):
                cpu[name].append(epoch(folders[name], e))
    for name, v in cpu.items():
        print(f"{name:28} median {statistics.median(v):.3f} CPU s an epoch  {[round(s, 3) for s in v]}")


if __name__ == "__main__":
    main()
