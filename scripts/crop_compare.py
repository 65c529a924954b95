"""One crop of a test frame from several result folders side by side, with bicubic first and
the ground truth last, enlarged for the eye: README's comparison images.

    python scripts/crop_compare.py --data_dir ../shared/data/Vid4 --frame calendar/010.png \\
        --box 330 120 160 120 --results runs/a runs/b --labels A B -o docs/crop.png
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
    p.add_argument("--box", type=int, nargs=4, required=True,
                   metavar=("LEFT", "TOP", "WIDTH", "HEIGHT"), help="the crop, in HR pixels")
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
    return cli.Options(**vars(args))


def run(args: cli.Options) -> int:
    scale = args.upscale_factor
    truth = frames.modcrop(frames.read_rgb(str(Path(args.data_dir) / args.frame)), scale)
    bicubic = frames.upscale(frames.downscale(truth, scale), scale)
    left, top, w, h = args.box
    if left < 0 or top < 0 or w < 1 or h < 1 or left + w > truth.width or top + h > truth.height:
        raise cli.CLIError(f"--box {left} {top} {w} {h}: not inside the {truth.width}x"
                           f"{truth.height} frame")
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
    zoomed = [(name, np.asarray(image.crop((left, top, left + w, top + h)).resize(
        (w * args.zoom, h * args.zoom), Image.NEAREST))) for name, image in panels]
    panel = compare_panel(zoomed, 0, box=(0, 0, w * args.zoom, h * args.zoom))
    atomic.write_atomically(args.output, lambda tmp: Image.fromarray(panel).save(tmp, "PNG"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_args)
