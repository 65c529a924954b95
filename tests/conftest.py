"""Shared test fixtures: paths to the reference material beside the project."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_FIXTURES = SHARED / "fixtures"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (Vid4, Vimeo-90K sample); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference video data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def shared_fixtures() -> Path:
    """``../shared/fixtures`` (outputs of the original code); skipped when absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES
