"""The single-image DBPN that RBPN uses as its SISR branch (the original's ``dbpns.py``)."""

from __future__ import annotations

import torch
from torch import nn

from base_networks import ConvBlock, DownBlock, UpBlock, init_weights, projection_kernel


class Net(nn.Module):
    """DBPN-S: a 1x1 feature conv, up/down/up/down/up projections, a 1x1 fusion of the three
    HR feature maps. Maps LR features (``base_filter`` channels) to HR features (``feat``).

    Args:
        base_filter: input channels (LR features).
        feat: channels of the projection units and of the output (HR features).
        num_stages: number of up-projections fused by ``.output``; the network has exactly three,
            so only 3 is valid (the original accepted other values and crashed in forward).
        scale_factor: 2, 4 or 8.
        init: "stable" (default) or "kaiming" (the original's); see ``base_networks.init_weights``.
    """

    def __init__(self, base_filter: int = 256, feat: int = 64, num_stages: int = 3,
                 scale_factor: int = 4, init: str = "stable"):
        super().__init__()
        if num_stages != 3:
            raise ValueError(f"num_stages must be 3 (DBPN-S has three up-projections), "
                             f"got {num_stages!r}")
        kernel, stride, padding = projection_kernel(scale_factor)
        self.feat1 = ConvBlock(base_filter, feat, 1, 1, 0, activation="prelu", norm=None)
        self.up1 = UpBlock(feat, kernel, stride, padding)
        self.down1 = DownBlock(feat, kernel, stride, padding)
        self.up2 = UpBlock(feat, kernel, stride, padding)
        self.down2 = DownBlock(feat, kernel, stride, padding)
        self.up3 = UpBlock(feat, kernel, stride, padding)
        self.output = ConvBlock(num_stages * feat, feat, 1, 1, 0, activation=None, norm=None)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feat1(x)
        h1 = self.up1(x)
        h2 = self.up2(self.down1(h1))
        h3 = self.up3(self.down2(h2))
        return self.output(torch.cat((h3, h2, h1), 1))
