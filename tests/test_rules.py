"""The rules conftest.py enforces: reference tests skip with a reason when torch/moshi are
absent and fail instead under MOSHI_MAC_REQUIRE_REFERENCE=1; the session's cache folder is
a temporary one; fixtures come from inside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DATA, REFERENCE_CONFIGS, REQUIRE_REFERENCE_ENV, ROOT, require_reference


def test_missing_reference_skips_or_fails(monkeypatch):
    monkeypatch.delenv(REQUIRE_REFERENCE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_reference_module not installed"):
        require_reference("os", "no_such_reference_module")
    monkeypatch.setenv(REQUIRE_REFERENCE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_REFERENCE_ENV}=1 requires"):
        require_reference("no_such_reference_module")
    require_reference("os")  # present: nothing happens


def test_cache_and_fixtures_stay_inside(tmp_path_factory):
    from moshi_mac.paths import cache_root

    assert cache_root().is_relative_to(tmp_path_factory.getbasetemp())
    assert REFERENCE_CONFIGS and all(p.is_relative_to(ROOT) for p in REFERENCE_CONFIGS)
    assert DATA.is_relative_to(ROOT)
    text = "\n".join(p.read_text() for p in Path(__file__).parent.glob("*.py"))
    assert "shared" + "/reference" not in text and '"shared"' + ' / "reference"' not in text
