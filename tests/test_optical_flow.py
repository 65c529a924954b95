"""optical_flow.py: the one seam for the flow, its de-duplication and its on-disk cache."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

import optical_flow
from tests.test_dataset import write_vimeo


def test_flows_repeated_neighbours_are_computed_once(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in "ab")
    calls = []
    real = optical_flow.compute_flows

    def counting(target, others, threads=None):
        calls.append(len(others))
        return real(target, others, threads)

    monkeypatch.setattr(optical_flow, "compute_flows", counting)
    flows = optical_flow.flows_to(a, [a, a, b, b])
    assert calls == [2]
    direct = real(a, [a, b])
    for got, want in zip(flows, [direct[0], direct[0], direct[1], direct[1]], strict=True):
        assert got.shape == (2, 20, 24) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_cache_key_changes_when_a_frame_changes(tmp_path):
    root = write_vimeo(tmp_path / "d")
    cache = optical_flow.FlowCache(str(tmp_path / "c"))
    target, neighbour = os.path.join(root, "c1/s1/im4.png"), os.path.join(root, "c1/s1/im3.png")
    params = {"alpha": 0.012}
    key = cache.key(target, neighbour, (16, 12), 4, False, params)
    assert key == cache.key(target, neighbour, (16, 12), 4, False, params)
    assert key != cache.key(target, neighbour, (16, 12), 2, False, params)
    assert key != cache.key(target, None, (16, 12), 4, False, params)
    assert key != cache.key(target, neighbour, (16, 12), 4, False, {"alpha": 1.0})
    os.utime(neighbour, ns=(1, 1))
    assert key != cache.key(target, neighbour, (16, 12), 4, False, params)
    flow = np.ones((2, 12, 16), np.float32)
    cache.store(key, flow)
    assert np.array_equal(cache.load(key, (12, 16)), flow)
    assert cache.load(key, (12, 15)) is None  # wrong shape: recomputed
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_swapping_the_flow_function_reaches_training_evaluation_and_video(tmp_path, monkeypatch):
    """optical_flow.compute_flows is the one seam: replacing it changes the flows of training
    samples (with and without the flow cache), of evaluation samples and of video frames."""
    import data
    import frames

    def constant_flow(target, neighbours, threads=None):
        return [np.full((2, target.height, target.width), 7.0, np.float32) for _ in neighbours]

    monkeypatch.setattr(optical_flow, "compute_flows", constant_flow)
    root = write_vimeo(tmp_path / "d")
    training = data.get_training_set(root, 3, 4, False, "sep_trainlist.txt", False, 8, True)
    cached = data.get_training_set(root, 3, 4, False, "sep_trainlist.txt", False, 8, True,
                                   flow_cache=str(tmp_path / "cache"))
    evaluation = data.get_test_set(root, 3, 4, "sep_trainlist.txt", False, True)
    rng = np.random.default_rng(0)
    decoded = [frames.make_lr_frame(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), 4, True)
               for _ in range(3)]
    video = frames.make_sample(decoded[1], [decoded[0], decoded[2]], 4)
    for sample in (training[0], cached[0], evaluation[0], video):
        assert len(sample.flow) == 2
        assert all(bool((flow == 7.0).all()) for flow in sample.flow)


def test_cache_key_names_the_flow_method(tmp_path, monkeypatch):
    frame = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(frame)
    cache = optical_flow.FlowCache(str(tmp_path / "c"))
    key = cache.key(str(frame), None, (8, 8), 4, False, {"alpha": 0.012})
    monkeypatch.setattr(optical_flow, "METHOD", "another-method")
    assert cache.key(str(frame), None, (8, 8), 4, False, {"alpha": 0.012}) != key
