"""memory.py: the measured memory estimate, the budget, the tile that fits, and the retention of
freed memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

import memory
from cli import CLIError
from tests.conftest import ROOT
from tests.test_upscale import tiny_model


def test_live_tensor_count_is_exact_for_a_known_forward():
    class Toy(nn.Module):
        def forward(self, x, neighbours, flows):
            a = x * 2  # 12 bytes per pixel (3 float32 channels)
            b = a + neighbours[0]  # 12 more
            return b.sum(1, keepdim=True)  # 4 more, with a and b still alive: 28

    per_pixel, fixed = memory.bytes_per_lr_pixel(Toy(), 1)  # the inputs are not counted
    assert per_pixel == pytest.approx(28.0)
    assert fixed == pytest.approx(0.0)
    half, _ = memory.bytes_per_lr_pixel(Toy(), 1, torch.bfloat16)
    assert half == pytest.approx(14.0)


def test_rbpn_estimate_covers_its_hr_features():
    model = tiny_model(n_frames=5)
    per_pixel, _ = memory.bytes_per_lr_pixel(model, 4)
    # The 4 HR feature maps (feat 8, 16 HR pixels per LR pixel) are alive together at the end.
    assert per_pixel >= 4 * 8 * 16 * 4
    assert per_pixel < 100 * 8 * 16 * 4


def test_choose_tile_fits_the_budget():
    assert memory.choose_tile(100, 200, 1, 1000.0, 0.0, 100 * 200 * 1000.0, 8) == 0
    budget = 50 * 50 * 1000.0
    tile = memory.choose_tile(100, 200, 1, 1000.0, 0.0, budget, 8)
    assert tile == 50 - 16
    assert (tile + 16) ** 2 * 1000.0 <= budget < (tile + 17) ** 2 * 1000.0
    assert memory.choose_tile(100, 200, 2, 1000.0, 0.0, budget, 8) < tile
    with pytest.raises(CLIError, match="not enough memory"):
        memory.choose_tile(100, 200, 1, 1000.0, 0.0, 20 * 20 * 1000.0, 8)


def test_available_memory_is_positive():
    assert memory.available_memory(torch.device("cpu")) > 0


RETENTION_RUN = """
import json, sys, torch
import memory, rbpn, upscale
torch.manual_seed(0)
net = rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3, scale_factor=4).eval()
h = w = 64
probe = upscale.Upscaler(net, scale=4)
per_pixel, fixed = probe.memory.per_pixel(2)
need = per_pixel * h * w + fixed + 3 * h * w * 16 * 4  # model and the CPU output canvas
up = upscale.Upscaler(net, scale=4, retain_freed_memory=True, max_memory=float(sys.argv[1]) * need)
x = torch.rand(1, 3, h, w)
up(x, [x, x], [torch.zeros(1, 2, h, w)] * 2)
print(json.dumps([memory.freed_memory_retained(), up.last_tile]))
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


RSS_AFTER_FREE = """
import sys
import torch
import memory
if sys.argv[1] == "retain":
    print(memory.retain_freed_memory())
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
for _ in range(3):  # a layer's activation: allocated, written, freed
    big = torch.ones(64, 2**20)
    del big
print(round(rss_mib()))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retain_freed_memory_keeps_freed_tensors_for_reuse():
    def run(mode: str, **env: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], cwd=ROOT,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    default = run("default")
    retained = run("retain")
    assert retained[0] == "True"
    # The 256 MiB tensor goes back to the kernel by default and stays mapped when retained.
    assert int(retained[1]) - int(default[0]) > 200
    # A user's own malloc settings win.
    assert run("retain", MALLOC_TRIM_THRESHOLD_="0")[0] == "False"
