"""pyflow: our Coarse2Fine optical flow against the original's outputs, its API and its CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import cli
import pyflow
from pyflow import _pyflow, coarse2fine_flow, coarse2fine_flows
from pyflow.visualize import flow_to_color
from tests.conftest import ROOT

FIXTURE_CASES = [
    "calendar_crop_64x64_iseebetter",
    "calendar_lr_180x144_iseebetter",
    "foliage_lr_odd_179x117_iseebetter",
    "shift_2_1_96x72",
    "tiny_32x24_iseebetter",
    "vimeo_lr_112x64_defaults",
    "vimeo_lr_112x64_grey",
    "vimeo_lr_112x64_iseebetter",
]
ALL_ISAS = ("baseline", "avx2", "avx512")
FAST = dict(alpha=0.012, ratio=0.75, minWidth=20, nOuterFPIterations=2,
            nInnerFPIterations=1, nSORIterations=5, colType=0)


def load_case(shared_fixtures: Path, name: str):
    path = shared_fixtures / "pyflow" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"fixture {path} not found")
    data = np.load(path)
    im1 = data["im1_u8"].astype(np.float64) / 255
    im2 = data["im2_u8"].astype(np.float64) / 255
    return im1, im2, json.loads(str(data["params"])), data


def textured_pair(h: int, w: int, c: int = 3, shift=(1, 2), seed: int = 0):
    """A smooth random texture and a copy of it shifted by (dy, dx) (np.roll)."""
    rng = np.random.default_rng(seed)
    im = rng.random((h + 8, w + 8, c))
    for axis in (0, 1):  # smooth, so that the flow is well defined
        im = (im + np.roll(im, 1, axis) + np.roll(im, -1, axis)) / 3
    im = (im - im.min()) / (im.max() - im.min())
    im1 = np.ascontiguousarray(im[4:-4, 4:-4])
    im2 = np.ascontiguousarray(np.roll(im, shift, (0, 1))[4:-4, 4:-4])
    return im1, im2


@pytest.fixture
def restore_isa():
    """Lets a test switch the instruction set; the original one is restored afterwards."""
    original = _pyflow.isa()
    yield
    assert _pyflow.set_isa(original)


def supported_isas() -> list[str]:
    original = _pyflow.isa()
    found = [name for name in ALL_ISAS if _pyflow.set_isa(name)]
    _pyflow.set_isa(original)
    return found


# --- the original's numbers ------------------------------------------------------------------

@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_matches_the_original_pyflow(shared_fixtures, case):
    im1, im2, params, ref = load_case(shared_fixtures, case)
    u, v, im2w = coarse2fine_flow(im1, im2, **params)
    assert u.dtype == v.dtype == im2w.dtype == np.float64
    assert u.shape == v.shape == im1.shape[:2] and im2w.shape == im1.shape
    for name, ours, theirs in (("u", u, ref["u"]), ("v", v, ref["v"])):
        err = np.abs(ours - theirs)
        assert err.mean() <= 1e-5 and err.max() <= 1e-3, (name, err.mean(), err.max())
    assert np.abs(im2w - ref["im2W"]).mean() <= 1e-5


def test_every_instruction_set_computes_the_same_bits(shared_fixtures, restore_isa):
    isas = supported_isas()
    assert "baseline" in isas
    im1, im2, params, _ = load_case(shared_fixtures, "vimeo_lr_112x64_iseebetter")
    results = {}
    for name in isas:
        assert _pyflow.set_isa(name) and _pyflow.isa() == name
        results[name] = coarse2fine_flow(im1, im2, **params)
    for name in isas:
        for ours, base in zip(results[name], results["baseline"], strict=True):
            assert np.array_equal(ours, base), name
    assert not _pyflow.set_isa("sse9")


def test_recovers_a_known_shift(shared_fixtures):
    im1, im2, params, _ = load_case(shared_fixtures, "shift_2_1_96x72")
    # The fixture's im2 is im1 moved 2 px left and 1 px up: im1(x, y) = im2(x - 2, y - 1), so
    # the flow (pixel (x, y) of im1 matches (x + u, y + v) of im2) is u = -2, v = -1 (the
    # fixture's note says +2, +1, but its data and the original's output say -2, -1).
    assert np.array_equal(im2[2:-2, 2:-2], np.roll(im1, (-1, -2), (0, 1))[2:-2, 2:-2])
    u, v, _ = coarse2fine_flow(im1, im2, **params)
    err = np.maximum(np.abs(u + 2), np.abs(v + 1))[8:-8, 8:-8]
    assert err.mean() < 0.05
    assert np.mean(err < 0.05) > 0.95


def test_recovers_a_synthetic_shift_in_grey_and_rgb():
    for c, col_type in ((3, 0), (1, 1)):
        im1, im2 = textured_pair(64, 80, c, shift=(1, -2))  # content moves 2 left, 1 down
        u, v, im2w = coarse2fine_flow(im1, im2, **{**pyflow.ISEEBETTER_PARAMS, "colType": col_type})
        inner = (slice(8, -8), slice(8, -8))
        assert np.median(np.abs(u[inner] + 2)) < 0.05 and np.median(np.abs(v[inner] - 1)) < 0.05
        # The warped second image looks like the first one.
        assert np.abs(im2w - im1)[inner].mean() < 0.2 * np.abs(im2 - im1)[inner].mean()


# --- behaviour ------------------------------------------------------------------------------

def test_is_silent_and_leaves_its_inputs_alone(capfd):
    im1, im2 = textured_pair(24, 32)
    copies = im1.copy(), im2.copy()
    coarse2fine_flow(im1, im2, **FAST)
    coarse2fine_flows(im1, [im2, im1], **FAST)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert np.array_equal(im1, copies[0]) and np.array_equal(im2, copies[1])


def test_defaults_are_pyflows():
    im1, im2 = textured_pair(40, 56)
    explicit = coarse2fine_flow(im1, im2, **pyflow.PYFLOW_DEFAULTS)
    for ours, theirs in zip(coarse2fine_flow(im1, im2), explicit, strict=True):
        assert np.array_equal(ours, theirs)
    assert pyflow.ISEEBETTER_PARAMS == dict(alpha=0.012, ratio=0.75, minWidth=20,
                                            nOuterFPIterations=7, nInnerFPIterations=1,
                                            nSORIterations=30, colType=0)


def test_non_contiguous_and_read_only_inputs():
    im1, im2 = textured_pair(30, 40)
    expected = coarse2fine_flow(im1, im2, **FAST)
    wide1 = np.zeros((30, 80, 3))
    wide1[:, ::2] = im1
    frozen = im2.copy()
    frozen.flags.writeable = False
    for ours, theirs in zip(coarse2fine_flow(wide1[:, ::2], frozen, **FAST), expected,
                            strict=True):
        assert np.array_equal(ours, theirs)


def test_out_of_range_ratio_is_replaced_by_0_75():
    im1, im2 = textured_pair(40, 64)
    expected = coarse2fine_flow(im1, im2, **{**FAST, "ratio": 0.75})
    for ratio in (0.2, 0.99, 1.5):
        for ours, theirs in zip(coarse2fine_flow(im1, im2, **{**FAST, "ratio": ratio}), expected,
                                strict=True):
            assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("h, w", [(2, 2), (2, 300), (300, 2), (3, 41)])
def test_extreme_shapes(h, w):
    im1, im2 = textured_pair(h, w)
    u, v, im2w = coarse2fine_flow(im1, im2, **{**FAST, "minWidth": 1})
    assert u.shape == (h, w) and np.isfinite(u).all() and np.isfinite(v).all()
    assert ((im2w >= 0) & (im2w <= 1)).all()


def test_flows_run_in_a_thread_pool_and_keep_their_order():
    im1, _ = textured_pair(48, 64)
    shifts = [(0, 1), (1, 0), (-1, 2), (2, -1), (0, -2)]
    others = [textured_pair(48, 64, shift=s)[1] for s in shifts]
    serial = [coarse2fine_flow(im1, other, **pyflow.ISEEBETTER_PARAMS) for other in others]
    for workers in (None, 1, 2, 8):
        flows = coarse2fine_flows(im1, others, max_workers=workers, **pyflow.ISEEBETTER_PARAMS)
        assert len(flows) == len(others)
        for got, want in zip(flows, serial, strict=True):
            for ours, theirs in zip(got, want, strict=True):
                assert np.array_equal(ours, theirs)
    # The flows differ, so a shuffled order would have been noticed: each follows its shift.
    inner = (slice(8, -8), slice(8, -8))
    for (dy, dx), (u, v, _) in zip(shifts, serial, strict=True):
        assert abs(np.median(u[inner]) - dx) < 0.1 and abs(np.median(v[inner]) - dy) < 0.1
    assert coarse2fine_flows(im1, []) == []
    # Any iterable of frames, e.g. a (N, H, W, C) array.
    stacked = coarse2fine_flows(im1, np.stack(others[:2]), **pyflow.ISEEBETTER_PARAMS)
    assert np.array_equal(stacked[1][0], serial[1][0])


def _flows_in_child(im1, im2, expected_u) -> None:
    flows = coarse2fine_flows(im1, [im2, im2], max_workers=2, **FAST)
    os._exit(0 if np.array_equal(flows[1][0], expected_u) else 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_thread_pool_works_in_a_forked_child():
    # A DataLoader worker is a fork of a process that may have used the pool already.
    im1, im2 = textured_pair(16, 16)
    expected = coarse2fine_flows(im1, [im2, im2], max_workers=2, **FAST)  # the pool exists
    child = multiprocessing.get_context("fork").Process(
        target=_flows_in_child, args=(im1, im2, expected[1][0]))
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0


def test_the_gil_is_released_while_computing():
    # A flow of a few hundred ms in a thread; meanwhile this thread keeps running Python.
    # Holding the GIL in C++ would freeze it for the whole computation: one gap as long as
    # the flow. Released, the gaps stay at the polling period (plus the OS's scheduling).
    im1, im2 = textured_pair(240, 320)
    params = {**pyflow.ISEEBETTER_PARAMS, "nOuterFPIterations": 12}
    span = {}

    def work():
        span["start"] = time.perf_counter()
        coarse2fine_flow(im1, im2, **params)
        span["end"] = time.perf_counter()

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.002)
    worker.join()
    duration = span["end"] - span["start"]
    inside = [span["start"]] + [t for t in ticks if span["start"] < t < span["end"]] + [span["end"]]
    longest_gap = max(np.diff(inside))
    assert duration > 0.1, "the flow is too short to tell"
    assert longest_gap < 0.5 * duration, (longest_gap, duration)
    assert len(inside) > 10


# --- bad input ------------------------------------------------------------------------------

GOOD = np.full((8, 8, 3), 0.5)


@pytest.mark.parametrize("im1, im2, kwargs, error, words", [
    (GOOD[..., 0], GOOD[..., 0], {}, ValueError, ["im1", "(H, W, C)"]),
    (GOOD[None], GOOD[None], {}, ValueError, ["im1", "(H, W, C)"]),
    (GOOD.astype(np.float32), GOOD, {}, TypeError, ["im1", "float64", "float32"]),
    (GOOD, (GOOD * 255).astype(np.uint8), {}, TypeError, ["im2", "float64", "uint8"]),
    (GOOD.tolist(), GOOD, {}, TypeError, ["im1", "numpy array"]),
    (GOOD, GOOD, {"colType": 1}, ValueError, ["im1", "3 channels", "colType=1"]),
    (GOOD[..., :1], GOOD[..., :1], {}, ValueError, ["im1", "1 channels", "colType=0"]),
    (np.full((8, 8, 4), 0.5), np.full((8, 8, 4), 0.5), {}, ValueError, ["4 channels"]),
    (GOOD, np.full((8, 9, 3), 0.5), {}, ValueError, ["same shape", "(8, 9, 3)"]),
    (np.full((1, 8, 3), 0.5), np.full((1, 8, 3), 0.5), {}, ValueError, ["1x8", "2x2"]),
    (np.full((8, 1, 3), 0.5), np.full((8, 1, 3), 0.5), {}, ValueError, ["8x1", "2x2"]),
    (np.zeros((0, 0, 3)), np.zeros((0, 0, 3)), {}, ValueError, ["0x0", "2x2"]),
    (np.where(np.eye(8)[..., None] > 0, np.nan, GOOD), GOOD, {}, ValueError, ["im1", "NaN"]),
    (GOOD, np.where(np.eye(8)[..., None] > 0, np.inf, GOOD), {}, ValueError, ["im2", "inf"]),
    (GOOD, GOOD, {"alpha": 0.0}, ValueError, ["alpha", "> 0"]),
    (GOOD, GOOD, {"alpha": float("nan")}, ValueError, ["alpha", "finite"]),
    (GOOD, GOOD, {"alpha": "1"}, TypeError, ["alpha", "str"]),
    (GOOD, GOOD, {"ratio": float("inf")}, ValueError, ["ratio", "finite"]),
    (GOOD, GOOD, {"minWidth": 0}, ValueError, ["minWidth"]),
    (GOOD, GOOD, {"minWidth": 20.0}, TypeError, ["minWidth", "integer"]),
    (GOOD, GOOD, {"nSORIterations": -1}, ValueError, ["nSORIterations"]),
    (GOOD, GOOD, {"nOuterFPIterations": 10**9}, ValueError, ["nOuterFPIterations"]),
    (GOOD, GOOD, {"colType": 2}, ValueError, ["colType", "0 (RGB", "1 (grey"]),
])
def test_bad_input_raises_a_clear_error(im1, im2, kwargs, error, words, capfd):
    with pytest.raises(error) as exc:
        coarse2fine_flow(im1, im2, **kwargs)
    for word in words:
        assert word in str(exc.value), (word, str(exc.value))
    assert capfd.readouterr() == ("", "")


def test_bad_input_to_the_thread_pool_is_caught_before_any_flow():
    im1, im2 = textured_pair(16, 16)
    with pytest.raises(ValueError, match=r"others\[2\]"):
        coarse2fine_flows(im1, [im2, im2, im2[:8]])
    with pytest.raises(TypeError, match="nSORIteration"):
        coarse2fine_flows(im1, [im2], nSORIteration=3)
    with pytest.raises(ValueError, match="max_workers"):
        coarse2fine_flows(im1, [im2, im2], max_workers=0)


def test_a_missing_build_is_explained(tmp_path):
    # A copy of the Python sources without the extension, first on the path.
    pkg = tmp_path / "pyflow"
    pkg.mkdir()
    for name in ("__init__.py", "flow.py"):
        (pkg / name).write_text((ROOT / "pyflow" / name).read_text())
    # numpy is imported first; then site-packages (and any installed build) leave the path.
    code = ("import sys, numpy\n"
            "sys.path[:] = [sys.argv[1]] + [p for p in sys.path if 'site-packages' not in p]\n"
            "import pyflow\n"
            "assert pyflow.ISEEBETTER_PARAMS['alpha'] == 0.012\n"
            "from pyflow import coarse2fine_flow")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "pip install ./pyflow" in done.stderr


# --- properties -----------------------------------------------------------------------------

@st.composite
def flow_inputs(draw):
    h = draw(st.integers(2, 20))
    w = draw(st.integers(2, 20))
    grey = draw(st.booleans())
    c = 1 if grey else 3
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "constant", "binary"]))
    if kind == "noise":
        im1, im2 = rng.random((h, w, c)), rng.random((h, w, c))
    elif kind == "constant":
        im1 = np.full((h, w, c), draw(st.floats(0, 1)))
        im2 = im1.copy()
    else:
        im1 = (rng.random((h, w, c)) > 0.5).astype(float)
        im2 = (rng.random((h, w, c)) > 0.5).astype(float)
    params = dict(alpha=draw(st.sampled_from([1e-3, 0.012, 0.5, 1.0, 10.0])),
                  ratio=draw(st.sampled_from([0.3, 0.5, 0.75, 0.95])),
                  minWidth=draw(st.integers(1, 40)),
                  nOuterFPIterations=draw(st.integers(0, 3)),
                  nInnerFPIterations=draw(st.integers(0, 2)),
                  nSORIterations=draw(st.integers(0, 8)), colType=int(grey))
    return im1, im2, params


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow_inputs())
def test_never_crashes_always_finite_and_deterministic(inputs):
    im1, im2, params = inputs
    u, v, im2w = coarse2fine_flow(im1, im2, **params)
    assert u.shape == v.shape == im1.shape[:2] and im2w.shape == im1.shape
    assert np.isfinite(u).all() and np.isfinite(v).all()
    assert ((im2w >= 0) & (im2w <= 1)).all()
    again = coarse2fine_flow(im1.copy(), im2.copy(), **params)
    for first, second in zip((u, v, im2w), again, strict=True):
        assert np.array_equal(first, second)


# --- colour coding and the demo -------------------------------------------------------------

def test_flow_colours_follow_the_middlebury_wheel():
    u = np.array([[0.0, 1.0, 0.0, -1.0, 0.0, 0.5]])
    v = np.array([[0.0, 0.0, 1.0, 0.0, -1.0, 0.0]])
    rgb = flow_to_color(u, v)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 6, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # no motion: white
    assert rgb[0, 1, 0] == 255 and rgb[0, 1, 2] < 50  # right: red end of the wheel
    assert rgb[0, 3, 0] < 50 and rgb[0, 3, 2] > 200  # left: cyan
    assert rgb[0, 4, 2] == 255 and rgb[0, 4, 1] < 200  # up: blue-magenta side
    assert (rgb[0, 5] > rgb[0, 1]).all() or rgb[0, 5, 0] == 255  # half speed: paler red


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pyflow" / "demo.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_demo_writes_the_flow_and_the_warped_image(tmp_path):
    im1, im2 = textured_pair(40, 56, shift=(1, 2))
    for name, im in (("a.png", im1), ("b.png", im2)):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    done = run_demo(str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out_dir", str(out))
    assert done.returncode == 0, done.stderr
    with Image.open(out / "a_flow.png") as flow_png, Image.open(out / "a_warped.png") as warped:
        assert flow_png.size == warped.size == (56, 40) and flow_png.mode == "RGB"
    flow = np.load(out / "a_flow.npy")
    assert flow.shape == (40, 56, 2) and flow.dtype == np.float32
    assert abs(np.median(flow[8:-8, 8:-8, 0]) - 2) < 0.1  # content moved 2 px right
    assert "a_flow.png" in done.stdout


def test_demo_script_fails_cleanly_on_a_missing_image(tmp_path):
    done = run_demo(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: image not found: {tmp_path / 'a.png'}"]


@pytest.mark.parametrize("problem", ["corrupt", "size", "flag"])
def test_demo_reports_bad_input_in_one_line(tmp_path, problem, capsys):
    from pyflow import demo  # in-process: the subprocess path is tested above

    im1, im2 = textured_pair(24, 24)
    Image.fromarray(np.round(im1 * 255).astype(np.uint8)).save(tmp_path / "a.png")
    second = tmp_path / "b.png"
    extra = []
    if problem == "corrupt":
        second.write_bytes(b"not a png")
    elif problem == "size":
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(second)
    else:
        Image.fromarray(np.round(im2 * 255).astype(np.uint8)).save(second)
        extra = ["--alpha", "-1"]
    with pytest.raises(SystemExit) as exc:
        cli.run_cli(demo.main, [str(tmp_path / "a.png"), str(second), "--out_dir",
                                str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert {"corrupt": "b.png", "size": "b.png", "flag": "--alpha"}[problem] in lines[0]
    assert not (tmp_path / "out").exists()
