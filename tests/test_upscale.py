"""upscale.py: neighbour windows, flows, tiling, memory estimate and retention, residual,
autocast and self-ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rbpn
import upscale
from cli import CLIError


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and OpenMP threads spinning against the other
    jobs of a busy 2-core machine make them up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiles_cover_the_frame_once_with_clipped_margins():
    height, width, tile, overlap = 37, 50, 16, 5
    cover = np.zeros((height, width), int)
    for t in upscale.tiles(height, width, tile, overlap):
        cover[t.top:t.bottom, t.left:t.right] += 1
        assert t.bottom - t.top <= tile and t.right - t.left <= tile
        assert t.pad_top == max(t.top - overlap, 0) and t.pad_bottom == min(t.bottom + overlap,
                                                                            height)
        assert t.pad_left == max(t.left - overlap, 0) and t.pad_right == min(t.right + overlap,
                                                                             width)
    assert (cover == 1).all()


def tiny_model(n_frames: int = 3, seed: int = 0) -> rbpn.Net:
    torch.manual_seed(seed)
    return rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=n_frames,
                    scale_factor=4).eval()


def random_batch(batch: int, height: int, width: int, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, height, width, generator=g)
    neighbours = [torch.rand(batch, 3, height, width, generator=g) for _ in range(n)]
    flows = [torch.randn(batch, 2, height, width, generator=g) for _ in range(n)]
    return x, neighbours, flows


def test_tiled_output_matches_untiled():
    model = tiny_model()
    x, neighbours, flows = random_batch(2, 22, 35, 2)
    whole = upscale.Upscaler(model, scale=4, auto_tile=False)(x, neighbours, flows)
    assert whole.shape == (2, 3, 88, 140)
    tiled_up = upscale.Upscaler(model, scale=4, tile=16, tile_overlap=8)
    tiled = tiled_up(x, neighbours, flows)
    assert tiled_up.last_tile == 16
    assert (tiled - whole).abs().mean() < 1e-3
    # Without overlap the seams show: the margin is what makes tiling exact enough.
    seams = upscale.Upscaler(model, scale=4, tile=16, tile_overlap=0)(x, neighbours, flows)
    assert (seams - whole).abs().mean() > 10 * (tiled - whole).abs().mean()
    # A tile as large as the frame is the untiled pass.
    big = upscale.Upscaler(model, scale=4, tile=64)(x, neighbours, flows)
    assert torch.equal(big, whole)


def test_automatic_tiling_when_a_frame_does_not_fit():
    model = tiny_model()
    x, neighbours, flows = random_batch(1, 36, 36, 2)
    roomy = upscale.Upscaler(model, scale=4, tile_overlap=4)
    whole = roomy(x, neighbours, flows)
    assert roomy.last_tile == 0
    per_pixel, fixed = roomy.memory.per_pixel(2)
    canvas = 3 * (36 * 4) ** 2 * 4  # the float32 output, in RAM beside the model
    tight = upscale.Upscaler(model, scale=4, tile_overlap=4,
                             max_memory=canvas + per_pixel * 26 * 26 + fixed)
    tiled = tight(x, neighbours, flows)
    assert tight.last_tile == 26 - 2 * 4
    assert (tiled - whole).abs().mean() < 1e-3
    no_auto = upscale.Upscaler(model, scale=4, auto_tile=False, max_memory=1.0)
    assert no_auto.plan_tile(1, 36, 36, 2) == 0


def test_residual_adds_the_bicubic_and_autocast_returns_float32():
    model = tiny_model()
    x, neighbours, flows = random_batch(1, 12, 10, 2)
    bicubic = torch.rand(1, 3, 48, 40)
    plain = upscale.Upscaler(model, scale=4)(x, neighbours, flows)
    residual = upscale.Upscaler(model, scale=4, residual=True)(x, neighbours, flows, bicubic)
    torch.testing.assert_close(residual, plain + bicubic)
    half = upscale.Upscaler(model, scale=4, precision="bf16")(x, neighbours, flows)
    assert half.dtype == torch.float32
    assert 0 < (half - plain).abs().mean() < 0.02
    with pytest.raises(CLIError, match="precision='fp8': choose one of"):
        upscale.Upscaler(model, scale=4, precision="fp8")
    with pytest.raises(CLIError, match="tile=5: must be 0") as err:  # a notebook user's words
        upscale.Upscaler(model, scale=4, tile=5)
    assert err.value.as_flag({}) == "--tile 5: must be 0 (automatic) or at least 16"


class WarpNeighbour(nn.Module):
    """Reads the first neighbour at p + flow (integer flows, clamped to the frame) and
    upsamples it: a model that commutes with every flip and transposition exactly when the
    flows are transformed correctly with the frames."""

    def forward(self, x, neighbours, flows):
        frame, flow = neighbours[0], flows[0].round().long()
        b, c, h, w = frame.shape
        rows = (torch.arange(h).view(1, h, 1) + flow[:, 1]).clamp(0, h - 1)
        cols = (torch.arange(w).view(1, 1, w) + flow[:, 0]).clamp(0, w - 1)
        index = (rows * w + cols).reshape(b, 1, h * w).expand(b, c, h * w)
        warped = frame.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
        return nn.functional.interpolate(warped, scale_factor=4, mode="nearest")


def test_symmetries_are_the_eight_distinct_ones_and_invert():
    image = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    seen = set()
    for sym in upscale.SYMMETRIES:
        moved = sym.image(image)
        seen.add((tuple(moved.shape), tuple(moved.flatten().tolist())))
        assert torch.equal(sym.invert(moved), image)
    assert len(upscale.SYMMETRIES) == len(seen) == 8


def test_self_ensemble_transforms_flows_with_the_frames():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 12, 17, generator=g)
    neighbours = [torch.rand(2, 3, 12, 17, generator=g)]
    flows = [torch.randint(-3, 4, (2, 2, 12, 17), generator=g).float()]
    kwargs = {"scale": 4, "channels_last": False, "auto_tile": False}
    plain = upscale.Upscaler(WarpNeighbour(), **kwargs)(x, neighbours, flows)
    ensemble = upscale.Upscaler(WarpNeighbour(), self_ensemble=True, **kwargs)
    torch.testing.assert_close(ensemble(x, neighbours, flows), plain)
    tiled = upscale.Upscaler(WarpNeighbour(), self_ensemble=True, scale=4, tile=16,
                             tile_overlap=4, channels_last=False)
    torch.testing.assert_close(tiled(x, neighbours, flows), plain)
    # Flows carried along unchanged (as plain images) break the equivalence.
    wrong = upscale.Symmetry(hflip=True, vflip=False, transpose=True)
    moved = wrong.invert(WarpNeighbour()(wrong.image(x), [wrong.image(neighbours[0])],
                                         [wrong.image(flows[0])]))
    assert not torch.allclose(moved, plain)


def test_self_ensemble_averages_the_eight_outputs_of_a_real_model():
    model = tiny_model()
    x, neighbours, flows = random_batch(1, 10, 14, 2)
    bicubic = torch.rand(1, 3, 40, 56)
    outputs = []
    for sym in upscale.SYMMETRIES:
        run = upscale.Upscaler(model, scale=4, auto_tile=False)
        outputs.append(sym.invert(run(sym.image(x), [sym.image(n) for n in neighbours],
                                      [sym.flow(f) for f in flows])))
    ensemble = upscale.Upscaler(model, scale=4, residual=True, self_ensemble=True)
    torch.testing.assert_close(ensemble(x, neighbours, flows, bicubic),
                               torch.stack(outputs).mean(0) + bicubic)
    assert (outputs[0] - outputs[5]).abs().mean() > 1e-3  # a random model is not symmetric


def test_in_background_keeps_order_and_raises_worker_errors():
    assert list(upscale.in_background(iter(range(20)), depth=3)) == list(range(20))

    def failing():
        yield 1
        raise ValueError("bad frame 2")

    got = []
    with pytest.raises(ValueError, match="bad frame 2"):
        for item in upscale.in_background(failing()):
            got.append(item)
    assert got == [1]


def test_a_tile_chosen_earlier_is_imposed():
    """Frames processed elsewhere or later (another process, a resumed run with another
    memory budget) are cut as the plan said, whatever this upscaler's budget would pick."""
    model = tiny_model()
    x, neighbours, flows = random_batch(1, 22, 35, 2)
    tiled = upscale.Upscaler(model, scale=4, tile=16, tile_overlap=8)(x, neighbours, flows)
    whole = upscale.Upscaler(model, scale=4, auto_tile=False)(x, neighbours, flows)
    starved = upscale.Upscaler(model, scale=4, max_memory=1.0)  # would tile at the minimum
    assert torch.equal(starved(x, neighbours, flows, tile=16), tiled)
    assert starved.last_tile == 16
    assert torch.equal(starved(x, neighbours, flows, tile=0), whole)
    assert starved.last_tile == 0
