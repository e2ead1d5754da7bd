"""Train-dataloader throughput and padding for every sampler x bucketing setting (one CPU thread; target at
the defaults, sampler none with bucketing: 50,000 pairs/s on an idle core); with ``--build-from RAW_DIR``,
first the time of a default build from the raw corpora (target: under 30 s).

python -m mmdigits.bench.data [--dir Dataset] [--batch-size 256] [--batches N] [--build-from RAW_DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mmdigits.data.build import build_dataset
from mmdigits.data.datamodule import MMDigitsDataModule
from mmdigits.data.samplers import SAMPLERS
from mmdigits.errors import DataError


def bench(dm: MMDigitsDataModule, sampler: str, bucketing: bool, batches: int | None) -> dict[str, float]:
    dm.sampler, dm.bucketing = sampler, bucketing
    loader = dm._loader(dm.train_set, dm.make_train_sampler())  # type: ignore[arg-type]
    n_batches = pairs = real = padded = 0
    t = time.perf_counter()
    for b in loader:
        n_batches += 1
        pairs += len(b["index"])
        real += int(b["lengths"].sum())
        padded += b["audio"].shape[0] * b["audio"].shape[1]
        if batches and n_batches >= batches:
            break
    dt = time.perf_counter() - t
    return {
        "batches_s": n_batches / dt,
        "pairs_s": pairs / dt,
        "pad_frac": 1 - real / padded,
        "batches": n_batches,
    }


def build_seconds(raw_dir: str, verify: bool = True) -> float:
    """Seconds to build the default challenge files from ``raw_dir`` (into a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build_dataset(Path(tmp) / "Dataset", raw_dir, verify=verify, download=False)
        return time.perf_counter() - t


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdigits.bench.data", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="Dataset")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=None, help="batches per setting (default: one epoch)")
    p.add_argument("--build-from", metavar="RAW_DIR", help="also time a default build from these raw corpora")
    p.add_argument("--no-verify", action="store_true", help="skip the raw files' checksums in that build")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    dm = MMDigitsDataModule(dir=a.dir, batch_size=a.batch_size)
    try:
        if a.build_from:
            seconds = build_seconds(a.build_from, verify=not a.no_verify)
            print(f"build (raw corpora -> challenge files, default settings): {seconds:.2f} s")
        t = time.perf_counter()
        dm.setup("fit")
        print(
            f"setup (load + validate + tensors): {time.perf_counter() - t:.2f} s; "
            f"train part {len(dm.train_set)}"
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'sampler':<12}{'bucketing':<11}{'batches':>8}{'batches/s':>11}{'pairs/s':>11}{'padding':>9}")
    for sampler in SAMPLERS:
        for bucketing in (False, True):
            r = bench(dm, sampler, bucketing, a.batches)
            print(
                f"{sampler:<12}{str(bucketing):<11}{r['batches']:>8}{r['batches_s']:>11.0f}"
                f"{r['pairs_s']:>11.0f}{r['pad_frac']:>9.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
