"""The linters configured in pyproject.toml, run as part of the test command so that CI fails on a new finding.

ruff (lint and format) and mypy come from this interpreter's environment (the ``test`` extra pins them), so every
machine runs the same versions with the same config. mypy runs once; its findings are reported by package, so a
failure names the part of the tree it is in and lists each file's errors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Generated code, excluded from mypy in pyproject.toml as well.
_UNCHECKED = {"dffs/api"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check():
    result = _run("ruff", "check", "--no-cache", ".")
    if result.returncode != 0:
        pytest.fail(f"ruff check found problems:\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff_format():
    result = _run("ruff", "format", "--check", "--no-cache", ".")
    if result.returncode != 0:
        pytest.fail(f"ruff format would change these (run ruff format):\n{result.stdout}{result.stderr}", pytrace=False)


def _areas() -> list[str]:
    """dffs's packages and top-level modules, as paths: each is a test of its own."""
    areas = []
    for path in sorted((ROOT / "dffs").iterdir()):
        area = path.relative_to(ROOT).as_posix()
        if area in _UNCHECKED:
            continue
        if (path.is_dir() and (path / "__init__.py").exists()) or path.suffix == ".py":
            areas.append(area)
    return areas


_FINDING = re.compile(r"^(?P<file>[^:\s]+\.py):\d+(?::\d+)?: error: ")


@pytest.fixture(scope="module")
def mypy_findings() -> dict[str, list[str]]:
    """mypy over everything pyproject.toml names: its error lines by file."""
    result = _run("mypy")
    if result.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        pytest.fail(f"mypy did not run (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    findings: dict[str, list[str]] = defaultdict(list)
    for line in result.stdout.splitlines():
        match = _FINDING.match(line)
        if match:
            findings[match["file"]].append(line)
    if result.returncode == 1 and not findings:
        pytest.fail(f"mypy failed without findings this test understands:\n{result.stdout}{result.stderr}")
    return findings


def _in_area(file: str, area: str) -> bool:
    return file == area or file.startswith(area.removesuffix(".py") + "/")


@pytest.mark.parametrize("area", _areas())
def test_mypy(mypy_findings, area):
    here = {file: lines for file, lines in sorted(mypy_findings.items()) if _in_area(file, area)}
    count = sum(len(lines) for lines in here.values())
    report = "\n".join(f"{file} ({len(lines)}):\n  " + "\n  ".join(lines) for file, lines in here.items())
    if here:
        pytest.fail(f"mypy: {count} errors in {area}:\n{report}", pytrace=False)


def test_mypy_finds_nothing_elsewhere(mypy_findings):
    """A finding in a file no area above claims (outside the packages, or in generated code) fails here."""
    areas = _areas()
    stray = [file for file in sorted(mypy_findings) if not any(_in_area(file, area) for area in areas)]
    if stray:
        lines = "\n".join(line for file in stray for line in mypy_findings[file])
        pytest.fail(f"mypy errors outside the checked areas:\n{lines}", pytrace=False)
