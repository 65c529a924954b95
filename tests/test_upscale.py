"""upscale.py: neighbour windows, flows, tiling, memory estimate and retention, residual,
autocast and self-ensemble."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dataset
import rbpn
import upscale
from cli import CLIError
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and OpenMP threads spinning against the other
    jobs of a busy 2-core machine make them up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_frame_windows_clamp_at_both_ends():
    offsets = [-3, -2, -1, 1, 2, 3]
    windows = list(upscale.frame_windows(range(5), offsets))
    assert [t for t, _ in windows] == [0, 1, 2, 3, 4]
    assert windows[0][1] == [0, 0, 0, 1, 2, 3]
    assert windows[1][1] == [0, 0, 0, 2, 3, 4]
    assert windows[4][1] == [1, 2, 3, 4, 4, 4]
    past = list(upscale.frame_windows("abc", [-1, -2]))
    assert past == [("a", ["a", "a"]), ("b", ["a", "a"]), ("c", ["b", "a"])]
    assert list(upscale.frame_windows(["only"], offsets)) == [("only", ["only"] * 6)]
    assert list(upscale.frame_windows([], offsets)) == []


def test_frame_windows_stream_with_bounded_lookahead():
    produced = []

    def frames():
        for i in range(100):
            produced.append(i)
            yield i

    for t, _ in upscale.frame_windows(frames(), [-3, -2, -1, 1, 2, 3]):
        # frame t is handed out once frames up to t+3 are read, and no further
        assert len(produced) == min(t + 4, 100)


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


def test_live_tensor_count_is_exact_for_a_known_forward():
    class Toy(nn.Module):
        def forward(self, x, neighbours, flows):
            a = x * 2  # 12 bytes per pixel (3 float32 channels)
            b = a + neighbours[0]  # 12 more
            return b.sum(1, keepdim=True)  # 4 more, with a and b still alive: 28

    per_pixel, fixed = upscale.bytes_per_lr_pixel(Toy(), 1)  # the inputs are not counted
    assert per_pixel == pytest.approx(28.0)
    assert fixed == pytest.approx(0.0)
    half, _ = upscale.bytes_per_lr_pixel(Toy(), 1, torch.bfloat16)
    assert half == pytest.approx(14.0)


def test_rbpn_estimate_covers_its_hr_features():
    model = tiny_model(n_frames=5)
    per_pixel, _ = upscale.bytes_per_lr_pixel(model, 4)
    # The 4 HR feature maps (feat 8, 16 HR pixels per LR pixel) are alive together at the end.
    assert per_pixel >= 4 * 8 * 16 * 4
    assert per_pixel < 100 * 8 * 16 * 4


def test_choose_tile_fits_the_budget():
    assert upscale.choose_tile(100, 200, 1, 1000.0, 0.0, 100 * 200 * 1000.0, 8) == 0
    budget = 50 * 50 * 1000.0
    tile = upscale.choose_tile(100, 200, 1, 1000.0, 0.0, budget, 8)
    assert tile == 50 - 16
    assert (tile + 16) ** 2 * 1000.0 <= budget < (tile + 17) ** 2 * 1000.0
    assert upscale.choose_tile(100, 200, 2, 1000.0, 0.0, budget, 8) < tile
    with pytest.raises(CLIError, match="not enough memory"):
        upscale.choose_tile(100, 200, 1, 1000.0, 0.0, 20 * 20 * 1000.0, 8)


def test_automatic_tiling_when_a_frame_does_not_fit():
    model = tiny_model()
    x, neighbours, flows = random_batch(1, 36, 36, 2)
    roomy = upscale.Upscaler(model, scale=4, tile_overlap=4)
    whole = roomy(x, neighbours, flows)
    assert roomy.last_tile == 0
    per_pixel, fixed = roomy.memory_per_pixel(2)
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
    with pytest.raises(CLIError, match="--precision"):
        upscale.Upscaler(model, scale=4, precision="fp8")
    with pytest.raises(CLIError, match="--tile 5"):
        upscale.Upscaler(model, scale=4, tile=5)


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


def test_flows_repeated_neighbours_are_computed_once(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in "ab")
    calls = []
    real = dataset.compute_flows

    def counting(target, others, threads=None):
        calls.append(len(others))
        return real(target, others, threads)

    monkeypatch.setattr(dataset, "compute_flows", counting)
    flows = upscale.flows_to(a, [a, a, b, b])
    assert calls == [2]
    direct = real(a, [a, b])
    for got, want in zip(flows, [direct[0], direct[0], direct[1], direct[1]], strict=True):
        assert got.shape == (2, 20, 24) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_model_inputs_for_a_frame_and_its_neighbours():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (34, 41, 3), dtype=np.uint8) for _ in range(3)]
    frames = [upscale.make_lr_frame(im, 4, True, pts=10 * i, index=i)
              for i, im in enumerate(images)]
    assert frames[1].hr.size == (40, 32) and frames[1].lr.size == (10, 8)  # modcrop, then 1/4
    x, neighbours, flows, bicubic = upscale.make_inputs(frames[1], [frames[0], frames[2]], 4)
    assert x.shape == (3, 8, 10) and bicubic.shape == (3, 32, 40)
    assert [n.shape for n in neighbours] == [(3, 8, 10)] * 2
    assert [f.shape for f in flows] == [(2, 8, 10)] * 2
    torch.testing.assert_close(neighbours[0], dataset.to_tensor(frames[0].lr))
    as_is = upscale.make_lr_frame(images[0], 4, False)
    assert as_is.hr is None and as_is.lr.size == (41, 34)
    batch = upscale.collate([upscale.make_inputs(frames[1], [frames[0], frames[2]], 4,
                                                 bicubic=False)] * 2)
    assert batch[0].shape == (2, 3, 8, 10) and batch[3] is None
    assert [f.shape for f in batch[2]] == [(2, 2, 8, 10)] * 2


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


def test_available_memory_is_positive():
    assert upscale.available_memory(torch.device("cpu")) > 0


RETENTION_RUN = """
import json, sys, torch
import cli, rbpn, upscale
torch.manual_seed(0)
net = rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4).eval()
h = w = 64
probe = upscale.Upscaler(net, scale=4)
per_pixel, fixed = probe.memory_per_pixel(2)
need = per_pixel * h * w + fixed + 3 * h * w * 16 * 4  # model and the CPU output canvas
up = upscale.Upscaler(net, scale=4, retain_freed_memory=True, max_memory=float(sys.argv[1]) * need)
x = torch.rand(1, 3, h, w)
up(x, [x, x], [torch.zeros(1, 2, h, w)] * 2)
print(json.dumps([cli.freed_memory_retained(), up.last_tile]))
"""


@pytest.mark.parametrize("room, retained, tiled", [(4.0, True, False), (1.5, False, False),
                                                   (0.5, False, True)])
def test_freed_memory_is_retained_only_where_the_budget_has_room(room, retained, tiled):
    """Retention is process-wide, so each case runs in a process of its own."""
    result = subprocess.run([sys.executable, "-c", RETENTION_RUN, str(room)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    got_retained, tile = json.loads(result.stdout)
    assert got_retained is (retained and platform.libc_ver()[0] == "glibc")
    assert (tile > 0) is tiled
