"""Building blocks of DBPN and RBPN: conv / deconv blocks, residual blocks, back-projection units.

Attribute names (``.conv``, ``.deconv``, ``.bn``, ``.act``, ``.up_conv1`` ...) are the original's,
so checkpoints saved by the original code load unchanged. Defaults are the original's too
(``ResnetBlock`` defaults to batch norm, the others to none; RBPN passes ``norm=None``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# (kernel, stride, padding) of the projection convs: an exact x`scale` up/down sampling.
_PROJECTION = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2)}


def projection_kernel(scale_factor: int) -> tuple[int, int, int]:
    """(kernel_size, stride, padding) of the up/down-projection convs for a scale of 2, 4 or 8."""
    if scale_factor not in _PROJECTION:
        raise ValueError(f"scale_factor must be one of {sorted(_PROJECTION)}, got {scale_factor!r}")
    return _PROJECTION[scale_factor]


def make_norm(norm: str | None, channels: int) -> nn.Module | None:
    """The normalisation layer named ``norm`` ("batch", "instance" or None)."""
    if norm is None:
        return None
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    raise ValueError(f"norm must be 'batch', 'instance' or None, got {norm!r}")


def make_activation(activation: str | None) -> nn.Module | None:
    """The activation named ``activation`` (the original's choices; None or "no" for none)."""
    if activation is None or activation == "no":
        return None
    factories = {
        "relu": lambda: nn.ReLU(True),
        "prelu": nn.PReLU,
        "lrelu": lambda: nn.LeakyReLU(0.2, True),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    if activation not in factories:
        raise ValueError(f"activation must be one of {sorted(factories)} or None, "
                         f"got {activation!r}")
    return factories[activation]()


class _LayerNormAct(nn.Module):
    """A (transposed) conv, then the optional norm ``.bn`` and the optional activation ``.act``."""

    def _set_norm_act(self, channels: int, activation: str | None, norm: str | None) -> None:
        self.bn = make_norm(norm, channels)
        self.act = make_activation(activation)

    def _norm_act(self, out: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            out = self.bn(out)
        if self.act is not None:
            out = self.act(out)
        return out


class ConvBlock(_LayerNormAct):
    """Conv2d, optional norm, optional activation.

    Args:
        input_size: input channels.
        output_size: output channels.
        kernel_size, stride, padding, bias: of the ``nn.Conv2d`` (``.conv``).
        activation: "prelu" (default), "relu", "lrelu", "tanh", "sigmoid" or None.
        norm: "batch", "instance" or None (default).
    """

    def __init__(self, input_size: int, output_size: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, bias: bool = True, activation: str | None = "prelu",
                 norm: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(input_size, output_size, kernel_size, stride, padding, bias=bias)
        self._set_norm_act(output_size, activation, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_act(self.conv(x))


class DeconvBlock(_LayerNormAct):
    """ConvTranspose2d, optional norm, optional activation.

    Args:
        input_size: input channels.
        output_size: output channels.
        kernel_size, stride, padding, bias: of the ``nn.ConvTranspose2d`` (``.deconv``).
        activation: as for ``ConvBlock`` (default "prelu").
        norm: as for ``ConvBlock`` (default None).
    """

    def __init__(self, input_size: int, output_size: int, kernel_size: int = 4, stride: int = 2,
                 padding: int = 1, bias: bool = True, activation: str | None = "prelu",
                 norm: str | None = None):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(input_size, output_size, kernel_size, stride, padding,
                                         bias=bias)
        self._set_norm_act(output_size, activation, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm_act(self.deconv(x))


class ResnetBlock(_LayerNormAct):
    """``act(conv2(act(conv1(x))) + x)`` (with the norm after each conv when set).

    As in the original, ONE activation module (one PReLU slope) and one norm serve both convs.

    Args:
        num_filter: channels in and out.
        kernel_size, stride, padding, bias: of both convs (stride 1 keeps the residual sum valid).
        activation: as for ``ConvBlock`` (default "prelu").
        norm: "batch" (the original's default), "instance" or None (what RBPN uses).
    """

    def __init__(self, num_filter: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 bias: bool = True, activation: str | None = "prelu", norm: str | None = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(num_filter, num_filter, kernel_size, stride, padding, bias=bias)
        self.conv2 = nn.Conv2d(num_filter, num_filter, kernel_size, stride, padding, bias=bias)
        self._set_norm_act(num_filter, activation, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._norm_act(self.conv1(x))
        out = self.conv2(out)
        if self.bn is not None:
            out = self.bn(out)
        out = out + x
        return out if self.act is None else self.act(out)


class UpBlock(nn.Module):
    """Up-projection unit: ``h0 = up(x); l0 = down(h0); return up(l0 - x) + h0``.

    Args:
        num_filter: channels in and out.
        kernel_size, stride, padding: of the projection convs (see ``projection_kernel``).
        bias: conv biases.
        activation: activation after each conv (default "prelu").
        norm: accepted for the original's signature; like the original, the convs have none.
    """

    def __init__(self, num_filter: int, kernel_size: int = 8, stride: int = 4, padding: int = 2,
                 bias: bool = True, activation: str | None = "prelu", norm: str | None = None):
        super().__init__()
        args = (num_filter, num_filter, kernel_size, stride, padding, bias, activation, None)
        self.up_conv1 = DeconvBlock(*args)
        self.up_conv2 = ConvBlock(*args)
        self.up_conv3 = DeconvBlock(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.up_conv1(x)
        l0 = self.up_conv2(h0)
        h1 = self.up_conv3(l0 - x)
        return h1 + h0


class DownBlock(nn.Module):
    """Down-projection unit: ``l0 = down(x); h0 = up(l0); return down(h0 - x) + l0``.

    Args:
        num_filter: channels in and out.
        kernel_size, stride, padding: of the projection convs (see ``projection_kernel``).
        bias: conv biases.
        activation: activation after each conv (default "prelu").
        norm: accepted for the original's signature; like the original, the convs have none.
    """

    def __init__(self, num_filter: int, kernel_size: int = 8, stride: int = 4, padding: int = 2,
                 bias: bool = True, activation: str | None = "prelu", norm: str | None = None):
        super().__init__()
        args = (num_filter, num_filter, kernel_size, stride, padding, bias, activation, None)
        self.down_conv1 = ConvBlock(*args)
        self.down_conv2 = DeconvBlock(*args)
        self.down_conv3 = ConvBlock(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = self.down_conv1(x)
        h0 = self.down_conv2(l0)
        l1 = self.down_conv3(h0 - x)
        return l1 + l0


# Weight scale of the layers that close a residual branch under the "stable" init (as EDSR,
# ESRGAN and BasicSR's default_init_weights do): each block then starts close to the identity.
RESIDUAL_INIT_SCALE = 0.1
INIT_SCHEMES = ("stable", "kaiming")


def residual_branch_ends(model: nn.Module) -> list[nn.Module]:
    """The convs of ``model`` whose output is added to a skip connection: ``ResnetBlock.conv2``
    and the error projections of ``UpBlock`` / ``DownBlock``."""
    ends: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, ResnetBlock):
            ends.append(module.conv2)
        elif isinstance(module, UpBlock):
            ends.append(module.up_conv3.deconv)
        elif isinstance(module, DownBlock):
            ends.append(module.down_conv3.conv)
    return ends


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "stable",
                 extra_residual_ends: Iterable[nn.Module] = ()) -> None:
    """Initialise every conv and transposed conv of ``model`` in place; biases become 0.

    "kaiming": the original's ``kaiming_normal_`` on every weight. With it an untrained
    full-size RBPN's output is ~1e6-1e8: each residual block and each pass of the recurrent
    projection loop multiplies the feature size. "stable": the same, then the weights of every
    layer closing a residual branch are scaled by ``RESIDUAL_INIT_SCALE``, so blocks start near
    the identity and the output is of image size (0.03-0.5 RMS). Parameter names and shapes are
    the same for both, so either model saves checkpoints the original code loads.

    Args:
        model: the network to initialise.
        scheme: "stable" or "kaiming".
        extra_residual_ends: further layers closing a residual branch (scaled under "stable"),
            beyond those ``residual_branch_ends`` finds.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                module.bias.zero_()
    if scheme == "stable":
        for layer in [*residual_branch_ends(model), *extra_residual_ends]:
            layer.weight.mul_(RESIDUAL_INIT_SCALE)
