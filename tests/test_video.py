"""video.py: streaming decode with timestamps, H.264 encode, audio copied or re-encoded."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import video
from video import VideoError, VideoReader, VideoWriter, check_writable


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A smooth frame that changes with i (a moving gradient), easy on H.264."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 4 + i * 12) % 256, (y * 6 + i * 5) % 256,
                      np.full_like(x, 40 + 10 * i)], -1)
    return image.astype(np.uint8)


def write_clip(path: Path, frames: int = 8, width: int = 48, height: int = 32, fps: int = 10,
               audio: str | None = "aac", rate: int = 16000) -> Path:
    """A short test video made with PyAV: H.264 frames and (optionally) a 440 Hz tone."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    sound = container.add_stream(audio, rate=rate) if audio else None
    if sound is not None:
        sound.layout = "mono"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
        frame.pts = i
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    if sound is not None:
        fmt = {"aac": "fltp", "pcm_s16le": "s16", "pcm_mulaw": "s16"}[audio]
        total = rate * frames // fps
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)
        samples = tone.astype(np.float32) if fmt == "fltp" else (tone * 32767).astype(np.int16)
        chunk = sound.codec_context.frame_size or 1024
        for start in range(0, total, chunk):
            piece = av.AudioFrame.from_ndarray(samples[None, start:start + chunk], format=fmt,
                                               layout="mono")
            piece.sample_rate, piece.pts = rate, start
            container.mux(sound.encode(piece))
        container.mux(sound.encode(None))
    container.close()
    return path


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


def stream_summary(path: Path) -> dict:
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(v)]
        summary = {"size": (v.codec_context.width, v.codec_context.height),
                   "fps": v.average_rate, "times": times, "codec": v.codec_context.name}
    with av.open(str(path)) as container:
        if container.streams.audio:
            a = container.streams.audio[0]
            summary["audio"] = a.codec_context.name
            summary["audio_seconds"] = sum(f.samples for f in container.decode(a)) / a.rate
    return summary


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_reader_streams_rgb_frames_with_timestamps(clip):
    with VideoReader(clip) as reader:
        info = reader.info
        assert (info.width, info.height, info.fps, info.frames) == (48, 32, 10, 8)
        assert info.audio_codec == "aac"
        assert reader.expected_frames() == 8
        frames = list(reader)
    assert [f.index for f in frames] == list(range(8))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(8)])
    for i, frame in enumerate(frames):
        assert frame.image.shape == (32, 48, 3) and frame.image.dtype == np.uint8
        # H.264 at default quality: close to what was encoded, not equal.
        error = np.abs(frame.image.astype(int) - frame_image(i, 48, 32)).mean()
        assert error < 6


def test_reader_start_time_and_max_frames(clip):
    with VideoReader(clip, start_time=0.3, max_frames=3) as reader:
        assert reader.expected_frames() == 3
        frames = list(reader)
    assert [round(f.time, 3) for f in frames] == [0.3, 0.4, 0.5]
    with VideoReader(clip, start_time=5.0) as reader, pytest.raises(VideoError, match="no frames"):
        list(reader)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_writer_keeps_rate_timestamps_and_copies_audio(clip, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    with VideoReader(clip) as reader:
        writer = VideoWriter(out, 96, 64, reader.info.fps, reader.info.time_base,
                             audio_source=clip)
        for frame in reader:
            writer.write(np.repeat(np.repeat(frame.image, 2, 0), 2, 1), frame.pts)
        writer.close()
    assert writer.audio_copied and writer.audio_codec == "aac"
    summary = stream_summary(out)
    assert summary["size"] == (96, 64) and summary["codec"] == "h264"
    assert summary["fps"] == 10
    times = np.array(summary["times"])
    assert times - times[0] == pytest.approx([i / 10 for i in range(8)])
    # Matroska cannot store the AAC priming packet's negative timestamp, so the muxer delays
    # every stream by it (64 ms); MP4 keeps it in an edit list.
    assert times[0] == (0.0 if suffix == ".mp4" else pytest.approx(0.064))
    assert audio_packets(out) == audio_packets(clip)  # copied bit for bit
    assert not list(tmp_path.glob(".*partial*"))


def test_writer_trims_audio_to_the_frames_written(clip, tmp_path):
    out = tmp_path / "part.mp4"
    with VideoReader(clip, start_time=0.2, max_frames=4) as reader:
        writer = VideoWriter(out, 48, 32, reader.info.fps, reader.info.time_base,
                             audio_source=clip, trim_start=True)
        for frame in reader:
            writer.write(frame.image, frame.pts)
        writer.close()
    summary = stream_summary(out)
    assert summary["times"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # 0.4 s of video; whole AAC packets (1024 samples = 64 ms) of the span are kept.
    assert 0.4 - 0.065 <= summary["audio_seconds"] <= 0.4 + 0.065
    assert len(audio_packets(out)) < len(audio_packets(clip))


def test_writer_reencodes_audio_the_container_cannot_take(tmp_path):
    source = write_clip(tmp_path / "mulaw.mov", audio="pcm_mulaw")
    out = tmp_path / "out.mp4"
    with VideoReader(source) as reader:
        assert reader.info.audio_codec == "pcm_mulaw"
        writer = VideoWriter(out, 48, 32, reader.info.fps, reader.info.time_base,
                             audio_source=source)
        for frame in reader:
            writer.write(frame.image, frame.pts)
        writer.close()
    assert not writer.audio_copied
    summary = stream_summary(out)
    assert summary["audio"] == "aac"
    assert summary["audio_seconds"] == pytest.approx(0.8, abs=0.07)


def test_unreadable_and_missing_videos_are_named(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoError, match="broken.mp4") as err:
        VideoReader(bad)
    # PyAV's "[Errno 1094995529] Invalid data ...: '<path>'" without the number and the path.
    assert str(err.value) == f"cannot read video {bad}: invalid data found when processing input"
    with pytest.raises(VideoError, match="not found: .*missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    sound_only = tmp_path / "sound.m4a"
    with av.open(str(sound_only), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream"):
        VideoReader(sound_only)


def test_unwritable_outputs_are_named_and_leave_nothing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(VideoError, match="cannot write .*file.txt/out.mp4"):
        check_writable(blocker / "out.mp4")
    with pytest.raises(VideoError, match="H.264 into .webm"):
        VideoWriter(tmp_path / "out.webm", 48, 32, Fraction(10), Fraction(1, 10))
    assert not list(tmp_path.glob(".*"))
    with pytest.raises(VideoError, match="unknown video file type"):
        VideoWriter(tmp_path / "out.xyz", 48, 32, Fraction(10), Fraction(1, 10))
    with pytest.raises(VideoError, match="even frame size"):
        VideoWriter(tmp_path / "odd.mp4", 47, 32, Fraction(10), Fraction(1, 10))
    writer = VideoWriter(tmp_path / "aborted.mp4", 48, 32, Fraction(10), Fraction(1, 10))
    writer.write(frame_image(0, 48, 32), 0)
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_timestamps_and_spans_are_the_frames_of_one_pass(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", frames=23)  # H.264 with B-frames: reordered
    with VideoReader(clip) as reader:
        frames = list(reader)
        timestamps = reader.timestamps()
        assert timestamps == [f.pts for f in frames]
        for first, end in ((0, 4), (7, 13), (20, 23)):
            span = list(reader.span(timestamps, first, end))
            assert [f.index for f in span] == list(range(first, end))
            assert [f.pts for f in span] == timestamps[first:end]
            assert all((a.image == b.image).all() for a, b in zip(span, frames[first:end],
                                                                  strict=True))
        wrong = [*timestamps[:5], timestamps[5] + 1, *timestamps[6:]]
        with pytest.raises(VideoError, match="decodes at .* not .* as in one pass .*--restart"):
            list(reader.span(wrong, 5, 6))
    with VideoReader(clip, start_time=0.6, max_frames=10) as reader:
        trimmed = reader.timestamps()
        assert trimmed == timestamps[6:16]
        assert [f.index for f in reader.span(trimmed, 4, 6)] == [4, 5]


def test_spans_are_right_where_timestamps_repeat(tmp_path):
    """Frames 4 and 5 share a timestamp (a broken file; x264 and Matroska let it through): a
    span starting at frame 5 must not start with frame 4, which comes first at that time."""
    path = tmp_path / "repeated.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i, pts in enumerate([0, 1, 2, 3, 4, 4, 5, 6, 7, 8]):
            frame = av.VideoFrame.from_ndarray(frame_image(i, 48, 32), format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with VideoReader(path) as reader:
        frames = list(reader)
        timestamps = reader.timestamps()
        assert timestamps[4] == timestamps[5]
        for first, end in ((5, 8), (4, 6), (6, 10)):
            span = list(reader.span(timestamps, first, end))
            assert [f.index for f in span] == list(range(first, end))
            assert all((a.image == b.image).all() for a, b in zip(span, frames[first:end],
                                                                  strict=True))


def test_seeks_go_to_a_frame_no_earlier_frame_reaches():
    assert video._seek_point([0, 1, 2, 3], 2) == 2
    assert video._seek_point([0, 1, 2, 2, 3], 3) == 2  # frame 2 would come first at 2
    assert video._seek_point([0, 1, 2, 2, 3], 4) == 4
    assert video._seek_point([0, 5, 1, 2, 6], 3) == 1  # out of order: 5 is reached first
    assert video._seek_point([3, 3, 3], 2) == 0 and video._seek_point([4, 5], 0) == 0


def parts_of(clip: Path, folder: Path, bounds: list[int], crf: int = 0
             ) -> list[tuple[Path, int]]:
    """The clip's frames in parts, each starting at 0, as segments are written."""
    parts = []
    folder.mkdir(exist_ok=True)
    with VideoReader(clip) as reader:
        stamps = reader.timestamps()
        for first, end in zip(bounds, bounds[1:], strict=False):
            path = folder / f"part{first}.mp4"
            with VideoWriter(path, 48, 32, reader.info.fps, reader.info.time_base,
                             crf=crf) as writer:
                for frame in reader.span(stamps, first, end):
                    writer.write(frame.image, frame.pts - stamps[first])
            parts.append((path, stamps[first]))
    return parts


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_join_puts_parts_together_with_their_timestamps_and_the_audio(tmp_path, suffix):
    clip = write_clip(tmp_path / "clip.mp4", frames=23)
    # A 2-frame part has no B-frames, the others have: their own decode times would collide.
    parts = parts_of(clip, tmp_path / "parts", [0, 2, 9, 16, 23], crf=18)
    with av.open(str(parts[1][0])) as part:
        assert any(p.dts is not None and p.dts < 0 for p in part.demux(video=0))
    with VideoReader(clip) as reader:
        info = reader.info
    joined = video.join(parts, tmp_path / f"joined{suffix}", time_base=info.time_base,
                        fps=info.fps, audio_source=clip)
    assert (joined.frames, joined.audio_codec, joined.audio_copied) == (23, "aac", True)
    summary, source = stream_summary(joined.path), stream_summary(clip)
    shift = 0.064 if suffix == ".mkv" else 0.0  # as VideoWriter's (see above)
    assert summary["times"] == pytest.approx([t + shift for t in source["times"]])
    assert summary["fps"] == 10
    assert summary["audio_seconds"] == pytest.approx(source["audio_seconds"], abs=0.065)
    separately = []  # the join re-encodes nothing: the frames decode as in their parts
    for path, _ in parts:
        with av.open(str(path)) as part:
            separately += [f.to_ndarray(format="rgb24") for f in part.decode(video=0)]
    with av.open(str(joined.path)) as container:
        together = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert all((a == b).all() for a, b in zip(together, separately, strict=True))
    assert audio_packets(joined.path) == audio_packets(clip)
    assert not list(tmp_path.glob(".*.tmp"))


def test_join_trims_the_audio_of_a_span_and_refuses_mismatched_parts(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=23)
    parts = parts_of(clip, tmp_path / "parts", [5, 10, 15])
    with VideoReader(clip) as reader:
        info = reader.info
        start = reader.timestamps()[5]
    span = [(path, tick - start) for path, tick in parts]
    joined = video.join(span, tmp_path / "span.mp4", time_base=info.time_base, fps=info.fps,
                        audio_source=clip, audio_offset=float(start * info.time_base))
    summary = stream_summary(joined.path)
    assert summary["times"] == pytest.approx([i / 10 for i in range(10)])
    assert 1.0 - 0.065 <= summary["audio_seconds"] <= 1.0 + 0.065
    other = tmp_path / "other.mp4"
    with VideoWriter(other, 64, 32, info.fps, info.time_base, crf=0) as writer:
        writer.write(frame_image(0, 64, 32), 0)
    with pytest.raises(VideoError, match="cannot join .*other.mp4: it was encoded with other"):
        video.join([parts[0], (other, 100)], tmp_path / "bad.mp4", time_base=info.time_base,
                   fps=info.fps)
    assert not (tmp_path / "bad.mp4").exists()


def test_output_formats_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    video.check_output_format(tmp_path / "a.mp4", "pcm_mulaw")  # re-encoded to AAC: fine
    video.check_output_format(tmp_path / "a.MKV", "opus")
    with pytest.raises(VideoError, match="cannot write H.264 into .webm files .*a.webm"):
        video.check_output_format(tmp_path / "a.webm")
    for name in ("noext", "a.xyz"):
        with pytest.raises(VideoError, match=f"cannot write .*{name}: unknown video file type"):
            video.check_output_format(tmp_path / name)
    monkeypatch.setitem(video._MUXERS, ".264", "h264")  # raw H.264: no audio at all
    video.check_output_format(tmp_path / "a.264")
    with pytest.raises(VideoError, match="a.264: .264 files take neither opus nor AAC .*"
                                         "--no-audio"):
        video.check_output_format(tmp_path / "a.264", "opus")
    assert list(tmp_path.iterdir()) == []


def test_error_reasons_lose_the_errno_and_the_repeated_path():
    pyav = av.error.InvalidDataError(1094995529, "Invalid data found when processing input",
                                     "x.mp4")
    assert str(pyav) == ("[Errno 1094995529] Invalid data found when processing input: "
                         "'x.mp4'")
    assert video.reason(pyav) == "invalid data found when processing input"
    assert video.reason(FileNotFoundError(2, "No such file or directory", "x.mp4")) == (
        "no such file or directory")
    assert video.reason(ValueError("H264 needs an even frame size")) == (
        "H264 needs an even frame size")  # an acronym keeps its capitals
