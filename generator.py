"""The generator call, its precisions, and loading a generator with its configuration.

``run_generator`` is the one place where the network is called on a sample: under autocast
for bf16/fp16, with the output in float32 and, for a residual model, the bicubic upsampling
added. Training, validation and upscaling all call it, so they compute the same thing.

``load_generator`` reads a weights file with its model card: the card's ``config`` is the
whole ``rbpn.ModelConfig``; a raw checkpoint without a card (the original's ``RBPN_4x.pth``)
gets its configuration from the tensor shapes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import checkpoint
import rbpn
from cli import ParameterError
from frames import Sample

# The precisions a generator can run in: None is plain float32, else the autocast dtype.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What --precision / --amp accept besides PRECISIONS: the fastest precision the device computes
# natively (bf16 where it is native, else fp32).
AUTO = "auto"
# The generator architectures --model_type selects.
ARCHITECTURES = {"RBPN": rbpn.ModelConfig}


def check_precision(precision: str) -> None:
    """Refuse an unknown precision (a ``ParameterError`` naming ``precision``)."""
    if precision not in PRECISIONS:
        raise ParameterError("precision", precision,
                             f"choose one of {', '.join((AUTO, *PRECISIONS))}")


def _cpu_has(feature: str) -> bool:
    """Whether this CPU has ``feature`` ("avx512_bf16", "amx_tile", "amx_fp16"): torch's own
    probe when this torch has it, else the Linux CPU flags (``amx_tile`` as ``amx_bf16``)."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    if probe is not None:
        return bool(probe())
    flag = {"amx_tile": "amx_bf16"}.get(feature, feature)
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and flag in line.split() for line in info)
    except OSError:
        return False


def native_precisions(device: torch.device | str) -> dict[str, str]:
    """The reduced precisions ``device`` computes natively, each with the hardware that does.

    CPUs emulate bf16 without AVX512-BF16 or AMX, and fp16 without AMX-FP16: several times
    slower than fp32, while native bf16 is about twice as fast (README, Benchmarks).
    """
    device = torch.device(device)
    if device.type == "cuda":
        found = {"fp16": "CUDA"}
        if torch.cuda.is_bf16_supported(including_emulation=False):
            found["bf16"] = f"CUDA {torch.cuda.get_device_name(device)}"
        return found
    if device.type != "cpu":
        return {}
    found = {}
    if _cpu_has("amx_tile"):
        found["bf16"] = "the CPU's AMX"
    elif _cpu_has("avx512_bf16"):
        found["bf16"] = "the CPU's AVX512-BF16"
    if _cpu_has("amx_fp16"):
        found["fp16"] = "the CPU's AMX-FP16"
    return found


class PrecisionChoice(NamedTuple):
    precision: str  # a key of PRECISIONS
    reason: str  # why, for the run's first lines
    emulated: bool  # asked for by name, though the device emulates it (slower than fp32)

    def describe(self, what: str = "precision") -> str:
        """One line for the run's log: ``precision bf16 (auto: ...)``; ``what`` names it."""
        return f"{'warning: ' if self.emulated else ''}{what} {self.precision} ({self.reason})"


def choose_precision(requested: str, device: torch.device | str) -> PrecisionChoice:
    """The precision to run in and why: ``auto`` picks bf16 where ``device`` computes it
    natively, else fp32. An emulated precision asked for by name is an error for fp16 on a
    CPU (never worth it) and is flagged ``emulated`` for bf16 (useful to check numerics).

    Args:
        requested: "auto" or a key of ``PRECISIONS``.
        device: where the model runs.
    """
    device = torch.device(device)
    native = native_precisions(device)
    if requested == AUTO:
        if "bf16" in native:
            return PrecisionChoice("bf16", f"auto: {native['bf16']} computes bf16 natively",
                                   False)
        return PrecisionChoice("fp32", f"auto: this {device.type} would emulate bf16", False)
    check_precision(requested)
    if requested == "fp32" or requested in native:
        return PrecisionChoice(requested, "as asked", False)
    if requested == "fp16" and device.type == "cpu":
        raise ParameterError("precision", requested,
                             "this CPU emulates fp16 (no AMX-FP16), several times slower than "
                             "fp32; use auto, bf16 or fp32")
    return PrecisionChoice(requested, f"as asked, but this {device.type} emulates it: slower "
                           "than fp32; auto picks the fastest", True)


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device_type`` ("cpu" or "cuda"); nothing for fp32."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def run_generator(net: nn.Module, sample: Sample, residual: bool = False,
                  precision: str = "fp32") -> torch.Tensor:
    """The super-resolved frames (B, 3, h*s, w*s), float32, not clamped, where the sample is.

    Args:
        net: the generator, called as ``net(input, neighbor, flow)``.
        sample: a batched ``Sample`` on the net's device; ``bicubic`` is needed when residual.
        residual: add ``sample.bicubic`` to the output (models trained with ``--residual``).
        precision: "fp32", or "bf16"/"fp16" autocast.
    """
    if residual and sample.bicubic is None:
        raise ValueError("a residual generator needs the sample's bicubic upsampling")
    with autocast(sample.input.device.type, precision):
        out = net(sample.input, sample.neighbor, sample.flow)
    return out.float() + sample.bicubic if residual else out.float()


def architecture(model_type: str) -> type[rbpn.ModelConfig]:
    """The configuration class of a ``--model_type``."""
    if model_type not in ARCHITECTURES:
        raise ParameterError("model_type", model_type,
                             f"choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> tuple[rbpn.Net, rbpn.ModelConfig]:
    """A generator in eval mode with the weights of ``path``, and its configuration: from the
    model card (``<weights>.json``) when there is one, else from the tensor shapes.

    A card's configuration must agree with the weights' shapes (else ``CheckpointError``);
    cards written before ``config`` held ``residual`` keep it at the top level.
    """
    path = Path(path)
    sd = checkpoint.load_state_dict(path)
    try:
        shapes = rbpn.ModelConfig.from_weights(sd)
    except ValueError as err:
        raise checkpoint.CheckpointError(f"{path}: {err}") from None
    card = checkpoint.read_model_card(path)
    config = shapes
    if card:
        card_path = checkpoint.model_card_path(path)
        saved = dict(card.get("config") or {})
        saved.setdefault("residual", card.get("residual", False))
        try:
            config = rbpn.ModelConfig.from_dict({**shapes.to_dict(), **saved})
        except ValueError as err:
            raise checkpoint.CheckpointError(f"{card_path}: {err}") from None
        differ = [f"{k} {getattr(config, k)} vs {v}" for k, v in shapes.net_kwargs().items()
                  if getattr(config, k) != v]
        if differ:
            raise checkpoint.CheckpointError(
                f"{card_path}: the model card does not describe {path.name} (card vs weights: "
                f"{', '.join(differ)})")
    net = config.build(init="kaiming")  # the init is overwritten by the weights
    checkpoint.load_into(net, sd, what=str(path))
    return net.to(device).eval(), config
