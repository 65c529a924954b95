"""LPIPS v0.1 between a reference image and others, as metrics.LPIPS computes it for the
Scoreboard (whole images here; the Scoreboard scores TecoGAN's centre crop):

    python scripts/lpips_images.py ref.png a.png b.png [--net vgg]

One line per image: its path and its distance to the reference. On the official LPIPS
repository's example images (imgs/ex_ref.png against ex_p0.png and ex_p1.png) this prints the
figures published for the official package (README, "Perceptual quality").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402
import frames  # noqa: E402
from metrics import LPIPS, LPIPS_NETS  # noqa: E402


def parse_args(argv: list[str]) -> cli.Options:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="the reference image")
    p.add_argument("images", nargs="+", help="images of the reference's size")
    p.add_argument("--net", default="alex", choices=tuple(LPIPS_NETS),
                   help="LPIPS's network (default: %(default)s)")
    return cli.Options(**vars(p.parse_args(argv)))


def read(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise cli.CLIError(f"{path}: no such file")
    return np.asarray(frames.read_rgb(path))


def run(args: cli.Options) -> int:
    model = LPIPS(args.net)
    reference = read(args.reference)
    reference_taps = model.features(reference)
    for path in args.images:
        image = read(path)
        if image.shape != reference.shape:
            raise cli.CLIError(f"{path}: {image.shape[1]}x{image.shape[0]}, the reference "
                               f"{reference.shape[1]}x{reference.shape[0]}")
        print(f"{path} {model.distance(reference_taps, model.features(image)):.6f}")
    return 0


if __name__ == "__main__":
    cli.run_cli(run, parse=parse_args)
