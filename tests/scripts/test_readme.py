"""The README stays true: its commands exist and its settings table is complete."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings


def readme(repo_root: Path) -> str:
    return (repo_root / "README.md").read_text()


def marked_command(text: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.+?)\n```", text, re.DOTALL)
    assert match, f"README has no {marker} block"
    return match.group(1).strip()


def test_settings_table_lists_every_setting(repo_root: Path) -> None:
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z_]+)` \|", readme(repo_root), re.MULTILINE))
    expected = {f"GATEWAY_{name.upper()}" for name in Settings.__struct_fields__}
    assert documented == expected | {"GATEWAY_SOURCES_FILE"}


def test_ci_runs_the_readme_test_command(repo_root: Path) -> None:
    command = marked_command(readme(repo_root), "test-command")
    assert command == "make check"
    assert re.search(r"^make check\b", (repo_root / ".ci/run").read_text(), re.MULTILINE)


def test_linked_docs_exist(repo_root: Path) -> None:
    for link in re.findall(r"\]\((docs/[^)]+)\)", readme(repo_root)):
        assert (repo_root / link).is_file(), link
