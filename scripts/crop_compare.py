"""One crop of a test frame from several result folders side by side, with bicubic first and
the ground truth last, enlarged for the eye: README's comparison images.

    python scripts/crop_compare.py --data_dir ../shared/data/Vid4 --frame calendar/010.png \\
        --box 330 120 160 120 --results runs/a runs/b --labels A B -o docs/crop.png

``--auto_box W H`` instead of ``--box`` takes the W x H crop where the first two results differ
most (mean absolute difference), to show where their texture differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atomic  # noqa: E402
import cli  # noqa: E402
import frames  # noqa: E402
from iSeeBetterTest import compare_panel  # noqa: E402


def parse_args(argv: list[str]) -> cli.Options:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the ground-truth frames")
    p.add_argument("--frame", required=True, help="the frame, relative to --data_dir and to "
                   "each --results folder")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--box", type=int, nargs=4, metavar=("LEFT", "TOP", "WIDTH", "HEIGHT"),
                       help="the crop, in HR pixels")
    where.add_argument("--auto_box", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                       help="a crop of this size where the first two --results differ most")
    p.add_argument("--results", nargs="+", required=True, help="iSeeBetterTest.py -o folders")
    p.add_argument("--labels", nargs="+", required=True, help="one label per --results")
    p.add_argument("-s", "--upscale_factor", type=int, default=4,
                   help="scale of the bicubic panel (default: %(default)s)")
    p.add_argument("--zoom", type=int, default=2, help="enlargement (default: %(default)s)")
    p.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    if len(args.labels) != len(args.results):
        raise cli.CLIError(f"--labels: {len(args.labels)} given for {len(args.results)} "
                           "--results folders")
    if args.auto_box and len(args.results) < 2:
        raise cli.CLIError("--auto_box compares the first two --results: give at least two")
    return cli.Options(**vars(args))


def most_different(first: np.ndarray, second: np.ndarray, w: int, h: int) -> tuple[int, int]:
    """The (left, top) of the w x h window with the largest summed absolute difference of two
    equally sized images (summed areas over an integral image); (0, 0) when it does not fit."""
    if w > first.shape[1] or h > first.shape[0]:
        return 0, 0  # the caller's bounds check names the flag
    diff = np.abs(first.astype(np.int64) - second.astype(np.int64)).sum(-1)
    area = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = area[h:, w:] - area[:-h, w:] - area[h:, :-w] + area[:-h, :-w]
    top, left = np.unravel_index(np.argmax(sums), sums.shape)
    return int(left), int(top)


def run(args: cli.Options) -> int:
    scale = args.upscale_factor
    truth = frames.modcrop(frames.read_rgb(str(Path(args.data_dir) / args.frame)), scale)
    bicubic = frames.upscale(frames.downscale(truth, scale), scale)
    panels = [("bicubic", bicubic)]
    for label, folder in zip(args.labels, args.results, strict=True):
        path = Path(folder) / Path(args.frame).with_suffix(".png")
        if not path.is_file():
            raise cli.CLIError(f"--results {folder}: no {path.name} there")
        result = frames.read_rgb(str(path))
        if result.size != truth.size:
            raise cli.CLIError(f"--results {folder}: {path.name} is {result.width}x"
                               f"{result.height}, the ground truth {truth.width}x{truth.height}")
        panels.append((label, result))
    panels.append(("ground truth", truth))
    if args.auto_box:
        w, h = args.auto_box
        flag = f"--auto_box {w} {h}"
        left, top = most_different(np.asarray(panels[1][1]), np.asarray(panels[2][1]), w, h)
    else:
        left, top, w, h = args.box
        flag = f"--box {left} {top} {w} {h}"
    if left < 0 or top < 0 or w < 1 or h < 1 or left + w > truth.width or top + h > truth.height:
        raise cli.CLIError(f"{flag}: not inside the {truth.width}x{truth.height} frame")
    zoomed = [(name, np.asarray(image.crop((left, top, left + w, top + h)).resize(
        (w * args.zoom, h * args.zoom), Image.NEAREST))) for name, image in panels]
    panel = compare_panel(zoomed, 0, box=(0, 0, w * args.zoom, h * args.zoom))
    atomic.write_atomically(args.output, lambda tmp: Image.fromarray(panel).save(tmp, "PNG"))
    print(f"wrote {args.output} (box {left} {top} {w} {h})")
    return 0


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_args)
