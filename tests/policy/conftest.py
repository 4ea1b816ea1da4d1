"""Policy tests never import the pack's `__main__` (building the PolicyPack starts a server and blocks)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _pack_main_never_imported() -> Iterator[None]:
    yield
    assert "policies.__main__" not in sys.modules, "a test imported policies/__main__.py"
