"""README.md and docs/: every measured speed or memory figure lives in one place, README's
Benchmarks table, so no two documents can disagree; README reads in the order a newcomer needs
(the two commands, the demo, usage, then results), in short paragraphs and narrow tables, and
its command blocks name scripts and flags that exist."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A measured time, rate, speed-up or peak memory, as the documents write them.
FIGURE = re.compile(r"\b\d+(\.\d+)? ?(ms|s|min|minutes?|seconds?|h|hours?)( per |/| an? |\b)"
                    r"|frames/s|samples/s"
                    r"|s/iter|\d(\.\d+)?x (faster|slower)|\d+(\.\d+)?-\d+(\.\d+)?x faster"
                    r"|GiB peak|peak RSS \d")


def figures(text: str) -> list[str]:
    return [line for line in text.splitlines() if FIGURE.search(line)]


def test_docs_state_no_speed_figures_of_their_own():
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert figures(doc.read_text()) == [], f"{doc.name} states a figure; README holds them"


def test_readme_states_speed_figures_only_in_its_benchmarks_table():
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Benchmarks\n")
    end = text.index("\n## ", start + 1)
    assert figures(text[:start] + text[end:]) == []
    table = text[start:end]
    assert "202 s" in table  # the demo's time, which two documents used to give differently


def test_readme_gives_peak_memory_per_output_megapixel():
    text = (ROOT / "README.md").read_text()
    match = re.search(r"(\d+(\.\d+)?) GiB per output megapixel", text)
    assert match and 0.5 < float(match[1]) < 10
    line = next(line for line in text.splitlines() if "per output megapixel" in line)
    assert "--max_memory" in line


MAX_PARAGRAPH_LINES = 8  # a line over LINE_WIDTH characters counts as two, and so on
LINE_WIDTH = 100
MAX_TABLE_COLUMNS = 7
MAX_CELL_CHARS = 200  # about two and a half lines: longer is a paragraph in a cell


def readme() -> str:
    return (ROOT / "README.md").read_text()


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """The text's ("paragraph" | "table", lines), outside ``` fences; each list item and each
    heading starts a paragraph of its own."""
    found: list[tuple[str, list[str]]] = []
    fenced = False
    current: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            fenced, current = not fenced, None
            continue
        if fenced or not line.strip():
            current = None
            continue
        kind = "table" if line.startswith("|") else "paragraph"
        new_item = line.startswith("#") or re.match(r"\s*([-*]|\d+\.) ", line)
        if current is None or current[0] != kind or (kind == "paragraph" and new_item):
            current = (kind, [])
            found.append(current)
        current[1].append(line)
    assert not fenced, "README has an unclosed ``` fence"
    return found


def test_readme_opens_with_the_two_commands_then_the_demo_then_usage_then_results():
    text = readme()
    first_section = text.index("\n## ")
    opening = re.search(r"^```bash\n(.*?)^```\n", text, re.M | re.S)
    assert opening and opening.end() < first_section, "README must open with a bash block"
    assert [line.split("#")[0].strip() for line in opening[1].splitlines()] == [
        "make demo", "make test"]
    demo = text[opening.end():first_section]  # what the demo does and how long it takes
    assert "python iSeeBetterTest.py" in demo and "results/bigbuckbunny_x4.mp4" in demo
    assert "How long" in demo and "[Benchmarks](#benchmarks)" in demo
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:4] == ["Upscale a video", "Evaluate on Vid4", "Train", "Results: Vid4 x4"]
    benchmarks = text[text.index("\n## Benchmarks\n"):]
    demo_rows = [line for line in benchmarks.splitlines() if line.startswith("| the demo")]
    machines = {row.split("|")[2].strip() for row in demo_rows}
    assert {"A", "B", "D"} <= machines, "Benchmarks gives the demo's time on each CPU kind"


def test_readme_has_short_paragraphs_and_narrow_tables():
    for kind, lines in blocks(readme()):
        if kind == "paragraph":
            height = sum(max(1, math.ceil(len(line) / LINE_WIDTH)) for line in lines)
            assert height <= MAX_PARAGRAPH_LINES, f"paragraph of {height} lines: {lines[0]}"
            continue
        separator = next(line for line in lines if re.fullmatch(r"[|\s:-]+", line))
        columns = separator.strip().strip("|").count("|") + 1
        assert columns <= MAX_TABLE_COLUMNS, f"table of {columns} columns: {lines[0]}"
        for line in lines:
            for cell in line.strip().strip("|").split("|"):
                assert len(cell.strip()) <= MAX_CELL_CHARS, f"long cell: {cell.strip()[:80]}"


def bash_commands(text: str) -> list[list[str]]:
    """Every command of every ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if words := shlex.split(line, comments=True):
                commands.append(words)
    return commands


@functools.cache
def script_parser(script: str) -> argparse.ArgumentParser | None:
    """The script's own parser (its ``build_parser``), or None when it has none."""
    if "/" in script:
        return None
    return getattr(importlib.import_module(script.removesuffix(".py")), "build_parser",
                   lambda: None)()


@functools.cache
def script_help(script: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} --help: {result.stderr[-1000:]}"
    return result.stdout


def check_arguments(parser: argparse.ArgumentParser, args: list[str], command: str,
                    own: int | None = None) -> None:
    """Every flag among the first ``own`` arguments (all by default) is one of the parser's
    own, not an abbreviation, and the parser accepts the whole argument list."""
    known = {flag for action in parser._actions for flag in action.option_strings}
    for arg in args[:own]:
        if re.match(r"-[A-Za-z-]", arg):
            assert arg.split("=")[0] in known, f"{command}: no such flag {arg}"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{command}: {stderr.getvalue().strip()}")


def check_script(script: str, args: list[str], command: str) -> None:
    assert (ROOT / script).is_file(), f"{command}: {script} does not exist"
    parser = script_parser(script)
    if parser is not None:
        check_arguments(parser, args, command)
        return
    flags = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", script_help(script)))
    for arg in args:
        if re.match(r"-[A-Za-z-]", arg):
            assert arg.split("=")[0] in flags, f"{command}: {script} has no flag {arg}"


def test_readme_commands_name_scripts_and_flags_that_exist():
    """Each ```bash command: python and torchrun run a project script with flags its parser
    accepts; make runs a Makefile target. A renamed script or flag fails here."""
    from torch.distributed.run import get_args_parser

    makefile = (ROOT / "Makefile").read_text()
    scripts = set()
    for words in bash_commands(readme()):
        command = shlex.join(words)
        if words[0] == "python":
            script, args = words[1], words[2:]
        elif words[0] == "torchrun":
            launcher = get_args_parser()  # torchrun's own flags, up to the script
            own = next(i for i, word in enumerate(words[1:]) if word.endswith(".py"))
            check_arguments(launcher, words[1:], command, own)
            parsed = launcher.parse_args(words[1:])
            script, args = parsed.training_script, parsed.training_script_args
        elif words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), command
            continue
        elif words[0] == "cat":
            continue
        else:
            pytest.fail(f"README runs {words[0]}, which this test does not know: {command}")
        check_script(script, args, command)
        scripts.add(script)
    assert {"iSeeBetterTest.py", "iSeeBetterTrain.py", "prepare_septuplets.py"} <= scripts


def test_readme_links_only_to_its_own_sections():
    """Moving or renaming a section must not leave a link to it dangling."""
    text = re.sub(r"^```.*?^```", "", readme(), flags=re.M | re.S)  # no comments as headings
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, f"no such section: {sorted(links - anchors)}"


def readme_section_blocks(heading: str) -> list[list[str]]:
    """The ```bash blocks of README.md's "## <heading>" section, each as its command lines
    (continuation lines joined, blank and comment-only lines dropped)."""
    text = readme()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else None]
    found = [[line for line in block.replace("\\\n", " ").splitlines()
              if shlex.split(line, comments=True)]
             for block in re.findall(r"^```bash\n(.*?)^```", section, re.M | re.S)]
    assert found, f'README\'s "{heading}" has no bash block'
    return found


def readme_upscale_commands() -> list[list[str]]:
    """The commands of the first ```bash block of README.md's "## Upscale a video" section."""
    return [shlex.split(line, comments=True)
            for line in readme_section_blocks("Upscale a video")[0]]


def save_tiny_model(path: Path) -> Path:
    """A tiny x4 RBPN (3 frames), saved as the scripts load weights."""
    import torch

    import checkpoint
    import rbpn

    torch.manual_seed(0)
    checkpoint.save_weights(rbpn.Net(base_filter=8, feat=8, n_resblock=1, nFrames=3,
                                     scale_factor=4).state_dict(), path)
    return path


def with_model(args: list[str], model: Path) -> list[str]:
    """``args`` with the ``-m``/``--model`` value replaced by ``model`` (appended if none)."""
    at = next((i for i, a in enumerate(args) if a in ("-m", "--model")), None)
    if at is None:
        return [*args, "-m", str(model)]
    return [*args[:at + 1], str(model), *args[at + 2:]]


def expected_outputs(args: argparse.Namespace, inputs: list[str]) -> list[str]:
    """Where README says the outputs go: ``-o`` for one input file; else each input's
    <name>_x4.mp4 in the -o folder, by default results/."""
    if len(args.video) == 1 and not args.video[0].endswith("/") and not (
            args.output and args.output.endswith("/")):
        return [args.output or f"results/{Path(inputs[0]).stem}_x4.mp4"]
    return [f"{(args.output or 'results').rstrip('/')}/{Path(name).stem}_x4.mp4"
            for name in inputs]


@pytest.mark.slow
def test_readme_upscale_commands_run_as_written(tmp_path):
    """README's "Upscale a video" commands, each as written with tiny settings appended (a
    tiny model for the weights, two frames, the CPU), in a folder holding tiny clips of the
    inputs they name: each exits 0 and writes the output README promises; the repeated
    command ("killed? the same command resumes") finds its output finished. torchrun runs
    two processes, not four (two cores here)."""
    from iSeeBetterTest import build_parser
    from tests.test_video import write_clip

    commands = readme_upscale_commands()
    assert commands and all("iSeeBetterTest.py" in words for words in commands)
    tiny = save_tiny_model(tmp_path / "tiny_x4.pth")
    work = tmp_path / "work"
    work.mkdir()
    parser = build_parser()
    fps, previous = 2, None
    for words in commands:
        command = shlex.join(words)
        script = words.index("iSeeBetterTest.py")
        args = words[script + 1:]
        parsed = parser.parse_args(args)
        inputs = []  # the input files, a folder's clip among them
        for name in parsed.video:
            clip = work / name / "clip.mp4" if name.endswith("/") else work / name
            clip.parent.mkdir(parents=True, exist_ok=True)
            if not clip.exists() or parsed.start_time:  # long enough to start where it says
                write_clip(clip, frames=4 + math.ceil(parsed.start_time * fps), width=40,
                           height=32, fps=fps)
            inputs.append(str(clip.relative_to(work)))
        outputs = [work / out for out in expected_outputs(parsed, inputs)]
        resumed = words == previous
        if not resumed:  # an earlier command's output would be skipped, not written
            for out in outputs:
                out.unlink(missing_ok=True)
        args = [*with_model(args, tiny), "--max_frames", "2", "--no-gpu_mode"]  # last counts
        if words[0] == "python":
            launcher = [sys.executable]
        else:
            assert words[0] == "torchrun", f"README runs {words[0]}: {command}"
            launch = words[1:script]
            nproc = launch.index("--nproc_per_node") + 1
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        *launch[:nproc], "2", *launch[nproc + 1:]]  # two cores here
        result = subprocess.run([*launcher, str(ROOT / "iSeeBetterTest.py"), *args], cwd=work,
                                env={**os.environ, "OMP_NUM_THREADS": "1"},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
        for out in outputs:
            assert out.is_file() and out.stat().st_size > 0, f"{command}: no {out}"
        if resumed:
            assert "exists, skipping" in result.stdout, f"{command}: {result.stdout}"
        previous = words


VID4_CLIPS = ("calendar", "city", "foliage", "walk")


def write_vid4_like(root: Path, frames: int = 3, width: int = 64, height: int = 48) -> None:
    """A tiny Vid4 layout: each clip's <clip>/NNN.png (a random texture shifted per frame)
    and its list <clip>.txt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for clip in VID4_CLIPS:
        base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        (root / clip).mkdir(parents=True)
        names = [f"{clip}/{i:03d}.png" for i in range(1, frames + 1)]
        for i, name in enumerate(names, 1):
            Image.fromarray(np.roll(base, 2 * i, axis=1)).save(root / name)
        (root / f"{clip}.txt").write_text("\n".join(names) + "\n")


@pytest.mark.slow
def test_readme_evaluate_commands_run_as_written(tmp_path):
    """README's "Evaluate on Vid4" blocks, as written, in a working folder whose ../shared
    holds a tiny Vid4 (four clips of three 64x48 frames), with a tiny model for -m and the CPU:
    the cat line runs in bash, $PWD is the working folder; each python command exits 0 and
    writes metrics.json (PSNR-Y, LPIPS and, from each clip's second frame, tLP for every
    listed frame) and the --compare crop."""
    import json

    from iSeeBetterTest import build_parser

    blocks_ = readme_section_blocks("Evaluate on Vid4")
    assert len(blocks_) == 2, f"README's Evaluate on Vid4 has {len(blocks_)} bash blocks"
    write_vid4_like(tmp_path / "shared" / "data" / "Vid4")
    tiny = save_tiny_model(tmp_path / "tiny_x4.pth")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parser = build_parser()
    expected_frames = [3, 3 * len(VID4_CLIPS)]  # calendar alone, then all four clips
    for block, frames in zip(blocks_, expected_frames, strict=True):
        for line in block:
            words = shlex.split(line, comments=True)
            if words[0] == "cat":  # brace expansion: bash, as a reader's shell would run it
                result = subprocess.run(["bash", "-c", line], cwd=work, env=env,
                                        capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, f"{line}: {result.stderr}"
                continue
            assert words[:2] == ["python", "iSeeBetterTest.py"], f"README runs {line}"
            args = [word.replace("$PWD", str(work)) for word in words[2:]]
            args = [*with_model(args, tiny), "--no-gpu_mode"]
            result = subprocess.run([sys.executable, str(ROOT / "iSeeBetterTest.py"), *args],
                                    cwd=work, env=env, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, f"{line}: {result.stderr[-2000:]}"
            out = work / parser.parse_args(args).output
            report = json.loads((out / "metrics.json").read_text())
            rows = report["frames"]
            assert len(rows) == frames, f"{line}: {len(rows)} frames scored"
            assert all("psnr_y" in row and "lpips" in row for row in rows), line
            assert [("tlp" in row) for row in rows] == [
                row["frame"] != "001" for row in rows], line
            assert (out / "calendar_compare.png").is_file(), f"{line}: no --compare crop"
