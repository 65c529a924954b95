"""Training-loader throughput: samples per second with 0, 1 and 2 DataLoader workers, with and
without the flow cache (warm).

    python bench/bench_loader.py                       # ../shared/data/vimeo_septuplet
    python bench/bench_loader.py --data_dir vimeo_septuplet/sequences --samples 200

Training settings of the original: nFrames 7, x4, LR patch 64, augmentation on, future frames.
The original loader does about 3.5 samples/s per core (six 64x64 pyflow flows at ~44 ms each);
the target is 3x that (10.5 samples/s) on 2 cores without the cache.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

import cli  # noqa: E402
import data  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "vimeo_septuplet" / "sequences"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(dataset, workers: int, samples: int, batch_size: int, seed: int) -> tuple[float, float]:
    """(samples/s after the first batch, CPU ms per sample over the whole run).

    Wall-clock throughput excludes worker start-up; the CPU cost per sample is what a loaded
    machine cannot hide, so it also gives the ceiling on N quiet cores: N * 1000 / cpu_ms.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=samples, generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    cpu_start = cpu_seconds()
    batches = iter(loader)
    first = next(batches)[0].shape[0]
    start, counted = time.perf_counter(), 0
    for batch in batches:
        counted += batch[0].shape[0]
    rate = counted / (time.perf_counter() - start)
    del batches  # joins the workers, so that their CPU time is counted
    return rate, 1000 * (cpu_seconds() - cpu_start) / (counted + first)


def flow_difference(plain, cached, repeats: int = 2) -> None:
    """How far the cache's flows (full-frame flow, cropped) are from flows computed on the patch
    itself, over every septuplet and ``repeats`` random patches each (augmentation off)."""
    errors, p95, magnitude = [], [], []
    for index in range(len(plain)):
        for repeat in range(repeats):
            random.seed(1000 * index + repeat)
            fresh = plain.load_sample(index)
            random.seed(1000 * index + repeat)
            reused = cached.load_sample(index)
            for a, b in zip(fresh[3], reused[3], strict=True):
                epe = torch.linalg.vector_norm(a - b, dim=0).numpy()
                errors.append(epe.mean())
                p95.append(np.percentile(epe, 95))
                magnitude.append(torch.linalg.vector_norm(a, dim=0).mean().item())
    print(f"\ncached (cropped full-frame) vs patch flows over {len(errors)} flows: mean end-point "
          f"error {np.mean(errors):.3f} px (median per flow {np.median(errors):.3f}, worst flow "
          f"{np.max(errors):.2f}), mean 95th percentile {np.mean(p95):.2f} px; "
          f"mean flow length {np.mean(magnitude):.2f} px")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA),
                        help=f"Vimeo-90K sequences folder (default: {DEFAULT_DATA})")
    parser.add_argument("--file_list", default="sep_trainlist.txt",
                        help="septuplet list (default: sep_trainlist.txt)")
    parser.add_argument("--samples", type=int, default=48,
                        help="samples per measurement, after one warm-up batch (default: 48)")
    parser.add_argument("--batch_size", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="DataLoader worker counts to measure (default: 0 1 2)")
    parser.add_argument("--nFrames", type=int, default=7, help="frames per sample (default: 7)")
    parser.add_argument("--patch_size", type=int, default=64, help="LR patch (default: 64)")
    parser.add_argument("--upscale_factor", type=int, default=4, help="scale (default: 4)")
    cli.add_bool_flag(parser, "--cache", default=True,
                      help="also measure with a warm flow cache (in a temporary folder)")
    cli.add_bool_flag(parser, "--flow_difference", default=False,
                      help="also measure how far cached flows (cropped from the full frame) are "
                           "from flows computed on the patch (two patches per septuplet)")
    parser.add_argument("--seed", type=int, default=123, help="random seed (default: 123)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 2 * args.batch_size:
        raise cli.CLIError(f"--samples {args.samples}: need at least two batches")
    cli.seed_everything(args.seed)

    def training_set(cache: str | None, augment: bool = True):
        return data.get_training_set(args.data_dir, args.nFrames, args.upscale_factor,
                                     data_augmentation=augment, file_list=args.file_list,
                                     other_dataset=False, patch_size=args.patch_size,
                                     future_frame=True, flow_cache=cache)

    print(f"loader benchmark: {args.data_dir}, nFrames {args.nFrames}, x{args.upscale_factor}, "
          f"patch {args.patch_size}, augmentation on, batch {args.batch_size}, "
          f"{args.samples} samples, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowcache-") as cache_dir:
        modes = [("off", None)] + ([("warm", cache_dir)] if args.cache else [])
        for label, cache in modes:
            dataset = training_set(cache)
            if cache is not None:
                for index in range(len(dataset)):  # fills the cache: full-frame flows
                    dataset[index]
            for workers in args.workers:
                rate, cpu_ms = measure(dataset, workers, args.samples, args.batch_size,
                                       args.seed)
                rows.append((label, workers, rate, cpu_ms))
                print(f"  cache {label:4s}  workers {workers}: {rate:6.2f} samples/s, "
                      f"{cpu_ms:5.0f} CPU ms/sample", flush=True)
        if args.flow_difference:
            flow_difference(training_set(None, False), training_set(cache_dir, False))
    cores = os.cpu_count() or 1
    print(f"\n| flow cache | workers | samples/s | CPU ms/sample | ceiling on {cores} cores |")
    print("|---|---|---|---|---|")
    for label, workers, rate, cpu_ms in rows:
        print(f"| {label} | {workers} | {rate:.2f} | {cpu_ms:.0f} | {cores * 1000 / cpu_ms:.1f} |")
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} "
          "(figures are only meaningful on a quiet machine)")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
