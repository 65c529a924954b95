"""Segmented video upscaling: the plan, the work folder and its manifest, resume, the split
among torchrun processes, and the join.

A video's frames are cut into segments of consecutive frames. Each segment is upscaled on its
own, with the true neighbours across its boundaries (a frame sees the same neighbours as in one
pass), and encoded to its own file in a work folder beside the output, ``<output>.parts/``:

    manifest.json     what determines the pixels, the input's fingerprint, the plan, the
                      segments done (rewritten by rank 0 as they finish)
    timestamps.json   the frames' timestamps (a long video is decoded for them only once)
    00000.mp4         a finished segment (written atomically: complete or absent) ...
    00000.json        ... and its record (frames, bytes, scores), written after it: a segment
                      is done when its record is there and its file has the recorded size
    lock              locked by the run using the folder (rank 0), holding its process id

Rerunning the same command after a crash, kill -9 or Ctrl-C keeps the finished segments and
does the rest; a command that would make other pixels is refused with the setting that
differs, and a second run on the same output while the first goes on is refused. Under
torchrun the segments still to do are dealt round robin to the processes. When all are done,
rank 0 joins them into the output without re-encoding (``video.join``) and removes the folder.
Only files named as above (and the temporary files of their atomic writes) are ever deleted:
a folder holding anything else is not taken for a work folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

import atomic
import video
from cli import CLIError
from ranks import Ranks

PARTS_SUFFIX = ".parts"
MANIFEST = "manifest.json"
TIMESTAMPS = "timestamps.json"
LOCK = "lock"
WEIGHTS = "weights sha256"  # the settings' key of the weights' hash
FORMAT = 1  # version of the work folder's layout
# The automatic segment is about this much work: a crash loses at most that, while what a
# segment adds (a seek, the few neighbour frames decoded twice, a keyframe) stays far below 1%.
SEGMENT_SECONDS = 60.0
_RECORD = re.compile(r"(\d{5,})\.json")
# The temporary names atomic.PendingFile writes under (.<name>.<pid>.<8 hex>.tmp), and the
# probe files of video.check_writable (.<name>.<pid>.probe): what a killed run leaves.
_LEFTOVER = r"\.{name}\.\d+\.(?:[0-9a-f]{{8}}\.tmp|probe)"
_OURS_NAMED = (r"\d{5,}\.(?:mp4|json)|" + re.escape(MANIFEST) + "|" + re.escape(TIMESTAMPS)
               + "|" + re.escape(LOCK))
_OURS_LEFTOVER = re.compile(_LEFTOVER.format(name=f"(?:{_OURS_NAMED})"))
_OURS = re.compile(f"{_OURS_NAMED}|{_OURS_LEFTOVER.pattern}")


class SegmentError(CLIError):
    """A work folder that cannot be used as it is (names the folder and what to do)."""


def work_folder(output: str | os.PathLike) -> Path:
    """The work folder of an output video: ``<output>.parts`` beside it."""
    output = Path(output)
    return output.with_name(output.name + PARTS_SUFFIX)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Segment:
    """Frames ``first`` to ``end - 1`` (positions in the span being upscaled).

    Args:
        index: the segment's number, from 0.
        first: its first frame.
        end: one past its last frame.
    """

    index: int
    first: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.first

    def file(self, folder: Path) -> Path:
        return folder / f"{self.index:05d}.mp4"

    def record(self, folder: Path) -> Path:
        return folder / f"{self.index:05d}.json"


def plan(total: int, segment_frames: int, first_segment: int | None = None) -> list[Segment]:
    """Segments covering ``total`` frames: the first of ``first_segment`` frames (the one
    measured to choose the automatic size), then ``segment_frames`` each."""
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    starts = [0]
    position = min(first_segment or segment_frames, total)
    while position < total:
        starts.append(position)
        position += segment_frames
    ends = [*starts[1:], total]
    return [Segment(i, first, end) for i, (first, end) in enumerate(zip(starts, ends,
                                                                         strict=True))]


def describe_plan(segments: Sequence[Segment]) -> str:
    """The segments in words, the first (measured) one apart and each counted once: "14
    segments: the first of 2 frames, then 13 of 4" (the original wording, "13 segments of 4
    frames after the first 2", read as 13 more)."""
    sizes = [s.frames for s in segments]
    if len(sizes) == 1:
        return f"1 segment of {sizes[0]} frame{'s' if sizes[0] > 1 else ''}"
    rest, last = sizes[1:], ""
    if rest[-1] != rest[0]:  # the frames left over for the last one
        last = f" and the last of {rest.pop()}"
    return (f"{len(sizes)} segments: the first of {sizes[0]} frames, then {len(rest)} of "
            f"{rest[0]}{last}")


def automatic_size(seconds_per_frame: float, remaining: int, processes: int, batch: int) -> int:
    """Frames per segment for about ``SEGMENT_SECONDS`` of work, but no more than an equal
    share of the ``remaining`` frames per process (so that every process gets work), rounded
    up to whole batches (so that frames are batched as in one pass)."""
    size = max(1, round(SEGMENT_SECONDS / max(seconds_per_frame, 1e-6)))
    size = min(size, max(1, math.ceil(remaining / processes)))
    return math.ceil(size / batch) * batch


def output_ticks(timestamps: Sequence[int], trim_start: bool) -> list[int]:
    """The timestamps the output frames get, as ``video.VideoWriter`` gives them: shifted to
    start at 0 for a span cut from inside the video, and strictly increasing (a repeated
    timestamp would stop the muxer)."""
    shift = timestamps[0] if trim_start else 0
    ticks: list[int] = []
    for pts in timestamps:
        tick = pts - shift
        ticks.append(tick if not ticks or tick > ticks[-1] else ticks[-1] + 1)
    return ticks


# ---------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint(path: str | os.PathLike, samples: int = 64, block: int = 1 << 16) -> dict:
    """The identity of an input video: its size and the SHA-256 of ``samples`` blocks spread
    evenly over it (the whole file when smaller), so a long video is recognised in a moment,
    also after a copy (which changes the modification time) but not after a re-encode."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= samples * block:
            digest.update(f.read())
        else:
            for i in range(samples):
                f.seek((size - block) * i // (samples - 1))
                digest.update(f.read(block))
    return {"path": str(path.resolve()), "bytes": size, "sampled_sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------------
# The manifest


@dataclass
class Manifest:
    """The work folder's manifest.

    Args:
        folder: the work folder.
        source: the input's fingerprint (``fingerprint``).
        settings: everything that determines the pixels of the segment files.
        frames: frames in the span.
        segment_frames: frames per segment; None while the automatic size is being measured.
        first_segment: frames in segment 0 (the measured one), when it differs.
        tile: the LR tile side of every segment (0: whole frames), chosen once so that all
            processes and resumed runs cut the frames alike.
        done: the finished segments' numbers.
        model: the weights file the run was started with: shown when the weights differ, not
            compared (the hash in ``settings`` is; a copy elsewhere is the same weights).
    """

    folder: Path
    source: dict
    settings: dict
    frames: int
    segment_frames: int | None
    first_segment: int | None = None
    tile: int = 0
    done: list[int] = field(default_factory=list)
    model: str = ""

    @classmethod
    def load(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``; None when there is none."""
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or saved.pop("format", None) != FORMAT:
                raise ValueError("not a manifest of this version of iSeeBetterTest.py")
            _check_fields(saved)
            return cls(folder=folder, **saved)
        except (OSError, ValueError, TypeError) as err:
            raise SegmentError(f"cannot resume from {folder}: unreadable {MANIFEST} ({err}); "
                               "add --restart to start over") from None

    def save(self) -> None:
        saved = {"format": FORMAT, **asdict(self)}
        del saved["folder"]
        atomic.write_text(self.folder / MANIFEST, json.dumps(saved, indent=1) + "\n",
                          SegmentError)

    def segments(self) -> list[Segment]:
        return plan(self.frames, self.segment_frames, self.first_segment)

    def check(self, source: dict, settings: dict, segment_frames: int, model: str = "") -> None:
        """Refuse to resume with another input or settings (SegmentError naming the folder
        and the first difference; ``model``, this command's weights file, names it)."""
        if (source["bytes"], source["sampled_sha256"]) != (self.source["bytes"],
                                                           self.source["sampled_sha256"]):
            raise SegmentError(f"{source['path']} changed since {self.folder} was started "
                               f"({self.source['bytes']} bytes then, {source['bytes']} now, "
                               "or other content); add --restart to start over")
        if segment_frames and self.segment_frames:
            settings = {**settings, "--segment_frames": segment_frames}
        theirs = {**self.settings, "--segment_frames": self.segment_frames}
        for key, value in settings.items():
            if theirs.get(key) == value:
                continue
            if key == WEIGHTS:
                raise SegmentError(
                    f"{self.folder} was started with other weights (-m {self.model or '?'}, "
                    f"sha256 {_shown(theirs.get(key))[:12]}) than this command's -m "
                    f"{model or '?'} (sha256 {_shown(value)[:12]}): rerun with those weights "
                    "to resume, or add --restart to start over")
            then, now = _shown(theirs.get(key)), _shown(value)
            again = (f"rerun with {key} {then}" if key.startswith("--")
                     else f"rerun with the same {key}")
            raise SegmentError(f"{self.folder} was started with {key} {then}, this command "
                               f"has {key} {now}: {again} to resume, or add --restart to "
                               "start over")

    def finished(self) -> set[int]:
        """The segments whose record is there and whose file has the recorded size."""
        done = set()
        for segment in self.segments():
            record = read_record(segment, self.folder)
            file = segment.file(self.folder)
            if record is not None and file.is_file() and file.stat().st_size == record["bytes"]:
                done.add(segment.index)
        return done


# The manifest's fields and the types they must have (a hand-edited or foreign file must be a
# clear error, not an AttributeError halfway through the run).
_FIELDS = {"source": dict, "settings": dict, "frames": int, "segment_frames": (int, type(None)),
           "first_segment": (int, type(None)), "tile": int, "done": list, "model": str}
_REQUIRED = ("source", "settings", "frames", "segment_frames")


def _check_fields(saved: dict) -> None:
    """Raise ValueError naming the first field of a saved manifest that is missing, unknown
    or of the wrong type."""
    for name in _REQUIRED:
        if name not in saved:
            raise ValueError(f"no {name!r}")
    for name, value in saved.items():
        kind = _FIELDS.get(name)
        if kind is None or not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name!r} is {json.dumps(value)[:40]}")
    if not all(isinstance(i, int) for i in saved.get("done", [])) or not all(
            isinstance(saved["source"].get(k), t) for k, t in (("bytes", int),
                                                               ("sampled_sha256", str))):
        raise ValueError("'done' or 'source' is malformed")
    if saved["frames"] < 1 or (saved["segment_frames"] or 1) < 1:
        raise ValueError("'frames' or 'segment_frames' is below 1")


def _shown(value: object) -> str:
    """A setting as it would be written on the command line (switches take on/off)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def read_record(segment: Segment, folder: Path) -> dict | None:
    """A segment's record, or None when it has none, or one that is unreadable, malformed or
    of another segment: that segment is redone (only it: records are written atomically, so
    this takes a damaged disk or a hand edit)."""
    try:
        record = json.loads(segment.record(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("bytes"), int)
            and isinstance(record.get("scores"), list)):
        return None
    return record if (record.get("first"), record.get("end")) == (segment.first,
                                                                   segment.end) else None


def recorded(folder: Path) -> set[int]:
    """The numbers of the segments that have a record in ``folder`` (a quick look)."""
    try:
        return {int(m[1]) for name in os.listdir(folder) if (m := _RECORD.fullmatch(name))}
    except OSError:
        return set()


# ---------------------------------------------------------------------------------------------
# A run


@dataclass(frozen=True)
class Work:
    """One segment to upscale, as the encode function gets it.

    Args:
        segment: the segment.
        timestamps: the input timestamps of all the span's frames (for reading the segment's
            frames and their neighbours: ``video.VideoReader.span``).
        ticks: the output timestamps of the segment's frames, from 0 at its first.
        file: where to write it (atomically: ``video.VideoWriter`` does).
        tile: the LR tile side to use (0: whole frames), the same for every segment.
        progress: to call after each batch with its frame count and a note for the bar.
    """

    segment: Segment
    timestamps: Sequence[int]
    ticks: list[int]
    file: Path
    tile: int
    progress: Callable[[int, str], None]


# Upscales a segment into its file and returns its score rows (empty without scores).
Encode = Callable[[Work], list[dict]]


@dataclass(frozen=True)
class Outcome:
    """What a segmented run did (on rank 0).

    Args:
        joined: the output written.
        scores: the score rows of every frame, in order (empty without scores).
        segments: the number of segments.
        resumed: segments found done at the start ...
        resumed_frames: ... and their frames.
        folder: the work folder (removed unless kept).
    """

    joined: video.Joined
    scores: list[dict]
    segments: int
    resumed: int
    resumed_frames: int
    folder: Path


class SegmentedRun:
    """One input video upscaled in segments by every process of the job.

    Args:
        info: the input (``video.VideoReader.info``).
        output: the output video.
        settings: what determines the pixels, keyed as the user names them (``--crf``, ...):
            recorded, and compared on resume.
        ranks: the processes sharing the work.
        scan: returns the timestamps of the span's frames (``VideoReader.timestamps``).
        choose_tile: returns the LR tile side for the frames (``Upscaler.plan_tile``), asked
            once when the work folder is made.
        segment_frames: frames per segment; 0 chooses about ``SEGMENT_SECONDS`` of work
            from the measured time of the first segment.
        batch: frames per forward pass.
        restart: delete an earlier run's work folder instead of resuming it.
        keep: keep the work folder after joining.
        audio: copy the input's audio (when it has some).
        trim_start: the span starts inside the video: timestamps and audio start at 0.
        model: the weights file, recorded to name it when a resume finds other weights.
    """

    def __init__(self, info: video.VideoInfo, output: Path, settings: dict, ranks: Ranks,
                 scan: Callable[[], list[int]], choose_tile: Callable[[], int] = lambda: 0, *,
                 segment_frames: int = 0, batch: int = 1,
                 restart: bool = False, keep: bool = False, audio: bool = True,
                 trim_start: bool = False, model: str = ""):
        self.info, self.output, self.ranks = info, output, ranks
        self.scan, self.choose_tile = scan, choose_tile
        self.settings = json.loads(json.dumps(settings))  # as the manifest will hold them
        self.folder = work_folder(output)
        self.segment_frames, self.batch = segment_frames, batch
        self.restart, self.keep, self.audio, self.trim_start = restart, keep, audio, trim_start
        self.model = model
        self._bar: tqdm | None = None
        self._done: set[int] = set()  # segments known to be finished (rank 0: all ranks')
        self._lock: int | None = None  # rank 0: the locked file descriptor

    def run(self, encode: Encode) -> Outcome | None:
        """Upscale what is not done yet; rank 0 joins and returns the outcome (None on the
        other ranks)."""
        try:
            manifest, timestamps = self.ranks.from_first(self._prepare)
            ticks = output_ticks(timestamps, self.trim_start)
            resumed = self._upscale(manifest, timestamps, ticks, encode)
            if not self.ranks.first:
                return None
            return self._join(manifest, timestamps, ticks, resumed)
        finally:
            self._unlock()

    def _upscale(self, manifest: Manifest, timestamps: list[int], ticks: list[int],
                 encode: Encode) -> tuple[int, int]:
        """Every rank's share of the segments not done; returns the segments and frames that
        were done before."""
        self._done = set(manifest.done)
        resumed = (len(self._done), sum(manifest.segments()[i].frames for i in self._done)
                   if manifest.segment_frames else 0)
        with tqdm(total=manifest.frames, initial=resumed[1], unit="frame", desc="upscaling",
                  dynamic_ncols=True, mininterval=1.0, disable=not self.ranks.first) as bar:
            self._bar = bar
            try:
                if manifest.segment_frames is None:
                    manifest = self._measure(manifest, timestamps, ticks, encode)
                    self._done = set(manifest.done)
                for segment in self.ranks.dealt(manifest.segments(),
                                                lambda s: s.index in self._done):
                    self._encode(segment, manifest, timestamps, ticks, encode)
                    if self.ranks.first:
                        self._refresh(manifest)
                self.ranks.wait(poll=(lambda: self._refresh(manifest)) if self.ranks.first
                                else None)
            except KeyboardInterrupt:
                if self.ranks.first:
                    tqdm.write(f"interrupted: {len(recorded(self.folder))} finished segments "
                               f"are kept in {self.folder}; rerun the same command to resume",
                               file=sys.stderr)
                raise
        return resumed

    # -- rank 0: the work folder ------------------------------------------------------------

    def _prepare(self) -> tuple[Manifest, list[int]]:
        self._claim()
        if self.restart:
            self._clear()
        self._remove_leftovers()
        source = fingerprint(self.info.path)
        manifest = Manifest.load(self.folder)
        if manifest is None:  # new, or stopped while starting: nothing worth keeping
            self._clear()
            return self._start(source)
        manifest.check(source, self.settings, self.segment_frames, self.model)
        timestamps = self._read_timestamps(manifest)
        if manifest.segment_frames is None:  # stopped while measuring: nothing is done
            manifest.segment_frames = self.segment_frames or None
            manifest.first_segment, manifest.done = None, []
        else:
            manifest.done = sorted(manifest.finished())
            segments = manifest.segments()
            frames = sum(segments[i].frames for i in manifest.done)
            print(f"resuming from {self.folder}: {len(manifest.done)} of {len(segments)} "
                  f"segments done ({frames} of {manifest.frames} frames), "
                  f"{len(segments) - len(manifest.done)} to do", file=sys.stderr)
        manifest.model = self.model
        manifest.save()
        return manifest, timestamps

    def _claim(self) -> None:
        """Make the work folder (or find it holding only what is ours) and lock it for this
        run, so that a second run on the same output cannot write into it meanwhile."""
        if self.folder.exists() and not self.folder.is_dir():
            raise SegmentError(f"{self.folder} is in the way of the work folder of "
                               f"{self.output}: it is a file; move it away or choose another "
                               "output")
        strangers = sorted(n for n in _listdir(self.folder) if not _OURS.fullmatch(n))
        if strangers:
            raise SegmentError(f"{self.folder} is in the way of the work folder of "
                               f"{self.output} (it holds {strangers[0]}); move it away or "
                               "choose another output")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.folder / LOCK)
        except OSError as err:
            raise SegmentError(f"cannot write {self.folder}: {err.strerror or err}") from None

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the last descriptor releases the lock
            self._lock = None

    def _clear(self, lock_too: bool = False) -> None:
        """Delete what is ours in the work folder (all but the lock we hold, unless
        ``lock_too``); nothing else is there (``_claim``)."""
        for name in _listdir(self.folder):
            if _OURS.fullmatch(name) and (lock_too or name != LOCK):
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()

    def _remove_leftovers(self) -> None:
        """What a killed run was writing: its temporary files in the work folder, and the
        output's beside it (a kill during the join: as large as the output)."""
        beside = re.compile(_LEFTOVER.format(name=re.escape(self.output.name)))
        for folder, pattern in ((self.folder, _OURS_LEFTOVER), (self.output.parent, beside)):
            for name in _listdir(folder):
                if pattern.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        (folder / name).unlink()

    def _start(self, source: dict) -> tuple[Manifest, list[int]]:
        timestamps = self.scan()
        atomic.write_text(self.folder / TIMESTAMPS, json.dumps(timestamps), SegmentError)
        manifest = Manifest(self.folder, source, self.settings, len(timestamps),
                            self.segment_frames or None, tile=self.choose_tile(),
                            model=self.model)
        manifest.save()
        if manifest.segment_frames:
            print(f"{self.folder}: {len(manifest.segments())} segments of "
                  f"{manifest.segment_frames} frames", file=sys.stderr)
        return manifest, timestamps

    def _read_timestamps(self, manifest: Manifest) -> list[int]:
        try:
            timestamps = json.loads((self.folder / TIMESTAMPS).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SegmentError(f"cannot resume from {self.folder}: unreadable {TIMESTAMPS} "
                               f"({err}); add --restart to start over") from None
        if not (isinstance(timestamps, list) and len(timestamps) == manifest.frames
                and all(isinstance(t, int) for t in timestamps)):
            raise SegmentError(f"cannot resume from {self.folder}: {TIMESTAMPS} does not match "
                               f"{MANIFEST}; add --restart to start over")
        return timestamps

    # -- the automatic size ------------------------------------------------------------------

    def _measure(self, manifest: Manifest, timestamps: list[int], ticks: list[int],
                 encode: Encode) -> Manifest:
        """Rank 0 upscales the first two batches as segment 0, timing the second (the first
        includes the warm-up), and chooses the size from it; every rank gets the manifest."""
        first = Segment(0, 0, min(manifest.frames, 2 * self.batch))

        def measure() -> Manifest:
            tqdm.write(f"{self.folder}: timing the first {first.frames} frames to size the "
                       "segments", file=sys.stderr)
            times = [time.perf_counter()]
            self._encode(first, manifest, timestamps, ticks, encode,
                         on_batch=lambda: times.append(time.perf_counter()))
            steps = [b - a for a, b in zip(times, times[1:], strict=False)]
            per_frame = steps[-1] / self.batch
            remaining = manifest.frames - first.frames
            manifest.first_segment = first.frames
            manifest.segment_frames = (automatic_size(per_frame, remaining, self.ranks.world,
                                                      self.batch)
                                       if remaining else first.frames)
            manifest.done = [0]
            manifest.save()
            tqdm.write(f"{self.folder}: {describe_plan(manifest.segments())} "
                       f"({per_frame:.3g} s per frame)", file=sys.stderr)
            return manifest

        return self.ranks.from_first(measure)

    # -- the work ------------------------------------------------------------------------------

    def _encode(self, segment: Segment, manifest: Manifest, timestamps: list[int],
                ticks: list[int], encode: Encode,
                on_batch: Callable[[], None] | None = None) -> None:
        """Upscale one segment into its file, then write its record."""
        def progress(frames: int, note: str = "") -> None:
            if on_batch is not None:
                on_batch()
            if self._bar is not None:
                if note:
                    self._bar.set_postfix_str(note, refresh=False)
                self._bar.update(frames)

        # An earlier record of this segment (a file that lost its recorded size) must not
        # vouch for the file being written now.
        segment.record(self.folder).unlink(missing_ok=True)
        base = ticks[segment.first]
        file = segment.file(self.folder)
        scores = encode(Work(segment, timestamps,
                             [t - base for t in ticks[segment.first:segment.end]], file,
                             manifest.tile, progress))
        record = {"first": segment.first, "end": segment.end, "bytes": file.stat().st_size,
                  "scores": scores}
        atomic.write_text(segment.record(self.folder), json.dumps(record), SegmentError)
        self._done.add(segment.index)

    def _refresh(self, manifest: Manifest) -> None:
        """Rank 0: count the segments the other ranks finished and record them all in the
        manifest."""
        segments = manifest.segments()
        new = [i for i in sorted(recorded(self.folder) - self._done) if i < len(segments)
               and read_record(segments[i], self.folder) is not None]
        self._done.update(new)
        if new and self._bar is not None:
            self._bar.update(sum(segments[i].frames for i in new))
        if sorted(self._done) != manifest.done:
            manifest.done = sorted(self._done)
            manifest.save()

    # -- rank 0: the join --------------------------------------------------------------------

    def _join(self, manifest: Manifest, timestamps: list[int], ticks: list[int],
              resumed: tuple[int, int]) -> Outcome:
        segments = manifest.segments()
        finished = manifest.finished()
        missing = [s.index for s in segments if s.index not in finished]
        if missing:
            raise SegmentError(f"cannot join {self.folder}: segment {missing[0]} is not done "
                               "(rerun the same command to finish it)")
        audio = self.info.path if (self.audio and self.info.audio_codec) else None
        offset = float(timestamps[0] * self.info.time_base) if self.trim_start else 0.0
        joined = video.join([(s.file(self.folder), ticks[s.first]) for s in segments],
                            self.output, time_base=self.info.time_base, fps=self.info.fps,
                            audio_source=audio, audio_offset=offset)
        scores = [row for s in segments for row in read_record(s, self.folder)["scores"]]
        if not self.keep:
            self._clear(lock_too=True)  # still holding the lock: no other run starts meanwhile
            with contextlib.suppress(OSError):  # a file added since the start stays
                self.folder.rmdir()
        return Outcome(joined, scores, len(segments), *resumed, self.folder)


def _listdir(folder: Path) -> list[str]:
    """The names in ``folder``; none when it is missing (or not a folder)."""
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _lock(path: Path) -> int:
    """Lock ``path`` (made when missing) for this process and write its id into it; returns
    the descriptor, which holds the lock until closed (by the OS, too, when the process dies:
    no stale lock after a kill -9). SegmentError naming the holder when another has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder may have deleted the file (with its folder, when done) between our
            # open and our lock: a lock on it would keep nobody out; take the new one.
            if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
            path.parent.mkdir(parents=True, exist_ok=True)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SegmentError(f"{path.parent} is in use by another run (pid {pid}); wait "
                               "for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
