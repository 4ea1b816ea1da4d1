"""docs/policies.md is generated from the code and kept in sync; nothing imports the pack's __main__."""

from __future__ import annotations

import re
import subprocess
import sys

from policies import catalogue
from policies.exceptions import PACK_CONFIG
from policies.pack import all_rules
from stacks.stackfile import REPO


def test_catalogue_is_in_sync_with_the_code() -> None:
    assert catalogue.DOC.read_text() == catalogue.render(), "docs/policies.md is stale: run `make policies-doc`"


def test_catalogue_check_command_agrees() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "policies.catalogue", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_catalogue_names_every_rule_and_every_exception() -> None:
    text = catalogue.render()
    for rule in all_rules():
        assert f"### {rule.name}" in text
        assert rule.remediation in text
    for config in PACK_CONFIG.values():
        for value in config.values():
            if isinstance(value, dict):
                for grant in value.values():
                    reason = grant["reason"] if isinstance(grant, dict) else grant
                    assert reason in text


IMPORTS_MAIN = re.compile(
    r"policies\.__main__|from\s+policies\s+import\s+__main__|run_path\([^)]*policies|runpy\.run_module\([^)]*policies"
)


def test_nothing_imports_the_pack_main() -> None:
    offenders = []
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO)
        if relative.parts[0] in (".venv", ".git") or relative.parts[:2] == ("tests", "policy"):
            continue
        if IMPORTS_MAIN.search(path.read_text(errors="replace")):
            offenders.append(str(relative))
    # The policy tests themselves name it only in the guard that forbids it.
    for path in (REPO / "tests" / "policy").glob("*.py"):
        if path.name in ("conftest.py", "test_catalogue.py"):
            continue
        if IMPORTS_MAIN.search(path.read_text()):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    assert "policies.__main__" not in sys.modules
