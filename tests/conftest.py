"""Shared pytest setup. Keep fixtures specific to one module in that module's test file."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_MOCAP = SHARED / "data" / "real-mocap"


@pytest.fixture(scope="session")
def real_mocap_dir() -> Path:
    if not REAL_MOCAP.is_dir():
        pytest.skip(f"real-mocap fixtures not found at {REAL_MOCAP} (they live in ../shared beside the repo)")
    return REAL_MOCAP
