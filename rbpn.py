"""RBPN (Haris et al., CVPR 2019), the generator of iSeeBetter.

The target LR frame and each neighbour (with its optical flow) are projected to HR features
by a SISR branch (DBPN-S) and a MISR branch (residual blocks); their difference is refined and
fed back as the next LR state. The HR features of all neighbours are fused into the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

import dbpn
from base_networks import ConvBlock, DeconvBlock, ResnetBlock, init_weights, projection_kernel

_KERNEL_TO_SCALE = {projection_kernel(s)[0]: s for s in (2, 4, 8)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes what a generator computes: the ``Net`` arguments, and how it is
    run (``residual``, ``future_frame``). Saved in training states and model cards and read
    back whole; for a raw checkpoint without a card, ``from_weights`` reads the shapes.

    Args:
        num_channels, base_filter, feat, num_stages, n_resblock, nFrames, scale_factor: see
            ``Net``.
        residual: the network predicts the residual over the bicubic upsampling.
        future_frame: the neighbours lie on both sides of the target (else only before it).
    """

    num_channels: int = 3
    base_filter: int = 256
    feat: int = 64
    num_stages: int = 3
    n_resblock: int = 5
    nFrames: int = 7  # noqa: N815 - the original's name
    scale_factor: int = 4
    residual: bool = False
    future_frame: bool = True

    def net_kwargs(self) -> dict[str, int]:
        """The ``Net`` constructor's arguments."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("residual", "future_frame")}

    def build(self, init: str = "stable") -> Net:
        """A new ``Net`` of this configuration."""
        return Net(**self.net_kwargs(), init=init)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> ModelConfig:
        """A configuration from saved values; ``ValueError`` names a bad or unknown entry."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown model configuration entries: {', '.join(unknown)}")
        for name, value in values.items():
            want = bool if fields[name].type == "bool" else int
            if type(value) is not want:
                raise ValueError(f"model configuration entry {name!r} must be {want.__name__}, "
                                 f"got {value!r}")
        return cls(**values)

    @classmethod
    def from_weights(cls, state_dict: Mapping[str, torch.Tensor], **how: bool) -> ModelConfig:
        """The configuration whose ``Net`` has tensors of these shapes (``infer_config``);
        ``how`` gives ``residual`` / ``future_frame``, which shapes cannot tell."""
        return cls(**infer_config(state_dict), **how)


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        some = ", ".join(list(state_dict)[:3])
        raise ValueError(f"not an RBPN generator: no {key!r} (its keys start {some}, ...)")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"not an RBPN generator: {key} has shape {shape}")
    return shape


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The ``Net`` constructor arguments that produce tensors of these shapes (keys without
    DataParallel's prefix: ``checkpoint.load_state_dict`` strips it).

    Raises ``ValueError`` when the tensors are not an RBPN's or fit no valid configuration
    (e.g. a projection kernel that matches no scale).
    """
    sd = state_dict
    base_filter, num_channels = _shape(sd, "feat0.conv.weight", 4)[:2]
    feat = _shape(sd, "DBPN.feat1.conv.weight", 4)[0]
    fused = _shape(sd, "DBPN.output.conv.weight", 4)[1]
    kernel = _shape(sd, "DBPN.up1.up_conv1.deconv.weight", 4)[2]
    out_channels, hr_channels = _shape(sd, "output.conv.weight", 4)[:2]
    if kernel not in _KERNEL_TO_SCALE:
        known = ", ".join(f"x{s}: {k}" for k, s in _KERNEL_TO_SCALE.items())
        raise ValueError(f"not a valid RBPN: projection kernel {kernel}x{kernel} fits no "
                         f"scale ({known})")
    consistent = (fused == 3 * feat and hr_channels % feat == 0 and hr_channels >= feat
                  and out_channels == num_channels)
    if not consistent:
        raise ValueError(f"not a valid RBPN: inconsistent shapes (feat {feat}, DBPN fusion "
                         f"{fused} channels, output {out_channels}x{hr_channels})")
    n_resblock = 0
    while f"res_feat1.{n_resblock}.conv1.weight" in sd:
        n_resblock += 1
    return {"num_channels": num_channels, "base_filter": base_filter, "feat": feat,
            "num_stages": 3, "n_resblock": n_resblock, "nFrames": hr_channels // feat + 1,
            "scale_factor": _KERNEL_TO_SCALE[kernel]}


class Net(nn.Module):
    """The RBPN generator; predicts the HR target frame.

    Args:
        num_channels: image channels (3).
        base_filter: LR feature channels (256 in the paper).
        feat: HR feature channels (64).
        num_stages: DBPN-S up-projections; must be 3.
        n_resblock: residual blocks in each of the three MISR stacks (5).
        nFrames: frames per sample, the target included (7): nFrames-1 neighbours.
        scale_factor: 2, 4 or 8.
        init: "stable" (default: kaiming with scaled residual branches, so an untrained model's
            output is of image size) or "kaiming" (the original's; outputs ~1e8 untrained).
            Both give the same parameter names and shapes.
    """

    def __init__(self, num_channels: int = 3, base_filter: int = 256, feat: int = 64,
                 num_stages: int = 3, n_resblock: int = 5, nFrames: int = 7,
                 scale_factor: int = 4, init: str = "stable"):
        super().__init__()
        if nFrames < 2:
            raise ValueError(f"nFrames must be at least 2 (the target and a neighbour), "
                             f"got {nFrames!r}")
        kernel, stride, padding = projection_kernel(scale_factor)
        self.nFrames = nFrames
        self.scale_factor = scale_factor

        def resblocks(channels: int) -> list[nn.Module]:
            return [ResnetBlock(channels, 3, 1, 1, bias=True, activation="prelu", norm=None)
                    for _ in range(n_resblock)]

        self.feat0 = ConvBlock(num_channels, base_filter, 3, 1, 1, activation="prelu", norm=None)
        # The original hard-codes 8 input channels: target (3) + neighbour (3) + flow (2).
        self.feat1 = ConvBlock(8, base_filter, 3, 1, 1, activation="prelu", norm=None)
        self.DBPN = dbpn.Net(base_filter, feat, num_stages, scale_factor, init=init)
        self.res_feat1 = nn.Sequential(*resblocks(base_filter), DeconvBlock(
            base_filter, feat, kernel, stride, padding, activation="prelu", norm=None))
        self.res_feat2 = nn.Sequential(*resblocks(feat), ConvBlock(
            feat, feat, 3, 1, 1, activation="prelu", norm=None))
        self.res_feat3 = nn.Sequential(*resblocks(feat), ConvBlock(
            feat, base_filter, kernel, stride, padding, activation="prelu", norm=None))
        self.output = ConvBlock((nFrames - 1) * feat, num_channels, 3, 1, 1, activation=None,
                                norm=None)
        # h = h0 + res_feat2(h0 - h1) is a residual branch too.
        init_weights(self, init, extra_residual_ends=[self.res_feat2[-1].conv])

    @staticmethod
    def describe_weights(state_dict: Mapping[str, torch.Tensor]) -> str:
        """What a state_dict that does not fit holds, for the checkpoint loader's message."""
        try:
            config = infer_config(state_dict)
        except ValueError:
            return "the weights are not an RBPN generator's"
        return "the weights are an RBPN with " + ", ".join(f"{k}={v}" for k, v in config.items())

    def forward(self, x: torch.Tensor, neighbor: list[torch.Tensor],
                flow: list[torch.Tensor]) -> torch.Tensor:
        """x: (B, C, h, w) target LR frame; neighbor, flow: nFrames-1 tensors (B, C, h, w) and
        (B, 2, h, w). Returns (B, C, h*scale, w*scale)."""
        if len(neighbor) != self.nFrames - 1 or len(flow) != self.nFrames - 1:
            raise ValueError(f"expected {self.nFrames - 1} neighbours and flows "
                             f"(nFrames={self.nFrames}), got {len(neighbor)} and {len(flow)}")
        feat_input = self.feat0(x)
        feat_frame = [self.feat1(torch.cat((x, nb, fl), 1)) for nb, fl in zip(neighbor, flow,
                                                                             strict=True)]
        hr_features = []
        for frame in feat_frame:
            h0 = self.DBPN(feat_input)
            h1 = self.res_feat1(frame)
            h = h0 + self.res_feat2(h0 - h1)
            hr_features.append(h)
            feat_input = self.res_feat3(h)
        return self.output(torch.cat(hr_features, 1))
