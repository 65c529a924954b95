"""RBPN (Haris et al., CVPR 2019), the generator of iSeeBetter.

The target LR frame and each neighbour (with its optical flow) are projected to HR features
by a SISR branch (DBPN-S) and a MISR branch (residual blocks); their difference is refined and
fed back as the next LR state. The HR features of all neighbours are fused into the output.
"""

from __future__ import annotations

import torch
from torch import nn

import dbpn
from base_networks import ConvBlock, DeconvBlock, ResnetBlock, init_weights, projection_kernel


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
