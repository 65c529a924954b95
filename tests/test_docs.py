"""README.md and docs/: every measured speed or memory figure lives in one place, README's
Benchmarks table, so no two documents can disagree."""

from __future__ import annotations

import re

from tests.conftest import ROOT

# A measured time, rate, speed-up or peak memory, as the documents write them.
FIGURE = re.compile(r"\b\d+(\.\d+)? ?(ms|s|min|h|hours)( per |/| an? |\b)|frames/s|samples/s"
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
