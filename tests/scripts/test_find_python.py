"""``.ci/find-python`` finds a Python >= 3.13 on any machine, and honours GATEWAY_PYTHON."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def find_python(repo_root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GATEWAY_PYTHON"}
    return subprocess.run(
        [str(repo_root / ".ci" / "find-python")],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def version_of(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    return int(out[0]), int(out[1])


def fake_python(directory: Path, version: str) -> Path:
    """An executable answering ``-c`` as a Python ``version`` would (the check's only question)."""
    major, minor = version.split(".")
    path = directory / f"python{version}"
    path.write_text(
        f"#!/bin/sh\nexec {sys.executable} - <<'EOF'\nimport sys\n"
        f"sys.exit(({major}, {minor}) < (3, 13))\nEOF\n"
    )
    path.chmod(0o755)
    return path


def test_it_prints_a_python_of_at_least_3_13(repo_root: Path) -> None:
    result = find_python(repo_root)
    assert result.returncode == 0, result.stderr
    assert version_of(result.stdout.strip()) >= (3, 13)


def test_gateway_python_wins_when_it_is_recent_enough(repo_root: Path, tmp_path: Path) -> None:
    chosen = fake_python(tmp_path, "3.14")
    result = find_python(repo_root, GATEWAY_PYTHON=str(chosen))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(chosen)


def test_a_too_old_gateway_python_fails_naming_it(repo_root: Path, tmp_path: Path) -> None:
    old = fake_python(tmp_path, "3.11")
    result = find_python(repo_root, GATEWAY_PYTHON=str(old))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"GATEWAY_PYTHON={old} is not a Python >= 3.13" in result.stderr


def test_with_nothing_recent_enough_it_fails_saying_what_to_do(
    repo_root: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(fake_python(tmp_path, "3.11"))
    for tool in ("bash", "grep", "sort", "env", "sh"):
        (bin_dir / tool).symlink_to(Path(f"/usr/bin/{tool}").resolve())
    result = find_python(repo_root, PATH=str(bin_dir), HOME=str(tmp_path))
    assert result.returncode == 1
    assert "no Python >= 3.13 found" in result.stderr
