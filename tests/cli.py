"""Run the real ``dffs`` command line as a subprocess, the way users do."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def run_dffs(*args: str, timeout: float = 60, entry: str = "dffs") -> subprocess.CompletedProcess:
    """``dffs ARGS`` (or ``dfget ARGS`` with entry="dfget") with captured output."""
    code = "from dffs.cli.main import main, dfget_main; import sys; " + (
        "dfget_main()" if entry == "dfget" else "main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, contains: str = "") -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith("dffs: error:"), err
    assert err.count("\n") == 0, err
    assert contains.lower() in err.lower(), err


def assert_no_output_left(path: Path) -> None:
    assert not path.exists(), f"{path} exists after a failed download"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.dffs-")]
    assert not leftovers, leftovers
