"""The machinery of iSeeBetterTrain.py: one GAN iteration, a reproducible sample order,
resumable state, and the per-epoch statistics (CSV, plot, TensorBoard).

Reproducibility: the sample order of an epoch comes from (seed, epoch) and each sample's crop
and augmentation from (seed, epoch, index), so neither depends on the number of workers, the
number of processes or where a run was resumed; a resumed run skips the samples it has seen.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler, Subset
from tqdm import tqdm

import atomic
import checkpoint
import cli
import generator
import loss
from frames import Sample

# ----------------------------------------------------------------------------- sample order


def derive_seed(*numbers: int) -> int:
    """A well-mixed 32-bit seed from non-negative integers (seed, epoch, index, ...)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])


class SeededSamples(Dataset):
    """Gives every (epoch, index) its own random stream for the crop and the augmentation.

    Args:
        dataset: the training set (its ``__getitem__`` may draw from random, NumPy or torch).
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample_seed = derive_seed(self.seed, self.epoch, index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # leave the caller's streams as they were
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            torch.default_generator.manual_seed(sample_seed)  # CPU only: CUDA's is not forked
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class EpochSampler(Sampler[int]):
    """The sample order of one epoch: a permutation seeded from (seed, epoch), padded and sharded
    over processes like DistributedSampler, starting after the samples already seen.

    Args:
        size: number of samples.
        seed: the run's seed.
        rank: this process's index among ``world_size`` processes.
        world_size: number of processes.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, skipping this process's first ``start`` samples."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        return iter(order[self.rank:total:self.world_size][self.start:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def evenly_spaced(dataset: Dataset, limit: int) -> Dataset:
    """At most ``limit`` samples spread over the dataset (all of them when limit is 0)."""
    if limit == 0 or len(dataset) <= limit:
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, limit).round().astype(int).tolist())


# ----------------------------------------------------------------------------- one iteration


class NonFiniteLossError(Exception):
    """A loss was NaN or Inf (on any process)."""


class GANTrainer:
    """One iSeeBetter iteration: a discriminator step on ``1 - D(real) + D(fake.detach())``,
    then a generator step on the generator loss with a fresh ``D(fake)``.

    Args:
        netG: the generator (possibly wrapped in DataParallel or DistributedDataParallel).
        netD: the discriminator, or None to train the generator alone.
        criterion: a ``loss.GeneratorLoss``; when it has an adversarial term, D(fake) feeds it.
        optimizerG: the generator's optimizer.
        optimizerD: the discriminator's (None without netD).
        device: where batches are moved.
        precision: "fp32", or "bf16"/"fp16" autocast (fp16 scales the gradients).
        residual: add the bicubic upsampling to the generator's output.
        channels_last: feed NHWC tensors.
        nan_policy: "stop" raises NonFiniteLossError before a step with a NaN/Inf loss;
            "skip" skips that step.
    """

    def __init__(self, netG: nn.Module, netD: nn.Module | None, criterion: nn.Module,
                 optimizerG: torch.optim.Optimizer, optimizerD: torch.optim.Optimizer | None, *,
                 device: torch.device, precision: str = "fp32", residual: bool = False,
                 channels_last: bool = False, nan_policy: str = "stop"):
        generator.check_precision(precision)
        self.netG, self.netD, self.criterion = netG, netD, criterion
        self.optimizerG, self.optimizerD = optimizerG, optimizerD
        self.device, self.precision, self.residual = device, precision, residual
        self.adversarial = "adversarial" in criterion.terms
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.nan_policy = nan_policy
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    @property
    def columns(self) -> tuple[str, ...]:
        """The names of the statistics ``step`` returns, for this setup."""
        gan = ("DLoss", "DScore", "GScore") if self.netD is not None else ()
        return (*gan, "GLoss", *(loss.TERM_COLUMNS[t] for t in self.criterion.terms))

    def autocast(self) -> contextlib.AbstractContextManager:
        return generator.autocast(self.device.type, self.precision)

    def to_device(self, batch: Sample) -> Sample:
        """The batch on the device, in the memory format."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, dtype=torch.float32, non_blocking=True,
                        memory_format=self.memory_format)
        return Sample(input=move(batch.input), target=move(batch.target),
                      neighbor=[move(n) for n in batch.neighbor],
                      flow=[move(f) for f in batch.flow], bicubic=move(batch.bicubic))

    def generate(self, netG: nn.Module, batch: Sample) -> torch.Tensor:
        """The super-resolved frames of a batch on the device (fp32 under autocast too)."""
        return generator.run_generator(netG, batch, self.residual, self.precision)

    def step(self, batch: Sample) -> dict[str, float] | None:
        """Train on one batch: its statistics, or None when a NaN/Inf loss skipped the step."""
        batch = self.to_device(batch)
        target = batch.target
        fake = self.generate(self.netG, batch)
        stats = {}
        if self.netD is not None:
            with self.autocast():
                real_out = self.netD(target)
                fake_out = self.netD(fake.detach())
                d_loss = loss.discriminator_loss(real_out, fake_out)
            if not self._finite(d_loss, "discriminator"):
                return None
            self.optimizerD.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.optimizerD)
            stats.update(DLoss=d_loss, DScore=real_out.mean(), GScore=fake_out.mean())

        # The original reused D(fake) from before D's step: a backward through weights that
        # optimizerD.step() had changed in place, which current PyTorch refuses.
        with self.autocast(), self._discriminator_frozen():
            labels = self.netD(fake) if self.adversarial else None
            g_loss, terms = self.criterion(labels, fake, target)
        if not self._finite(g_loss, "generator"):
            if self.netD is not None:
                self.scaler.update()
            return None
        self.optimizerG.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        self.scaler.step(self.optimizerG)
        self.scaler.update()
        stats["GLoss"] = g_loss
        stats.update({loss.TERM_COLUMNS[k]: v for k, v in terms.items()})
        values = torch.stack([v.detach().float().reshape(()) for v in stats.values()]).tolist()
        return dict(zip(stats, values, strict=True))

    def _finite(self, value: torch.Tensor, which: str) -> bool:
        """Whether the loss is finite on every process; raises under the "stop" policy."""
        flag = torch.isfinite(value.detach()).all().float()
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if flag.item() == 1.0:
            return True
        if self.nan_policy == "stop":
            raise NonFiniteLossError(f"the {which} loss is {value.item()}")
        return False

    @contextlib.contextmanager
    def _discriminator_frozen(self) -> Iterator[None]:
        """No gradients for D in the generator step (and no DDP gradient sync for it)."""
        if self.netD is None:
            yield
            return
        params = list(self.netD.parameters())
        for p in params:
            p.requires_grad_(False)
        no_sync = (self.netD.no_sync() if isinstance(self.netD, DistributedDataParallel)
                   else contextlib.nullcontext())
        try:
            with no_sync:
                yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def state_dict(self) -> dict:
        """Weights, optimizers and scaler, on the CPU (the training-state file's entries)."""
        netD, optD = self.netD, self.optimizerD
        return {"netG": weights_of(self.netG),
                "netD": weights_of(netD) if netD is not None else None,
                "optimizerG": to_cpu(self.optimizerG.state_dict()),
                "optimizerD": to_cpu(optD.state_dict()) if optD is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state_dict(self, state: dict, source: str) -> None:
        """Restore what ``state_dict`` saved; ``source`` names the file in errors."""
        checkpoint.load_into(unwrap(self.netG), state["netG"], what=f"generator in {source}")
        self.optimizerG.load_state_dict(state["optimizerG"])
        if self.netD is not None:
            checkpoint.load_into(unwrap(self.netD), state["netD"],
                                 what=f"discriminator in {source}")
            self.optimizerD.load_state_dict(state["optimizerD"])
        if state["scaler"] is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


class RunningStats:
    """Per-epoch sums of the iteration statistics, weighted by the real batch size.

    Args:
        columns: the statistics summed (``GANTrainer.columns``).
        sums: saved sums to continue from (a resumed epoch), keyed by column and "Samples".
    """

    def __init__(self, columns: Sequence[str], sums: dict[str, float] | None = None):
        self.sums = dict.fromkeys((*columns, "Samples"), 0.0) | dict(sums or {})

    def add(self, stats: dict[str, float], batch_size: int) -> None:
        for key, value in stats.items():
            self.sums[key] += value * batch_size
        self.sums["Samples"] += batch_size

    def means(self) -> dict[str, float]:
        n = self.sums["Samples"]
        return {k: (v / n if n else math.nan) for k, v in self.sums.items() if k != "Samples"}

    def all_reduced(self) -> RunningStats:
        """The sums over all processes (a collective call under DDP)."""
        if not dist.is_initialized():
            return RunningStats((), self.sums)
        values = torch.tensor(list(self.sums.values()), dtype=torch.float64,
                              device=_collective_device())
        dist.all_reduce(values)
        return RunningStats((), dict(zip(self.sums, values.tolist(), strict=True)))

    def progress(self, world_size: int, seconds: float) -> str:
        """The progress bar's text: D loss, G loss, D(x), D(G(z)) and samples/s."""
        means = self.means()
        parts = [f"{label} {means[key]:.4f}" for label, key in (
            ("D", "DLoss"), ("G", "GLoss"), ("D(x)", "DScore"), ("D(G(z))", "GScore"))
            if key in means]
        rate = self.sums["Samples"] * world_size / max(seconds, 1e-9)
        return " ".join([*parts, f"{rate:.2f} samples/s"])


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


class GracefulStop:
    """Turns SIGINT/SIGTERM into a request to stop after the current iteration (a second
    Ctrl-C interrupts at once). Restores the previous handlers on ``restore()``."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGTERM  # the signal received (another process's: SIGTERM)
        self._pid = os.getpid()  # data loader workers inherit the handler; only we report
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if os.getpid() == self._pid:
            tqdm.write("stopping after this iteration (the state will be saved) ...",
                       file=sys.stderr)

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective call under DDP)."""
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor(float(self.requested), device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- state


def unwrap(model: nn.Module | None) -> nn.Module | None:
    """The model inside a DataParallel / DistributedDataParallel wrapper."""
    return model.module if isinstance(model, (nn.DataParallel, DistributedDataParallel)) else model


def to_cpu(obj):
    """A copy of nested containers with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain, contiguous CPU state_dict (no "module." prefix: the original test script's)."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def check_finite_weights(*models: nn.Module | None) -> None:
    """Refuse to save NaN/Inf weights."""
    for model in filter(None, models):
        for name, p in unwrap(model).state_dict().items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise cli.CLIError(f"the weights became non-finite ({name}); nothing was saved. "
                                   f"Resume from the last state with a lower --lr or --amp none")


def rng_state() -> dict:
    """Every global RNG state, as tensors and lists only (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- statistics

# The original's columns first (DScore = D(x), GScore = D(G(z)); PSNR/SSIM on Y), then the
# loss terms (every term loss.py knows, so the CSV's layout does not depend on --loss), then ours.
COLUMNS = (
    "Epoch", "DLoss", "GLoss", "DScore", "GScore", "PSNR", "SSIM",
    "Iteration", *loss.TERM_COLUMNS.values(),
    "PSNR_RGB", "SSIM_RGB", "PSNR_Bicubic", "LR_G", "LR_D", "Samples", "Skipped", "Seconds",
)

# (title, columns, log scale) of each panel of the plot.
_PANELS = (
    ("losses", ("DLoss", "GLoss", *(t.column for t in loss.FOURFOLD_TERMS.values()
                                    if not t.positive)), False),
    ("generator loss terms (unweighted)", tuple(t.column for t in loss.FOURFOLD_TERMS.values()
                                                 if t.positive), True),
    ("discriminator: D(x), D(G(z))", ("DScore", "GScore"), False),
    ("validation PSNR (dB)", ("PSNR", "PSNR_RGB", "PSNR_Bicubic"), False),
    ("validation SSIM", ("SSIM", "SSIM_RGB"), False),
    ("learning rate", ("LR_G", "LR_D"), True),
)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a statistics CSV (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _format(value: float | int | str) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.8g}"
    return str(value)


class TrainLog:
    """Per-epoch statistics: a CSV whose history survives restarts, a PNG plot, TensorBoard.

    The original wrote ``statistics/iSeeBetter_<scale>_Train_Results.csv`` with the columns
    Epoch, DLoss, GLoss, DScore, GScore, PSNR, SSIM; those names are kept (COLUMNS).

    Args:
        folder: where the CSV, the PNG and the ``tensorboard/`` run go (created).
        name: file stem, e.g. ``iSeeBetter_4_Train_Results``.
        tensorboard: also log to TensorBoard when the ``tensorboard`` package is installed.
    """

    def __init__(self, folder: str | os.PathLike, name: str, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / f"{name}.csv"
        self.plot_path = self.folder / f"{name}.png"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def start(self, first_epoch: int, resumed: bool) -> None:
        """Prepare for a run whose first epoch is ``first_epoch``: a fresh run whose epochs
        are already in the CSV (another run in this folder) moves that file aside first."""
        rows = read_rows(self.csv_path)
        if resumed or not any(_number(r.get("Epoch")) >= first_epoch for r in rows):
            return
        backup = self.csv_path.with_name(f"{self.csv_path.stem}.{time.strftime('%Y%m%d-%H%M%S')}"
                                         ".csv")
        os.replace(self.csv_path, backup)
        print(f"note: moved the earlier statistics to {backup}", file=sys.stderr)
        kept = [r for r in rows if _number(r.get("Epoch")) < first_epoch]
        if kept:
            self._write_csv(kept)

    def add_epoch(self, row: dict[str, float | int]) -> None:
        """Write an epoch's row (replacing that epoch and later ones) and redraw the plot."""
        epoch = row["Epoch"]
        rows = [r for r in read_rows(self.csv_path) if _number(r.get("Epoch")) < epoch]
        rows.append({k: _format(v) for k, v in row.items()})
        self._write_csv(rows)
        self.plot(rows)
        if self.writer is not None:
            for key, value in row.items():
                if key != "Epoch" and math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, epoch)
            self.writer.flush()

    def add_iteration(self, iteration: int, stats: dict[str, float]) -> None:
        """Per-iteration losses, to TensorBoard only."""
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(f"train/{key}", value, iteration)

    def _write_csv(self, rows: list[dict[str, str]]) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                out.writeheader()
                out.writerows(rows)
        atomic.write_atomically(self.csv_path, write)

    def plot(self, rows: list[dict[str, str]]) -> None:
        """Draw every column against the epoch into the PNG."""
        # The object API needs no pyplot state and no display.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        epochs = [_number(r.get("Epoch")) for r in rows]
        fig = Figure(figsize=(15, 8), layout="constrained")
        FigureCanvasAgg(fig)
        for i, (title, columns, log) in enumerate(_PANELS):
            ax = fig.add_subplot(2, 3, i + 1)
            for column in columns:
                values = [_number(r.get(column)) for r in rows]
                if any(math.isfinite(v) and (v > 0 or not log) for v in values):
                    ax.plot(epochs, values, marker="o", markersize=3, label=column)
            if ax.has_data():
                ax.legend(fontsize="small")
                if log:
                    ax.set_yscale("log")
            else:  # e.g. no discriminator (--no-gan) or no validation list
                ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        atomic.write_atomically(self.plot_path,
                                lambda tmp: fig.savefig(tmp, format="png", dpi=80))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
