"""SRGAN's generator and discriminator, as in the iSeeBetter repository's ``SRGAN/model.py``.

iSeeBetter trains RBPN against ``Discriminator``; ``Generator`` (SRResNet) is here for
completeness. Module indices inside ``Discriminator.net`` are the original's, so its
state_dict keys (``net.0.weight`` ... ``net.26.bias``) match the original checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _discriminator_layers() -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, kernel_size=3, padding=1), nn.LeakyReLU(0.2)]
    # (in, out, stride) of the seven conv-BN-LeakyReLU stages.
    stages = [(64, 64, 2), (64, 128, 1), (128, 128, 2), (128, 256, 1), (256, 256, 2),
              (256, 512, 1), (512, 512, 2)]
    for c_in, c_out, stride in stages:
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
                   nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(512, 1024, kernel_size=1), nn.LeakyReLU(0.2),
               nn.Conv2d(1024, 1, kernel_size=1)]
    return layers


class Discriminator(nn.Module):
    """SRGAN's discriminator: one probability (sigmoid) per image that it is a real HR frame.

    Accepts any image size of at least 16x16 (global average pooling before the classifier).

    Args:
        (none: the architecture is fixed, 5,215,425 parameters.)
    """

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(*_discriminator_layers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B,) scores in (0, 1)."""
        return torch.sigmoid(self.net(x).view(x.size(0)))


class ResidualBlock(nn.Module):
    """SRResNet block: ``x + bn2(conv2(prelu(bn1(conv1(x)))))``.

    Args:
        channels: channels in and out.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.prelu(self.bn1(self.conv1(x)))
        return x + self.bn2(self.conv2(residual))


class UpsampleBLock(nn.Module):
    """Conv to ``up_scale**2`` times the channels, pixel shuffle, PReLU (the original's name).

    Args:
        in_channels: channels in and out.
        up_scale: spatial factor.
    """

    def __init__(self, in_channels: int, up_scale: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels * up_scale ** 2, kernel_size=3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(up_scale)
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.pixel_shuffle(self.conv(x)))


class Generator(nn.Module):
    """SRGAN's generator (SRResNet): five residual blocks, log2(scale) x2 pixel-shuffle stages;
    output in [0, 1] via ``(tanh + 1) / 2``.

    Args:
        scale_factor: a power of two (2, 4, 8, ...).
    """

    def __init__(self, scale_factor: int):
        super().__init__()
        upsample_block_num = int(math.log2(scale_factor)) if scale_factor >= 1 else 0
        if scale_factor < 2 or 2 ** upsample_block_num != scale_factor:
            raise ValueError(f"scale_factor must be a power of two >= 2, got {scale_factor!r}")
        self.block1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=9, padding=4), nn.PReLU())
        self.block2 = ResidualBlock(64)
        self.block3 = ResidualBlock(64)
        self.block4 = ResidualBlock(64)
        self.block5 = ResidualBlock(64)
        self.block6 = ResidualBlock(64)
        self.block7 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=3, padding=1),
                                    nn.BatchNorm2d(64))
        self.block8 = nn.Sequential(*[UpsampleBLock(64, 2) for _ in range(upsample_block_num)],
                                    nn.Conv2d(64, 3, kernel_size=9, padding=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block1 = self.block1(x)
        body = self.block6(self.block5(self.block4(self.block3(self.block2(block1)))))
        block8 = self.block8(block1 + self.block7(body))
        return (torch.tanh(block8) + 1) / 2
