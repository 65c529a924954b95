"""What segmented video upscaling costs: one segment against many, one process against two.

    python bench/bench_segments.py                      # bundled compact weights, 40 frames
    python bench/bench_segments.py --config tiny --frames 12 --size 64x48   # smoke test

A clip of the bundled video (bigbuckbunny.mp4: its first ``--frames`` frames resized to
``--size`` with PIL bicubic, 25 fps, with its AAC audio) is upscaled x4 by
``iSeeBetterTest.py --video`` in a fresh process for each configuration:

- one segment (``--segment_frames`` as large as the clip): no segmentation at all;
- segments of ``--segment_frames`` frames (default 5): the seeks, the neighbour frames decoded
  twice, the keyframes and the join that segmentation adds;
- the automatic size (the default: about a minute of work each, measured on the first frames);
- the segments of ``--segment_frames`` split between 2 processes
  (``torchrun --standalone --nproc_per_node 2``, gloo; each process gets half the CPU
  cores, where the single process uses them all).

Reported: wall time of the whole command (start-up, model load, frames, join) and the frames
per second the script reports for its frames. Every output is checked to have the clip's
frame count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "bench"):  # the project's modules, and bench_upscale's helpers
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_upscale import CONFIGS, DEFAULT_MODEL, clip_frames, load_net  # noqa: E402

import atomic  # noqa: E402
import cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="generator weights (default: the bundled compact weights)")
    p.add_argument("--config", choices=sorted(CONFIGS),
                   help="use a randomly initialised model of this size instead of --model")
    p.add_argument("--frames", type=int, default=40, help="frames in the clip (default: 40)")
    p.add_argument("--size", type=cli.parse_size, default=(128, 96), metavar="WxH",
                   help="LR clip size (default: 128x96)")
    p.add_argument("--segment_frames", type=int, default=5,
                   help="frames per segment of the segmented runs (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="passed on (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each process (OMP_NUM_THREADS; default: torch's "
                        "choice alone, an equal share of the cores under torchrun)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def make_clip(path: Path, size: tuple[int, int], count: int) -> None:
    """The first ``count`` frames of the bundled clip at ``size`` (``clip_frames``), with
    their timestamps and the clip's audio."""
    import iSeeBetterTest
    import video

    source = iSeeBetterTest.bundled_clip()
    with video.VideoReader(source, max_frames=count) as reader:
        info, stamps = reader.info, reader.timestamps()
    with video.VideoWriter(path, *size, info.fps, info.time_base, audio_source=source,
                           crf=10) as writer:
        for image, pts in zip(clip_frames(size, count), stamps, strict=True):
            writer.write(image, pts)


def model_file(args: argparse.Namespace, workdir: Path) -> Path:
    """``--model``, or a randomly initialised model of ``--config`` saved in ``workdir``."""
    if not args.config:
        return args.model
    import checkpoint

    net, _ = load_net({"config": args.config, "model": None})
    path = workdir / "model.pth"
    checkpoint.save_weights(net.state_dict(), path)
    return path


def upscale(command: list[str], output: Path, frames: int, threads: int | None) -> dict:
    """Run one configuration; its wall time and the script's own rate."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise cli.CLIError(f"{' '.join(command[:4])} ... failed: {tail}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("wrote "))
    count = int(re.search(r"\((\d+) frames,", line)[1])
    if count != frames:
        raise cli.CLIError(f"{output}: {count} frames, expected {frames}")
    # "8 segments of 5 frames", or for the automatic size "2 segments: the first of 2 ..."
    counts = re.findall(r"(\d+) segments(?: of \d+ frames|:)", done.stderr)
    return {"wall_s": wall, "fps": float(re.search(r"\(([\d.]+) frames/s", line)[1]),
            "segments": counts[-1] if counts else "1"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is None and not args.model.is_file():
        raise cli.CLIError(f"--model {args.model}: not found (use --config tiny for a random "
                           "model)")
    script = str(ROOT / "iSeeBetterTest.py")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = workdir / "clip.mp4"
        make_clip(clip, args.size, args.frames)
        model = model_file(args, workdir)
        common = ["--video", str(clip), "-m", str(model), "--precision", args.precision,
                  "--no-gpu_mode"]
        runs = {
            "1 process, one segment": ([sys.executable, script], args.frames),
            f"1 process, segments of {args.segment_frames}": ([sys.executable, script],
                                                              args.segment_frames),
            "1 process, automatic segments": ([sys.executable, script], 0),
            f"2 processes (torchrun, gloo), segments of {args.segment_frames}": (
                [torchrun, "--standalone", "--nproc_per_node", "2", script],
                args.segment_frames),
        }
        print(f"clip: {args.frames} frames of {args.size[0]}x{args.size[1]} -> x4; model: "
              f"{args.config or args.model}; precision {args.precision}; threads "
              f"{args.threads or 'default'}\n\n"
              "| configuration | segments | wall time s | frames/s (script) |\n|---|---|---|---|")
        for i, (name, (launcher, size)) in enumerate(runs.items()):
            output = workdir / f"out{i}.mp4"
            row = upscale([*launcher, *common, "-o", str(output), "--segment_frames",
                           str(size)], output, args.frames, args.threads)
            results.append({"configuration": name, **row})
            print(f"| {name} | {row['segments']} | {row['wall_s']:.1f} | {row['fps']:.3f} |",
                  flush=True)
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
