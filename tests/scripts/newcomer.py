"""The README's first command as a newcomer runs it: in a fresh copy of the repository
(the tracked and not-ignored files, as a clone would have them), with none of our settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def copy_checkout(repo_root: Path, target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = repo_root / name.decode()
        if source.is_file():
            destination = target / name.decode()
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def newcomer_checkout(repo_root: Path, tmp_path: Path, port: int) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the repository and a newcomer's environment (none of our settings)."""
    checkout = tmp_path / "checkout"
    copy_checkout(repo_root, checkout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "VIRTUAL_ENV"))}
    env["GATEWAY_PORT"] = str(port)
    return checkout, env


def first_command(repo_root: Path) -> str:
    text = (repo_root / "README.md").read_text()
    match = re.search(r"<!-- first-command -->\n```sh\n(.+?)\n```", text, re.DOTALL)
    assert match, "README has no first-command block"
    return match.group(1).strip()
