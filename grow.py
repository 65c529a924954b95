"""Grow a trained RBPN generator into a wider and deeper one that computes the same function.

    python grow.py weights/iSeeBetter_4x_compact.pth --base_filter 48 --feat 24 --n_resblock 1 \\
        --output grown.pth

Training a larger model from scratch on a CPU repeats what the smaller one already learnt; a
grown model starts where the smaller one stopped (Net2Net, Chen et al., ICLR 2016) and
``iSeeBetterTrain.py --pretrained --pretrained_sr grown.pth`` trains on from there.

- Wider (``base_filter``, ``feat``): every new channel copies an old one of the same width
  (the LR features of width ``base_filter``, or the HR features of width ``feat``). Each layer
  reading a copied channel splits that channel's weight among its copies in random shares that
  sum to one, so the sum it computes is unchanged while the copies get different gradients and
  grow apart. PReLU slopes are single numbers, so copies stay copies through them.
- Deeper (``n_resblock``): a new residual block is appended to each MISR stack with its second
  conv at zero and its PReLU slope at one, which makes it the identity.

The grown model's output equals the original's up to float rounding (``tests/test_grow.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping, Sequence

import torch

import checkpoint
import cli
import rbpn

# (input, output) channel groups of every conv weight, by parameter name: "B" the LR features
# (base_filter), "F" the HR features (feat), "F*k" k concatenated HR features, None a fixed
# width (image channels, the 8 input channels of a frame pair). Transposed convs hold their
# weight as (in, out, ...), the others as (out, in, ...).
_GROUPS = [
    (r"feat0\.conv", (None, "B")),
    (r"feat1\.conv", (None, "B")),
    (r"DBPN\.feat1\.conv", ("B", "F")),
    (r"DBPN\.(up|down)\d\.\w+\.(de)?conv", ("F", "F")),
    (r"DBPN\.output\.conv", ("F*3", "F")),
    (r"res_feat1\.\d+\.conv[12]", ("B", "B")),
    (r"res_feat1\.\d+\.deconv", ("B", "F")),
    (r"res_feat[23]\.\d+\.conv[12]", ("F", "F")),
    (r"res_feat2\.\d+\.conv", ("F", "F")),
    (r"res_feat3\.\d+\.conv", ("F", "B")),
    (r"output\.conv", ("F*frames", None)),
]


def _groups(layer: str) -> tuple[str | None, str | None]:
    for pattern, groups in _GROUPS:
        if re.fullmatch(pattern, layer):
            return groups
    raise ValueError(f"grow: no channel groups known for layer {layer!r}")


def _old_name(name: str, old_blocks: int, new_blocks: int) -> str | None:
    """The parameter of the small model that ``name`` of the grown one comes from; None for
    the parameters of an appended residual block."""
    match = re.match(r"(res_feat[123])\.(\d+)\.(.*)", name)
    if not match:
        return name
    stack, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if index == new_blocks:  # the stack's closing conv moves behind the new blocks
        return f"{stack}.{old_blocks}.{rest}"
    return name if index < old_blocks else None


def _channel_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """For each of ``new`` channels the old channel it copies: the first ``old`` are
    themselves, the rest are drawn at random."""
    extra = torch.randint(old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), extra])


def _shares(index: torch.Tensor, rows: int, tail: Sequence[int], noise: float,
            generator: torch.Generator) -> torch.Tensor:
    """Random positive weights, shaped (rows, len(index), *tail), that sum to one over the
    positions sharing a value of ``index`` (an old channel's copies) for every row."""
    raw = torch.exp(noise * torch.randn(rows, len(index), *tail, generator=generator,
                                        dtype=torch.float64))
    totals = torch.zeros(rows, int(index.max()) + 1, *tail, dtype=torch.float64)
    totals.index_add_(1, index, raw)
    return raw / totals.index_select(1, index)


def _concat_map(group: str, maps: Mapping[str, tuple[torch.Tensor, int]],
                frames: int) -> torch.Tensor:
    """The channel map of a group, also for k concatenated copies of a group ("F*k")."""
    name, _, times = group.partition("*")
    index, old_width = maps[name]
    copies = 1 if not times else (frames if times == "frames" else int(times))
    return torch.cat([index + k * old_width for k in range(copies)])


def _widen(weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool,
           groups: tuple[str | None, str | None], maps: Mapping[str, tuple[torch.Tensor, int]],
           frames: int, noise: float, generator: torch.Generator):
    w = weight.double()
    if transposed:
        w = w.transpose(0, 1)
    in_group, out_group = groups
    if out_group is not None:
        out_index = _concat_map(out_group, maps, frames)
        w = w.index_select(0, out_index)
        bias = None if bias is None else bias.index_select(0, out_index)
    if in_group is not None:
        in_index = _concat_map(in_group, maps, frames)
        w = w.index_select(1, in_index) * _shares(in_index, w.shape[0], w.shape[2:], noise,
                                                  generator)
    if transposed:
        w = w.transpose(0, 1)
    return w.to(weight.dtype).contiguous(), bias


def grow(state_dict: Mapping[str, torch.Tensor], config: rbpn.ModelConfig, base_filter: int,
         feat: int, n_resblock: int, noise: float = 0.3, seed: int = 0,
         ) -> tuple[dict[str, torch.Tensor], rbpn.ModelConfig]:
    """The weights and configuration of a grown generator computing what ``state_dict`` does.

    Args:
        state_dict: the small generator's weights (``checkpoint.load_state_dict``).
        config: its configuration; only the three sizes below change.
        base_filter, feat, n_resblock: the grown sizes, each at least the old one.
        noise: spread of the random shares among a channel's copies (log-normal sigma; 0 gives
            equal shares, and copies that never grow apart).
        seed: the channel choice, the shares and the new blocks' first convs.
    """
    new_sizes = {"base_filter": base_filter, "feat": feat, "n_resblock": n_resblock}
    for name, value in new_sizes.items():
        if value < getattr(config, name):
            raise cli.ParameterError(name, value,
                                     f"must be at least the model's {getattr(config, name)}")
    if noise < 0:
        raise cli.ParameterError("noise", noise, "must be 0 or more")
    grown = dataclasses.replace(config, **new_sizes)
    generator = torch.Generator().manual_seed(seed)
    maps = {"B": (_channel_map(config.base_filter, base_filter, generator), config.base_filter),
            "F": (_channel_map(config.feat, feat, generator), config.feat)}
    with torch.random.fork_rng():  # the new blocks' first convs, without touching torch's seed
        torch.manual_seed(seed)
        template = grown.build()
    out: dict[str, torch.Tensor] = {}
    for name, fresh in template.state_dict().items():
        source = _old_name(name, config.n_resblock, n_resblock)
        if source is None:  # an appended block: conv1 as initialised, conv2 zero, slope one
            out[name] = (fresh if ".conv1." in name else
                         torch.ones_like(fresh) if name.endswith("act.weight") else
                         torch.zeros_like(fresh))
            continue
        layer, _, kind = source.rpartition(".")
        if layer.endswith(".act"):  # a PReLU slope
            out[name] = state_dict[source].clone()
        elif kind == "weight":
            bias = state_dict.get(f"{layer}.bias")
            weight, bias = _widen(state_dict[source], bias, layer.endswith("deconv"),
                                  _groups(layer), maps, config.nFrames - 1, noise, generator)
            out[name] = weight
            if bias is not None:
                out[name.removesuffix("weight") + "bias"] = bias.clone()
    return out, grown


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description="Grow a trained RBPN generator into a wider and "
                                            "deeper one with the same output (Net2Net).")
    p.add_argument("model", help="the trained generator's weights (.pth); the sizes are read "
                                 "from its tensors")
    p.add_argument("--base_filter", type=int, required=True, help="grown LR feature channels")
    p.add_argument("--feat", type=int, required=True, help="grown HR feature channels")
    p.add_argument("--n_resblock", type=int, required=True,
                   help="grown residual blocks per MISR stack")
    p.add_argument("--noise", type=float, default=0.3,
                   help="spread of the random shares among copied channels (default: 0.3)")
    p.add_argument("--seed", type=int, default=0, help="random choices (default: 0)")
    p.add_argument("--output", "-o", required=True, help="where to write the grown weights")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state_dict = checkpoint.load_state_dict(args.model)
    try:
        config = rbpn.ModelConfig.from_weights(state_dict)
    except ValueError as err:
        raise cli.CLIError(f"{args.model}: {err}") from None
    grown, new_config = grow(state_dict, config, args.base_filter, args.feat, args.n_resblock,
                             args.noise, args.seed)
    checkpoint.save_weights(grown, args.output)
    params = sum(t.numel() for t in grown.values())
    print(f"{args.output}: {new_config.base_filter}/{new_config.feat}/{new_config.n_resblock} "
          f"({params:,} parameters) grown from {config.base_filter}/{config.feat}/"
          f"{config.n_resblock}")
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
