from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED_SKIP_WHY

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
ANSFORGE = SHARED_FIXTURES / "ansforge"
DRIMBOX = REPO_ROOT / "tests" / "fixtures" / "drimbox"

requires_shared = pytest.mark.skipif(
    not ANSFORGE.is_dir(),
    reason=f"needs ../shared/fixtures, absent from a clone ({SHARED_FIXTURES}): {SHARED_SKIP_WHY}",
)
