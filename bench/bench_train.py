"""Training speed and memory: seconds per iteration and peak memory of iSeeBetter's GAN step.

    python bench/bench_train.py                      # full model, batch 1 and 2, patch 64,
                                                     # CPU fp32 and bf16, and CUDA when present
    python bench/bench_train.py --device cuda --precisions fp32 bf16 fp16 --channels_last
    python bench/bench_train.py --config compact --batch_sizes 4 --losses fourfold perceptual l1
    python bench/bench_train.py --tiny --iters 1     # smoke test with a tiny model

One iteration is ``training.GANTrainer.step`` as iSeeBetterTrain.py runs it: the generator's
forward pass, a discriminator step (losses with an adversarial term only), and a generator step
on the loss (the ImageNet VGG16 of ``make setup`` where installed, a random one otherwise: the
speed does not depend on its weights). Batches are synthetic, so data loading and optical flow
are not included. Every configuration runs in a process of its own so
that its peak memory is its own: peak resident set size of that process on the CPU (Python and
torch included), ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_upscale import CONFIGS  # noqa: E402

import cli  # noqa: E402
from generator import PRECISIONS  # noqa: E402
from loss import ADVERSARIAL_LOSSES, LOSS_TYPES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the CPU, and CUDA too when present (default: %(default)s)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2],
                   help="batch sizes to measure (default: %(default)s)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=tuple(PRECISIONS),
                   help="fp32, or autocast bf16/fp16 (fp16 on CUDA only) (default: %(default)s)")
    p.add_argument("--patch_size", type=int, default=64,
                   help="LR patch size (default: %(default)s, the paper's)")
    p.add_argument("--nFrames", type=int, default=7, help="frames per sample (default: 7)")
    p.add_argument("--upscale_factor", type=int, default=4, choices=(2, 4, 8),
                   help="scale (default: %(default)s)")
    p.add_argument("--iters", type=int, default=3,
                   help="timed iterations per configuration; the median is reported "
                        "(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed iterations first (default: %(default)s)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full",
                   help="the generator's size (compact: the bundled model's) "
                        "(default: %(default)s)")
    cli.add_bool_flag(p, "--tiny", default=False,
                      help="the same as --config tiny (8 filters, 1 residual block): smoke tests")
    p.add_argument("--losses", nargs="+", default=["fourfold"], choices=LOSS_TYPES,
                   help="generator losses to measure; only those with an adversarial term "
                        "train the discriminator (default: %(default)s)")
    cli.add_bool_flag(p, "--channels_last", default=False, help="NHWC memory format")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, 0 = torch's default (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the results as JSON to PATH")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def measure(config: dict) -> dict:
    """Time ``config["iters"]`` GAN steps of one configuration (runs in a child process)."""
    import torch

    import backbones
    import loss
    import rbpn
    from frames import Sample
    from SRGAN.model import Discriminator
    from training import GANTrainer

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    torch.manual_seed(0)
    sizes = {k: v for k, v in CONFIGS[config["config"]].items() if k != "nFrames"}
    n, b, p, s = config["nFrames"], config["batch"], config["patch_size"], config["scale"]
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    netG = rbpn.Net(nFrames=n, scale_factor=s, **sizes).to(device, memory_format=memory_format)
    adversarial = config["loss"] in ADVERSARIAL_LOSSES
    netD = Discriminator().to(device, memory_format=memory_format) if adversarial else None
    criterion = loss.GeneratorLoss(
        loss_type=config["loss"],
        random_vgg=not backbones.have_imagenet_weights("vgg16")).to(device)
    trainer = GANTrainer(
        netG, netD, criterion, torch.optim.Adam(netG.parameters(), lr=1e-4),
        torch.optim.Adam(netD.parameters(), lr=1e-4) if adversarial else None, device=device,
        precision=config["precision"], channels_last=config["channels_last"])
    batch = Sample(input=torch.rand(b, 3, p, p), target=torch.rand(b, 3, p * s, p * s),
                   neighbor=[torch.rand(b, 3, p, p) for _ in range(n - 1)],
                   flow=[torch.randn(b, 2, p, p) for _ in range(n - 1)],
                   bicubic=torch.rand(b, 3, p * s, p * s))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(config["warmup"]):
        trainer.step(batch)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(config["iters"]):
        start = time.perf_counter()
        trainer.step(batch)
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**config, "seconds": statistics.median(times), "times": times,
            "peak_gib": peak / 2**30, "torch_threads": torch.get_num_threads(),
            "device_name": (torch.cuda.get_device_name() if device.type == "cuda" else "cpu")}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    import torch

    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        raise cli.CLIError("--device cuda: no CUDA device found")
    if min(args.batch_sizes) < 1 or args.iters < 1 or args.warmup < 0 or args.patch_size < 1:
        raise cli.CLIError("--batch_sizes, --iters and --patch_size must be positive, "
                           "--warmup at least 0")
    results = []
    size = "tiny" if args.tiny else args.config
    print(f"Training step, {size} model, nFrames {args.nFrames}, x{args.upscale_factor}, LR "
          f"patch {args.patch_size}, median of {args.iters} after {args.warmup} warm-up",
          flush=True)
    print("| device | precision | batch | patch | loss | s/iter | peak memory (GiB) | samples/s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for device, precision, batch, loss_type in itertools.product(
            devices, args.precisions, args.batch_sizes, args.losses):
        if precision == "fp16" and device == "cpu":
            continue  # iSeeBetterTrain.py refuses --amp fp16 on the CPU
        config = {"device": device, "precision": precision, "batch": batch,
                  "patch_size": args.patch_size, "nFrames": args.nFrames,
                  "scale": args.upscale_factor, "iters": args.iters,
                  "warmup": args.warmup, "config": size, "loss": loss_type,
                  "threads": args.threads, "channels_last": args.channels_last}
        child = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise cli.CLIError(f"{device} {precision} batch {batch} failed: "
                               f"{child.stderr.strip().splitlines()[-1:]}")
        r = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {device} | {precision} | {batch} | {args.patch_size} | {loss_type} | "
              f"{r['seconds']:.3f} | {r['peak_gib']:.2f} | {batch / r['seconds']:.2f} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
