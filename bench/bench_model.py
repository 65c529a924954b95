"""Generator inference speed and memory: one forward pass of an x4 RBPN (the full one by default).

    python bench/bench_model.py                          # 64x64 and 180x144 LR (Vid4 size),
                                                         # fp32 and bf16 autocast, NCHW and
                                                         # channels_last, 2 CPU threads
    python bench/bench_model.py --sizes 64x64 --repeat 5
    python bench/bench_model.py --models tiny --sizes 16x16 --repeat 1 --warmup 0  # smoke test
    python bench/bench_model.py --models compact 48/24/1 --sizes 180x144 --formats channels_last
                                     # model sizes side by side (base_filter/feat/n_resblock)

One forward is ``netG(x, neighbours, flows)`` under ``torch.inference_mode`` with nFrames=7
(six neighbours and flows), batch 1, random inputs and the stable init (the speed does not
depend on the weights). Each configuration runs in a process of its own, so its memory figures
are its own: on the CPU the peak resident set size of that process (Python, torch and the
weights included) and its growth over the RSS measured just before the first forward pass
("forward extra"); on CUDA ``torch.cuda.max_memory_allocated``.
Reference (the original code, fp32, 2 threads, this project's CPU machine): 6.96 s at 64x64 and
78 s at 180x144. bf16 is faster only where it is native (AMX or AVX512-BF16 on CPUs); elsewhere
it is emulated and several times slower (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_upscale import CONFIGS, run_child  # noqa: E402

import atomic  # noqa: E402
import cli  # noqa: E402

# The named sizes are bench_upscale's (nFrames is a flag of its own here).
MODELS = {name: {k: v for k, v in sizes.items() if k != "nFrames"}
          for name, sizes in CONFIGS.items()}


def parse_model(text: str) -> str:
    """A model name of MODELS, or base_filter/feat/n_resblock such as 48/24/1."""
    if text in MODELS:
        return text
    parts = text.split("/")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(MODELS)} or base_filter/feat/n_resblock (e.g. 48/24/1), "
            f"got {text!r}")
    return text


def model_sizes(model: str) -> dict:
    """The Net size arguments of a ``--models`` entry."""
    if model in MODELS:
        return MODELS[model]
    base_filter, feat, n_resblock = map(int, model.split("/"))
    return {"base_filter": base_filter, "feat": feat, "n_resblock": n_resblock}


_FORMATS = ("nchw", "channels_last")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=cli.parse_size, nargs="+", default=[(64, 64), (180, 144)],
                   metavar="WxH", help="LR input sizes (default: 64x64 180x144)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=("fp32", "bf16", "fp16"),
                   help="fp32, or autocast to bf16/fp16 (fp16 on CUDA only) "
                        "(default: %(default)s)")
    p.add_argument("--formats", nargs="+", default=list(_FORMATS), choices=_FORMATS,
                   help="memory formats of model and inputs (default: both)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed forward passes per configuration; median and min reported "
                        "(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed forward passes first (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads, 0 = torch's default (default: %(default)s, as the "
                        "reference figures)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to run (default: %(default)s)")
    p.add_argument("--upscale_factor", type=int, default=4, choices=(2, 4, 8),
                   help="scale (default: %(default)s)")
    p.add_argument("--nFrames", type=int, default=7, help="frames per sample (default: 7)")
    p.add_argument("--models", type=parse_model, nargs="+", default=["full"],
                   help="generator sizes to time side by side: full (the paper's), compact "
                        "(the bundled one), tiny (smoke tests), or base_filter/feat/n_resblock "
                        "(default: full)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the results as JSON to PATH")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure(config: dict) -> dict:
    """Time ``config["repeat"]`` forward passes of one configuration (in a child process)."""
    import torch

    import rbpn
    from frames import Sample
    from generator import run_generator

    if config["threads"]:
        torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    fmt = torch.channels_last if config["format"] == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    net = rbpn.Net(nFrames=config["nFrames"], scale_factor=config["scale"],
                   **model_sizes(config["model"]))
    net = net.to(device, memory_format=fmt).eval()
    width, height = config["size"]

    def image(channels: int) -> torch.Tensor:
        return torch.rand(1, channels, height, width, device=device).contiguous(memory_format=fmt)

    sample = Sample(input=image(3), target=None,
                    neighbor=[image(3) for _ in range(config["nFrames"] - 1)],
                    flow=[image(2) for _ in range(config["nFrames"] - 1)], bicubic=None)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out = run_generator(net, sample, precision=config["precision"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    rss_before = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(config["warmup"]):
        forward()
    times = []
    for _ in range(config["repeat"]):
        start = time.perf_counter()
        out = forward()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(out).all():
        raise RuntimeError("the output is not finite")
    if device.type == "cuda":
        peak = extra = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        extra = peak - rss_before
    return {**config, "ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
            "times_s": times, "peak_mib": peak / 2**20, "extra_mib": extra / 2**20,
            "out_shape": list(out.shape), "torch_threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    if args.repeat < 1 or args.warmup < 0 or args.threads < 0 or args.nFrames < 2:
        raise cli.CLIError("--repeat must be at least 1, --warmup and --threads at least 0, "
                           "--nFrames at least 2")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise cli.CLIError("--device cuda: no CUDA device found")
    elif "fp16" in args.precisions:
        raise cli.CLIError("--precisions fp16 needs --device cuda (CPU autocast uses bf16)")
    memory = "peak allocated (MiB)" if args.device == "cuda" else "peak RSS (MiB)"
    print(f"RBPN forward, x{args.upscale_factor}, "
          f"nFrames {args.nFrames}, batch 1, {args.device}, {args.threads or 'default'} "
          f"threads; median of {args.repeat} after {args.warmup} warm-up", flush=True)
    print(f"| LR size | model | precision | format | ms (median) | ms (min) | {memory} | "
          f"forward extra (MiB) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    for size in args.sizes:
        baseline = None
        for model, precision, fmt in itertools.product(args.models, args.precisions,
                                                   args.formats):
            config = {"size": size, "model": model, "precision": precision, "format": fmt,
                      "repeat": args.repeat, "warmup": args.warmup, "threads": args.threads,
                      "device": args.device, "scale": args.upscale_factor,
                      "nFrames": args.nFrames}
            r = run_child(config, __file__, f"{size[0]}x{size[1]} {model} {precision} {fmt}")
            results.append(r)
            baseline = baseline or r["ms"]  # the first configuration of this size
            print(f"| {size[0]}x{size[1]} | {model} | {precision} | {fmt} | {r['ms']:.1f} | "
                  f"{r['min_ms']:.1f} | {r['peak_mib']:.0f} | {r['extra_mib']:.0f} | "
                  f"{baseline / r['ms']:.2f}x |", flush=True)
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
