"""Optical flow between two images: writes the colour-coded flow, the warped image and the flow.

    python pyflow/demo.py frame1.png frame2.png --out_dir results/flow

From the repository root (it uses the project's CLI helpers). Outputs, named after the first
image: <name>_flow.png (colour wheel: hue = direction, saturation = magnitude), <name>_warped.png
(the second image warped towards the first) and <name>_flow.npy ((H, W, 2) float32 [u, v]).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not pyflow/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
from PIL import Image, UnidentifiedImageError

import cli
import pyflow
from pyflow.visualize import flow_to_color


def build_parser() -> argparse.ArgumentParser:
    defaults = pyflow.ISEEBETTER_PARAMS
    parser = cli.ArgumentParser(
        description="Coarse2Fine optical flow from IMAGE1 to IMAGE2 (pixel (x, y) of IMAGE1 "
                    "matches (x + u, y + v) of IMAGE2). Defaults: the parameters iSeeBetter "
                    "(and pyflow's own demo) use.")
    parser.add_argument("image1", type=Path, help="first image (the reference frame)")
    parser.add_argument("image2", type=Path, help="second image, same size")
    parser.add_argument("--out_dir", type=Path, default=Path("results/flow"),
                        help="folder for the outputs, created if needed (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults["alpha"],
                        help="smoothness weight, > 0 (default: %(default)s)")
    parser.add_argument("--ratio", type=float, default=defaults["ratio"],
                        help="pyramid downsampling ratio; outside [0.4, 0.98] 0.75 is used "
                             "(default: %(default)s)")
    parser.add_argument("--minWidth", type=int, default=defaults["minWidth"],
                        help="width of the coarsest pyramid level, roughly (default: %(default)s)")
    parser.add_argument("--nOuterFPIterations", type=int,
                        default=defaults["nOuterFPIterations"],
                        help="outer fixed-point (warping) iterations (default: %(default)s)")
    parser.add_argument("--nInnerFPIterations", type=int,
                        default=defaults["nInnerFPIterations"],
                        help="inner fixed-point iterations (default: %(default)s)")
    parser.add_argument("--nSORIterations", type=int, default=defaults["nSORIterations"],
                        help="SOR sweeps per inner iteration (default: %(default)s)")
    parser.add_argument("--colType", type=int, choices=(0, 1), default=defaults["colType"],
                        help="0: RGB, 1: grey (the images are converted) (default: %(default)s)")
    parser.add_argument("--max_flow", type=float, default=None,
                        help="flow magnitude shown fully saturated in the colour coding "
                             "(default: the largest in the field)")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="show the full traceback of unexpected errors")
    return parser


def load_image(path: Path, grey: bool) -> np.ndarray:
    """(H, W, C) float64 in [0, 1]; C = 1 for grey, else 3."""
    if not path.is_file():
        raise cli.CLIError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if grey else "RGB")
            array = np.asarray(im, dtype=np.float64) / 255
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise cli.CLIError(f"cannot read image {path}: {err}") from err
    return array[..., None] if grey else array


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    grey = args.colType == 1
    im1 = load_image(args.image1, grey)
    im2 = load_image(args.image2, grey)
    if im1.shape != im2.shape:
        raise cli.CLIError(f"the images differ in size: {args.image1} is "
                           f"{im1.shape[1]}x{im1.shape[0]}, {args.image2} is "
                           f"{im2.shape[1]}x{im2.shape[0]} (W x H)")
    if args.max_flow is not None and not args.max_flow > 0:
        raise cli.CLIError(f"--max_flow must be > 0, got {args.max_flow}")
    params = {name: getattr(args, name) for name in pyflow.ISEEBETTER_PARAMS}
    start = time.perf_counter()
    try:
        u, v, im2w = pyflow.coarse2fine_flow(im1, im2, **params)
    except (TypeError, ValueError) as err:  # a bad flag value: the message names the parameter
        raise cli.CLIError(f"{err} (flag --{str(err).split()[0]})") from err
    elapsed = time.perf_counter() - start

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.image1.stem
    flow_png = args.out_dir / f"{stem}_flow.png"
    warped_png = args.out_dir / f"{stem}_warped.png"
    flow_npy = args.out_dir / f"{stem}_flow.npy"
    Image.fromarray(flow_to_color(u, v, args.max_flow)).save(flow_png)
    warped = np.round(im2w * 255).astype(np.uint8)
    Image.fromarray(warped[..., 0] if grey else warped).save(warped_png)
    np.save(flow_npy, np.stack([u, v], axis=-1).astype(np.float32))
    magnitude = np.hypot(u, v)
    print(f"flow {im1.shape[1]}x{im1.shape[0]} in {elapsed * 1000:.1f} ms: mean |flow| "
          f"{magnitude.mean():.3f} px, max {magnitude.max():.3f} px; wrote {flow_png}, "
          f"{warped_png}, {flow_npy}")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
