"""Download Vimeo-90K septuplets and lay them out for training.

    python DatasetFetcher.py                          # the clean test set, as the original did
    python DatasetFetcher.py --url http://data.csail.mit.edu/tofu/dataset/vimeo_septuplet.zip

Result: ``<output>/sequences/<clip>/<seq>/im1..im7.png`` with ``sep_trainlist.txt`` and
``sep_testlist.txt`` beside it (taken from the archive; a missing ``sep_trainlist.txt`` lists
every septuplet, so the original's training on the test set still works), or with
``--renumber`` the original's flat copy ``<output>/HR/<n>/im1..im7.png`` (n = 1, 2, ...) listed
in ``<output>/HR/sep_trainlist.txt``.

The download resumes a partial file (HTTP Range), retries a dropped transfer (timeout, reset,
short read, HTTP 408/429/5xx) with exponential backoff, fails at once on what waiting cannot fix
(a host name that does not resolve, a refused connection, other HTTP 4xx), and checks the size
and (with ``--sha256``) the checksum. Every archive entry is checked before anything is
extracted (no absolute paths, ``..`` or links), extraction goes to a temporary folder that is
renamed into place only when complete, and a finished fetch leaves a marker that makes the next
run a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath

from tqdm import tqdm

import atomic
import cli

DEFAULT_URL = "http://data.csail.mit.edu/tofu/testset/vimeo_test_clean.zip"
MARKER = ".fetch_complete.json"
LISTS = ("sep_trainlist.txt", "sep_testlist.txt")
CHUNK = 1 << 20


class FetchError(cli.CLIError):
    """The download or the archive failed; the message names the URL or file."""


# ---------------------------------------------------------------------------------------------
# Download


def download(url: str, dest: str, *, size: int | None = None, retries: int = 5,
             backoff: float = 2.0, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest``, resuming ``dest + '.part'`` across failures and runs.

    Args:
        url: http(s) or file URL.
        dest: final path; the file appears there only when complete and of the expected size.
        size: expected size in bytes (else the server's Content-Length, when it sends one).
        retries: consecutive failed attempts (without progress) before giving up.
        backoff: seconds before the first retry, doubled for each further one.
        timeout: socket timeout in seconds.

    Raises:
        FetchError: at once, without retrying, when the host name does not resolve, the
            connection is refused or the server answers HTTP 4xx (other than 408 and 429);
            after ``retries`` failed attempts in a row for anything else (timeouts, resets,
            short reads, HTTP 5xx).
    """
    part = dest + ".part"
    failures = 0
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if size is not None and have == size:
            break
        try:
            total = _fetch_range(url, part, have, timeout)
            expected = size if size is not None else total
            got = os.path.getsize(part)
            if expected is not None and got != expected:
                if got > expected:
                    os.remove(part)
                    raise FetchError(f"{url}: received {got} bytes, more than the expected "
                                     f"{expected}; the partial file was deleted")
                raise http.client.IncompleteRead(b"", expected - got)
            break
        except FetchError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if isinstance(err, urllib.error.HTTPError) and not _retryable(err.code):
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
            now = os.path.getsize(part) if os.path.exists(part) else 0
            final = _final_reason(url, err)
            if final is not None:
                resume = f"; run again to resume from byte {now}" if now else ""
                raise FetchError(f"{url}: {final}{resume}") from None
            failures = 0 if now > have else failures + 1
            if failures > retries:
                raise FetchError(f"{url}: download failed {failures} times in a row ({err!r}); "
                                 f"run again to resume from byte {now}") from None
            delay = backoff * 2 ** max(failures - 1, 0)
            tqdm.write(f"download interrupted at byte {now} ({err!r}); retrying in {delay:g} s")
            time.sleep(delay)
    os.replace(part, dest)


def _retryable(code: int) -> bool:
    return code in (408, 429) or code >= 500


def _final_reason(url: str, err: BaseException) -> str | None:
    """Why ``err`` cannot heal by waiting (so is not retried), or None when it might.

    A host name that does not resolve and a refused connection are final: retrying them only
    delays the error (by over a minute with the default backoff). Timeouts, resets and short
    reads are not: they are what a dropped transfer looks like.
    """
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    parsed = urllib.parse.urlparse(url)
    if isinstance(reason, socket.gaierror):
        return (f"cannot resolve host {parsed.hostname!r} (name lookup failed: {reason}); "
                "not retried: check the URL or your network")
    if isinstance(reason, ConnectionRefusedError):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return (f"connection refused by {parsed.hostname}:{port}; not retried: check the URL "
                "and that the server is running")
    return None


def _fetch_range(url: str, part: str, have: int, timeout: float) -> int | None:
    """Append the bytes from ``have`` on to ``part``; return the full size when known."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part file is complete
            return have
        raise
    with response:
        status = response.status or 200  # file:// URLs have no status
        start = have if status == 206 else 0  # a server ignoring Range resends everything
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise FetchError(f"{url}: server resumed at the wrong place ({content_range!r})")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(part), leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def sha256sum(path: str) -> str:
    """Hex SHA-256 of a file, with a progress bar (archives are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle, tqdm(total=os.path.getsize(path), unit="B",
                                          unit_scale=True, desc="sha256", leave=False) as bar:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Extraction


def check_members(archive: zipfile.ZipFile, path: str) -> None:
    """Refuse the archive if any entry could land outside the target folder."""
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        mode = info.external_attr >> 16
        if (name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts
                or stat.S_ISLNK(mode)):
            raise FetchError(f"{path}: unsafe archive entry {info.filename!r} (absolute path, "
                             "'..' or link); nothing was extracted")


def extract(path: str, into: str) -> str:
    """Extract a zip into a new temporary folder inside ``into``; return that folder.

    Nothing is left behind when the archive is corrupt or unsafe.
    """
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=into)
    try:
        with zipfile.ZipFile(path) as archive:
            check_members(archive, path)
            for info in tqdm(archive.infolist(), desc="extracting", unit="file", leave=False):
                archive.extract(info, tmp)  # reads every byte, so a bad CRC raises here
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"{path}: corrupt or unreadable archive ({err}); nothing was "
                         "extracted") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def find_root(folder: str, archive: str) -> str:
    """The folder of the extracted tree that holds ``sequences/`` (often one level down)."""
    for current, dirs, _ in os.walk(folder):
        if "sequences" in dirs:
            return current
        if current.count(os.sep) - folder.count(os.sep) >= 2:
            dirs.clear()
    raise FetchError(f"{archive}: no sequences/ folder; not a Vimeo-90K septuplet archive")


def list_septuplets(sequences: str) -> list[str]:
    """Every ``<clip>/<seq>`` folder holding im1.png .. im7.png, sorted."""
    found = []
    for clip in sorted(os.listdir(sequences)):
        clip_dir = os.path.join(sequences, clip)
        if not os.path.isdir(clip_dir):
            continue
        for seq in sorted(os.listdir(clip_dir)):
            seq_dir = os.path.join(clip_dir, seq)
            if all(os.path.isfile(os.path.join(seq_dir, f"im{i}.png")) for i in range(1, 8)):
                found.append(f"{clip}/{seq}")
    return found


def read_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def write_list(path: str, entries: Sequence[str]) -> None:
    atomic.write_text(path, "".join(f"{e}\n" for e in entries), FetchError)


def install(root: str, output: str, renumber: bool) -> dict:
    """Move an extracted tree (``root`` holds ``sequences/``) into ``output``; return a summary."""
    septuplets = list_septuplets(os.path.join(root, "sequences"))
    if not septuplets:
        raise FetchError(f"{root}: the archive holds no complete septuplet (im1.png..im7.png)")
    lists = {name: read_list(os.path.join(root, name)) if os.path.isfile(os.path.join(root, name))
             else septuplets for name in LISTS}
    if renumber:
        target = os.path.join(output, "HR")
        staging = tempfile.mkdtemp(prefix=".hr-", dir=output)
        for n, entry in enumerate(tqdm(lists["sep_trainlist.txt"], desc="renumbering"), 1):
            source = os.path.join(root, "sequences", entry)
            if not os.path.isdir(source):
                shutil.rmtree(staging, ignore_errors=True)
                raise FetchError(f"sep_trainlist.txt: entry {entry!r} is not in the archive")
            shutil.copytree(source, os.path.join(staging, str(n)))
        write_list(os.path.join(staging, "sep_trainlist.txt"),
                   [str(n) for n in range(1, len(lists["sep_trainlist.txt"]) + 1)])
        os.replace(staging, target)
    else:
        os.replace(os.path.join(root, "sequences"), os.path.join(output, "sequences"))
        for name, entries in lists.items():
            write_list(os.path.join(output, name), entries)
    return {"septuplets": len(septuplets), "renumber": renumber,
            **{name: len(entries) for name, entries in lists.items()}}


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Download Vimeo-90K septuplets (resumable, verified, safely extracted).")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="zip archive to fetch (default: the clean test set the original "
                             f"used, {DEFAULT_URL}; the full training set is "
                             "http://data.csail.mit.edu/tofu/dataset/vimeo_septuplet.zip, 82 GB)")
    parser.add_argument("--output", "--data_dir", dest="output", default="vimeo_septuplet",
                        help="folder to fill (default: vimeo_septuplet; train with "
                             "--data_dir <output>/sequences)")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 of the archive (hex); checked when given")
    parser.add_argument("--size", type=int, default=None,
                        help="expected archive size in bytes (default: the server's "
                             "Content-Length)")
    cli.add_bool_flag(parser, "--renumber", default=False,
                      help="copy the training septuplets to <output>/HR/<n> as the original "
                           "did, instead of the Vimeo-90K layout")
    parser.add_argument("--retries", type=int, default=5,
                        help="attempts in a row without progress before giving up (default: "
                             "5); an unresolvable host or a refused connection fails at once")
    parser.add_argument("--backoff", type=float, default=2.0,
                        help="seconds before the first retry, doubled each time (default: 2)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="network timeout in seconds (default: 60)")
    cli.add_bool_flag(parser, "--keep_archive", default=False,
                      help="keep the downloaded zip after a successful extraction")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise cli.CLIError("--retries and --backoff must be >= 0 and --timeout > 0")
    if args.sha256 is not None and len(args.sha256) != 64:
        raise cli.CLIError(f"--sha256 {args.sha256}: expected 64 hexadecimal digits")
    output = args.output
    marker = os.path.join(output, MARKER)
    wanted = {"url": args.url, "renumber": args.renumber}
    done = _read_marker(marker)
    layout = os.path.join(output, "HR" if args.renumber else "sequences")
    if (done is not None and all(done.get(k) == v for k, v in wanted.items())
            and os.path.isdir(layout)):
        print(f"{output}: already fetched ({done.get('septuplets')} septuplets); nothing to do")
        return 0
    if os.path.exists(layout):
        raise FetchError(f"{layout}: exists but was not made by a completed fetch of --url "
                         f"{args.url}; move it away or choose another --output")
    os.makedirs(output, exist_ok=True)

    name = os.path.basename(urllib.parse.urlparse(args.url).path) or "archive.zip"
    archive = os.path.join(output, name)
    if not os.path.exists(archive):
        download(args.url, archive, size=args.size, retries=args.retries,
                 backoff=args.backoff, timeout=args.timeout)
    _verify(archive, args.size, args.sha256)

    try:
        tmp = extract(archive, output)
    except FetchError as err:
        os.remove(archive)
        raise FetchError(f"{err}; the archive was deleted") from None
    try:
        summary = install(find_root(tmp, archive), output, args.renumber)
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic.write_text(marker, json.dumps({**wanted, "sha256": args.sha256, **summary}, indent=1),
                      FetchError)
    if not args.keep_archive:
        os.remove(archive)
    print(f"{output}: {summary['septuplets']} septuplets ready "
          f"({'HR/<n>' if args.renumber else 'sequences/'})")
    return 0


def _verify(archive: str, size: int | None, sha256: str | None) -> None:
    """Check size and checksum; a file that fails is deleted so the next run fetches it anew."""
    problem = None
    if size is not None and os.path.getsize(archive) != size:
        problem = f"size {os.path.getsize(archive)} bytes, expected {size} (--size)"
    elif sha256 is not None and sha256sum(archive) != sha256.lower():
        problem = "SHA-256 does not match --sha256"
    if problem:
        os.remove(archive)
        raise FetchError(f"{archive}: {problem}; the file was deleted, run again to re-download")


def _read_marker(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    cli.run_cli(main)
