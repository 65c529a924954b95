"""segments.py: the plan, the manifest, resume after an interruption or a write error, clear
refusals, the automatic size and the join, with a stand-in for the model (pixel repetition)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

import checkpoint
import segments
import video
from ranks import Ranks
from segments import Segment, SegmentedRun, SegmentError
from tests.test_video import audio_packets, stream_summary, write_clip

SETTINGS = {"weights sha256": "ab12", "--crf": 0, "--self_ensemble": False}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("segments") / "clip.mp4", frames=23)


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


class Doubler:
    """Stands in for the model: each frame twice as large (pixels repeated), written where the
    run says; counts the segments it was given, and can fail on one of them."""

    def __init__(self, reader: video.VideoReader, fail_at: int | None = None,
                 failure: BaseException | None = None, seconds_per_frame: float = 0.0):
        self.reader, self.fail_at, self.failure = reader, fail_at, failure
        self.seconds_per_frame = seconds_per_frame
        self.calls: list[int] = []

    def __call__(self, work: segments.Work) -> list[dict]:
        segment = work.segment
        self.calls.append(segment.index)
        if segment.index == self.fail_at:
            raise self.failure
        info = self.reader.info
        with video.VideoWriter(work.file, 2 * info.width, 2 * info.height, info.fps,
                               info.time_base, crf=0) as writer:
            for frame, tick in zip(self.reader.span(work.timestamps, segment.first, segment.end),
                                   work.ticks, strict=True):
                time.sleep(self.seconds_per_frame)
                writer.write(np.repeat(np.repeat(frame.image, 2, 0), 2, 1), tick)
                work.progress(1, "")
        return [{"clip": "c", "frame": str(i)} for i in range(segment.first, segment.end)]


def make_run(clip: Path, output: Path, settings: dict = SETTINGS, **kwargs) -> tuple[
        SegmentedRun, Doubler]:
    reader = video.VideoReader(clip)
    encode = Doubler(reader, **{k: kwargs.pop(k) for k in ("fail_at", "failure",
                                                           "seconds_per_frame") if k in kwargs})
    run = SegmentedRun(reader.info, output, settings, Ranks(), reader.timestamps,
                       **kwargs)
    return run, encode


def interrupted(clip: Path, output: Path, at: int = 2, **kwargs) -> Path:
    """Run in segments of 5 frames, interrupted (Ctrl-C) when segment ``at`` begins; returns
    the work folder, holding the segments before it."""
    run, encode = make_run(clip, output, segment_frames=5, fail_at=at,
                           failure=KeyboardInterrupt(), **kwargs)
    with pytest.raises(KeyboardInterrupt):
        run.run(encode)
    return segments.work_folder(output)


def contents(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's name, inode and modification time: what a run must leave alone."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_plan_covers_every_frame_once():
    assert segments.plan(23, 5) == [Segment(0, 0, 5), Segment(1, 5, 10), Segment(2, 10, 15),
                                    Segment(3, 15, 20), Segment(4, 20, 23)]
    assert segments.plan(23, 10, first_segment=2) == [Segment(0, 0, 2), Segment(1, 2, 12),
                                                      Segment(2, 12, 22), Segment(3, 22, 23)]
    assert segments.plan(3, 100) == [Segment(0, 0, 3)]
    assert segments.plan(2, 5, first_segment=2) == [Segment(0, 0, 2)]
    with pytest.raises(ValueError):
        segments.plan(10, 0)


def test_automatic_size_is_about_a_minute_in_whole_batches_and_feeds_every_process():
    assert segments.automatic_size(0.5, 10_000, 1, 1) == 120  # 60 s at 0.5 s per frame
    assert segments.automatic_size(0.5, 10_000, 1, 4) == 120
    assert segments.automatic_size(0.7, 10_000, 1, 4) == 88  # 86 frames, rounded up to 4s
    assert segments.automatic_size(100.0, 10_000, 1, 1) == 1  # a slow frame: one per segment
    assert segments.automatic_size(0.01, 100, 2, 1) == 50  # each of 2 processes gets work
    assert segments.automatic_size(0.01, 100, 1, 1) == 100


def test_output_ticks_start_at_zero_when_trimmed_and_always_increase():
    assert segments.output_ticks([30, 31, 32], trim_start=True) == [0, 1, 2]
    assert segments.output_ticks([30, 31, 32], trim_start=False) == [30, 31, 32]
    assert segments.output_ticks([0, 5, 5, 6], trim_start=False) == [0, 5, 6, 7]


def test_fingerprint_sees_a_change_but_not_a_copy(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(5 << 20))  # sampled, not read whole
    copy = tmp_path / "copy.bin"
    copy.write_bytes(big.read_bytes())
    first, again = segments.fingerprint(big), segments.fingerprint(copy)
    assert (first["bytes"], first["sampled_sha256"]) == (again["bytes"], again["sampled_sha256"])
    with open(copy, "r+b") as f:  # a change in the first block
        f.write(b"changed")
    assert segments.fingerprint(copy)["sampled_sha256"] != first["sampled_sha256"]
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    assert segments.fingerprint(small)["bytes"] == 1000
    assert segments.fingerprint(small)["sampled_sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
    big_digest = hashlib.sha256(big.read_bytes()).hexdigest()  # the weights: read whole
    assert checkpoint.sha256(big) == big_digest and checkpoint.sha256(copy) != big_digest


def test_segments_joined_equal_one_segment_with_timestamps_and_audio(clip, tmp_path):
    one, encode_one = make_run(clip, tmp_path / "one.mp4", segment_frames=100)
    outcome_one = one.run(encode_one)
    many, encode_many = make_run(clip, tmp_path / "many.mp4", segment_frames=5)
    outcome = many.run(encode_many)
    assert encode_one.calls == [0] and encode_many.calls == [0, 1, 2, 3, 4]
    assert (outcome.segments, outcome.resumed, outcome.joined.frames) == (5, 0, 23)
    assert [r["frame"] for r in outcome.scores] == [str(i) for i in range(23)]
    frames_one, frames_many = decoded(outcome_one.joined.path), decoded(outcome.joined.path)
    assert len(frames_many) == 23
    assert all((a == b).all() for a, b in zip(frames_one, frames_many, strict=True))
    summary_one, summary = stream_summary(tmp_path / "one.mp4"), stream_summary(
        tmp_path / "many.mp4")
    assert summary["times"] == summary_one["times"] == pytest.approx(
        [i / 10 for i in range(23)])
    assert summary["fps"] == 10
    assert summary["audio_seconds"] == summary_one["audio_seconds"]
    assert audio_packets(tmp_path / "many.mp4") == audio_packets(clip)
    assert not segments.work_folder(tmp_path / "many.mp4").exists()  # removed once joined


def test_an_interrupted_run_resumes_with_only_the_unfinished_segments(clip, tmp_path, capsys):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    assert "interrupted: 2 finished segments are kept in" in capsys.readouterr().err
    manifest = json.loads((folder / segments.MANIFEST).read_text())
    assert manifest["done"] == [0, 1] and manifest["settings"] == SETTINGS
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("0000[01].*")}
    assert len(kept) == 4 and not output.exists()

    run, encode = make_run(clip, output, segment_frames=0, keep=True)  # 0: the folder's size
    outcome = run.run(encode)
    assert encode.calls == [2, 3, 4]
    assert (outcome.resumed, outcome.resumed_frames) == (2, 10)
    assert "resuming from" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("0000[01].*")} == kept
    reference, encode_ref = make_run(clip, tmp_path / "ref.mp4", segment_frames=5)
    reference.run(encode_ref)
    assert all((a == b).all() for a, b in zip(decoded(output), decoded(tmp_path / "ref.mp4"),
                                              strict=True))


def test_a_write_error_keeps_the_finished_segments(clip, tmp_path, monkeypatch):
    """A full disk shows when the segment is flushed: one clear error, earlier ones kept."""
    output = tmp_path / "out.mp4"
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if "00002.mp4" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    run, encode = make_run(clip, output, segment_frames=5)
    with pytest.raises(video.VideoError, match=r"cannot write .*00002.mp4: No space left"):
        run.run(encode)
    folder = segments.work_folder(output)
    assert sorted(p.name for p in folder.iterdir()) == [
        "00000.json", "00000.mp4", "00001.json", "00001.mp4", "lock", "manifest.json",
        "timestamps.json"]
    monkeypatch.setattr(os, "fsync", real_fsync)
    run, encode = make_run(clip, output, segment_frames=5)
    assert run.run(encode).joined.frames == 23 and encode.calls == [2, 3, 4]


def test_other_settings_or_a_changed_input_are_refused_until_restart(clip, tmp_path):
    source = tmp_path / "in.mp4"
    source.write_bytes(clip.read_bytes())
    output = tmp_path / "out.mp4"
    folder = interrupted(source, output, at=3, model="weights/a.pth")
    before = sorted(p.name for p in folder.iterdir())

    for settings, size, words in (
            ({**SETTINGS, "--crf": 18}, 5, "started with --crf 0, this command has --crf 18: "
                                           "rerun with --crf 0 to resume, or add --restart"),
            ({**SETTINGS, "--self_ensemble": True}, 5, "--self_ensemble off, this command has "
                                                       "--self_ensemble on"),
            ({**SETTINGS, "weights sha256": "cd34"}, 5, "started with other weights (-m "
                                                        "weights/a.pth, sha256 ab12) than this "
                                                        "command's -m weights/b.pth (sha256 "
                                                        "cd34): rerun with those weights"),
            (SETTINGS, 7, "--segment_frames 5, this command has --segment_frames 7")):
        run, encode = make_run(source, output, settings, segment_frames=size,
                               model="weights/b.pth")
        with pytest.raises(SegmentError, match=str(folder)) as err:
            run.run(encode)
        assert words in str(err.value) and "\n" not in str(err.value)
        assert encode.calls == []
    write_clip(source, frames=23, fps=25)  # the same name, other content
    run, encode = make_run(source, output, segment_frames=5)
    with pytest.raises(SegmentError, match=f"{source} changed since {folder} was started"):
        run.run(encode)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing was touched

    run, encode = make_run(source, output, {**SETTINGS, "--crf": 18}, segment_frames=5,
                           restart=True)
    assert run.run(encode).resumed == 0 and encode.calls == [0, 1, 2, 3, 4]


def test_the_automatic_size_comes_from_the_first_segment(clip, tmp_path, monkeypatch, capsys):
    """A clock that advances 0.05 s at each reading: every batch takes 0.05 s, and 0.25 s of
    work is 5 frames."""
    ticks = iter(range(1000))
    monkeypatch.setattr(segments, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 20))
    monkeypatch.setattr(segments, "SEGMENT_SECONDS", 0.25)
    run, encode = make_run(clip, tmp_path / "out.mp4", keep=True)
    outcome = run.run(encode)
    # Each segment counted once: the measured one, then the others.
    assert (f"{outcome.folder}: 6 segments: the first of 2 frames, then 4 of 5 and the last of "
            "1 (0.05 s per frame)") in capsys.readouterr().err.splitlines()
    manifest = json.loads((outcome.folder / segments.MANIFEST).read_text())
    assert manifest["first_segment"] == 2  # two batches of 1: the second is timed
    assert manifest["segment_frames"] == 5
    assert outcome.joined.frames == 23
    assert encode.calls == list(range(len(segments.plan(23, manifest["segment_frames"], 2))))


def test_the_plan_in_words_counts_each_segment_once():
    assert segments.describe_plan(segments.plan(54, 4, 2)) == (
        "14 segments: the first of 2 frames, then 13 of 4")
    assert segments.describe_plan(segments.plan(12, 4, 2)) == (
        "4 segments: the first of 2 frames, then 2 of 4 and the last of 2")
    assert segments.describe_plan(segments.plan(2, 2, 2)) == "1 segment of 2 frames"
    assert segments.describe_plan(segments.plan(1, 1, 2)) == "1 segment of 1 frame"


class RankZeroOfTwo(Ranks):
    """Rank 0 of a job of two, without a process group: what rank 0 decides is everyone's."""

    def from_first(self, make):
        return make()


def test_rank_zero_s_bar_counts_what_the_other_rank_finished_last(clip, tmp_path, monkeypatch):
    """Rank 1 finishes its last segment and arrives at the barrier between two of rank 0's
    looks: rank 0's bar must count it (it stopped at rank 0's own 13 of 23 frames)."""
    import ranks

    output = tmp_path / "out.mp4"
    reader = video.VideoReader(clip)
    encode = Doubler(reader)
    run = SegmentedRun(reader.info, output, SETTINGS, RankZeroOfTwo(0, 2), reader.timestamps,
                       segment_frames=5)

    def rank_one_finishes_then_arrives(async_op: bool) -> SimpleNamespace:
        folder = segments.work_folder(output)
        manifest, timestamps = segments.Manifest.load(folder), reader.timestamps()
        other = SegmentedRun(reader.info, output, SETTINGS, Ranks(1, 2), reader.timestamps,
                             segment_frames=5)
        for segment in Ranks(1, 2).share(manifest.segments()):
            other._encode(segment, manifest, timestamps,
                          segments.output_ticks(timestamps, False), encode)
        return SimpleNamespace(is_completed=lambda: True, wait=lambda: None)

    monkeypatch.setattr(ranks.dist, "barrier", rank_one_finishes_then_arrives)
    outcome = run.run(encode)
    assert sorted(encode.calls) == [0, 1, 2, 3, 4] and outcome.joined.frames == 23
    assert run._bar.n == run._bar.total == 23


def test_a_folder_or_file_in_the_way_is_left_alone_even_with_restart(clip, tmp_path):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    (folder / "notes.txt").write_text("mine")  # not ours: the folder is not a work folder
    before = contents(folder)
    for restart in (False, True):
        run, encode = make_run(clip, output, segment_frames=5, restart=restart)
        with pytest.raises(SegmentError, match="is in the way .* holds notes.txt"):
            run.run(encode)
        assert contents(folder) == before and encode.calls == []
    blocker = segments.work_folder(tmp_path / "other.mp4")
    blocker.write_text("a file")
    run, encode = make_run(clip, tmp_path / "other.mp4", segment_frames=5, restart=True)
    with pytest.raises(SegmentError, match=f"{blocker} is in the way .*: it is a file"):
        run.run(encode)
    assert blocker.read_text() == "a file"


def test_restart_starts_over_and_leaves_no_folder(clip, tmp_path):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    assert (folder / segments.LOCK).is_file()  # left by the interrupted run, unlocked
    run, encode = make_run(clip, output, segment_frames=5, restart=True)
    assert run.run(encode).resumed == 0 and encode.calls == [0, 1, 2, 3, 4]
    assert not folder.exists()


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the work folder's lock, as a run does (until killed): the file
    truncated before its pid is written, or a longer pid left there by an earlier run would
    show through."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({str(folder / segments.LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\n"
         "os.write(fd, b'%d\\n' % os.getpid())\n"
         "print('locked', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_run_on_the_same_output_is_refused(clip, tmp_path):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    before = contents(folder)
    holder = hold_lock(folder)
    try:
        for restart in (False, True):  # --restart would delete the other run's segments
            run, encode = make_run(clip, output, segment_frames=5, restart=restart)
            with pytest.raises(SegmentError, match=f"^{folder} is in use by another run "
                                                   f"\\(pid {holder.pid}\\)"):
                run.run(encode)
            assert encode.calls == []
        assert {n: v for n, v in contents(folder).items() if n != segments.LOCK} == {
            n: v for n, v in before.items() if n != segments.LOCK}
    finally:
        holder.kill()
        holder.wait()
    run, encode = make_run(clip, output, segment_frames=5)
    assert run.run(encode).joined.frames == 23 and encode.calls == [2, 3, 4]


def test_what_a_killed_join_left_beside_the_output_is_removed(clip, tmp_path):
    output = tmp_path / "out.mp4"
    interrupted(clip, output)
    stale = tmp_path / ".out.mp4.12345.0123abcd.tmp"  # as atomic.PendingFile names them
    stale.write_bytes(b"half a video")
    others = [tmp_path / ".other.mp4.12345.0123abcd.tmp", tmp_path / ".out.mp4.notes",
              tmp_path / "out.mp4.12345.0123abcd.tmp"]
    for other in others:
        other.write_text("not ours")
    run, encode = make_run(clip, output, segment_frames=5)
    assert run.run(encode).joined.frames == 23
    assert not stale.exists() and all(other.exists() for other in others)


@pytest.mark.parametrize("manifest", ["[]", '"text"', '{"format": 1}',
                                      '{"format": 1, "source": {}, "settings": {}, '
                                      '"frames": 23, "segment_frames": 5}',
                                      "{broken"])
def test_a_malformed_manifest_is_one_clear_error(clip, tmp_path, manifest):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    (folder / segments.MANIFEST).write_text(manifest)
    run, encode = make_run(clip, output, segment_frames=5)
    with pytest.raises(SegmentError, match=f"cannot resume from {folder}: unreadable "
                                           "manifest.json .*add --restart to start over"):
        run.run(encode)
    assert encode.calls == []


def test_malformed_records_and_timestamps(clip, tmp_path):
    output = tmp_path / "out.mp4"
    folder = interrupted(clip, output)
    (folder / "00000.json").write_text("[]")  # not a record: the segment is redone
    (folder / "00001.json").write_text('{"first": 5, "end": 10}')
    run, encode = make_run(clip, output, segment_frames=5, keep=True)
    assert run.run(encode).joined.frames == 23 and encode.calls == [0, 1, 2, 3, 4]
    (folder / segments.TIMESTAMPS).write_text('{"0": 0}')
    run, encode = make_run(clip, output, segment_frames=5)
    with pytest.raises(SegmentError, match="timestamps.json does not match manifest.json; "
                                           "add --restart"):
        run.run(encode)


def test_a_resume_deals_what_is_left_to_any_number_of_processes():
    """One process did segments 0 and 1; whatever number of processes resumes, each of the
    others is done once, dealt round robin."""
    plan = segments.plan(23, 5)

    def done_before(segment: Segment) -> bool:
        return segment.index in {0, 1}

    assert [[s.index for s in Ranks(r, 2).dealt(plan, done_before)] for r in range(2)] == [
        [2, 4], [3]]
    for world in (1, 2, 3, 4):
        dealt = [s.index for r in range(world) for s in Ranks(r, world).dealt(plan, done_before)]
        assert sorted(dealt) == [2, 3, 4]
