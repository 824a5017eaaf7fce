from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
ANSFORGE = SHARED_FIXTURES / "ansforge"
DRIMBOX = REPO_ROOT / "tests" / "fixtures" / "drimbox"

requires_shared = pytest.mark.skipif(
    not ANSFORGE.is_dir(),
    reason=f"{SHARED_FIXTURES} is absent: the ANS conformance corpus is not checked out",
)
