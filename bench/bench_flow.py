"""Speed of pyflow.coarse2fine_flow with iSeeBetter's parameters.

    python bench/bench_flow.py                  # the four standard sizes
    python bench/bench_flow.py --repeats 9 --isa baseline

For each size: ms per flow single-threaded (min over repeats; wall clock, and the thread's CPU
time, which other processes on a busy machine disturb less), per flow for six flows in a row
(the six neighbours of one iSeeBetter sample), and per flow for the same six in parallel
threads (pyflow.coarse2fine_flows); then the parallel speed-up, and the original pyflow's time
measured on the project machine (single-threaded) with our wall-clock speed-up over it. Run
it on a quiet machine. The images are a smooth random texture and six shifted
copies (the work does not depend on the content: every iteration count is fixed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

import cli
import pyflow
from pyflow import _pyflow

# (width, height) -> ms of the original pyflow (pathak22 build), single-threaded, same machine.
REFERENCE_MS = {(64, 64): 44, (112, 64): 80, (180, 144): 318, (320, 180): 737}
SHIFTS = [(0, 1), (1, 0), (1, 1), (-1, 2), (2, -1), (-2, -2)]  # six neighbours


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture in [0, 1], (h + 8, w + 8, 3)."""
    im = np.random.default_rng(seed).random((h + 8, w + 8, 3))
    for _ in range(2):
        for axis in (0, 1):
            im = (im + np.roll(im, 1, axis) + np.roll(im, -1, axis)) / 3
    return (im - im.min()) / (im.max() - im.min())


def frames(w: int, h: int) -> tuple[np.ndarray, list[np.ndarray]]:
    big = texture(h, w)
    crop = (slice(4, 4 + h), slice(4, 4 + w))
    others = [np.ascontiguousarray(np.roll(big, s, (0, 1))[crop]) for s in SHIFTS]
    return np.ascontiguousarray(big[crop]), others


def best_of(repeats: int, fn: Callable[[], object],
            clock: Callable[[], float] = time.perf_counter) -> float:
    """Minimum seconds of fn over `repeats` runs (after one warm-up run) on `clock`."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda text: cli.parse_size(text, minimum=2), nargs="+",
                        default=list(REFERENCE_MS), metavar="WxH",
                        help="image sizes (default: 64x64 112x64 180x144 320x180)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement, the minimum is reported "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for the six parallel flows (default: one per flow, at "
                             "most one per available CPU)")
    parser.add_argument("--isa", choices=("baseline", "avx2", "avx512"), default=None,
                        help="instruction set of the core (default: the best this CPU has)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise cli.CLIError(f"--repeats must be >= 1, got {args.repeats}")
    if args.workers is not None and args.workers < 1:
        raise cli.CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.isa is not None and not _pyflow.set_isa(args.isa):
        raise cli.CLIError(f"--isa {args.isa}: not supported by this CPU or build")

    params = pyflow.ISEEBETTER_PARAMS
    workers = args.workers or pyflow.flow.default_workers(len(SHIFTS))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"pyflow.coarse2fine_flow, iSeeBetter parameters {params}")
    print(f"core: {_pyflow.isa()}; {cpus} CPU(s) available, {workers} thread(s) for the six "
          f"parallel flows; {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}; min of {args.repeats} runs, wall clock")
    header = (f"{'size':>9} | {'single ms':>9} | {'(cpu ms)':>8} | {'6 in a row':>10} | "
              f"{'6 parallel':>10} | {'parallel x':>10} | {'original ms':>11} | "
              f"{'vs original':>11}")
    print(header)
    print("-" * len(header))
    for w, h in args.sizes:
        im1, others = frames(w, h)

        def one(im1=im1, other=others[0]):
            return pyflow.coarse2fine_flow(im1, other, **params)

        def in_a_row(im1=im1, others=others):
            return [pyflow.coarse2fine_flow(im1, other, **params) for other in others]

        def in_threads(im1=im1, others=others):
            return pyflow.coarse2fine_flows(im1, others, max_workers=workers, **params)

        single = best_of(args.repeats, one)
        single_cpu = best_of(args.repeats, one, time.thread_time)
        in_row = best_of(args.repeats, in_a_row) / len(others)
        parallel = best_of(args.repeats, in_threads) / len(others)
        reference = REFERENCE_MS.get((w, h))
        ref_text = f"{reference:>11}" if reference else f"{'-':>11}"
        gain = f"{reference / (single * 1000):>10.1f}x" if reference else f"{'-':>11}"
        print(f"{f'{w}x{h}':>9} | {single * 1000:>9.1f} | {single_cpu * 1000:>8.1f} | "
              f"{in_row * 1000:>10.1f} | "
              f"{parallel * 1000:>10.1f} | {in_row / parallel:>9.2f}x | {ref_text} | {gain}",
              flush=True)
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
