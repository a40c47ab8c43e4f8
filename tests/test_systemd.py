"""systemd units in systemd/ pass `systemd-analyze verify` (where systemd-analyze exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "systemd").glob("*.service"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_verifies(unit, tmp_path):
    # Point ExecStart at this checkout's dffs, since the unit names the install path.
    text = unit.read_text().replace("/opt/dffs/.venv/bin/dffs", str(REPO / ".venv/bin/dffs"))
    (tmp_path / unit.name).write_text(text)
    name = unit.name.replace("@.service", "@mnt-dragonfly.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if unit.stem.rstrip("@") in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_there_are_units():
    assert any(u.name == "dffs-mount@.service" for u in UNITS)


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_raise_the_open_file_limit(unit):
    """Every service holds task files and sockets: far more than the default 1024 descriptors."""
    limits = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0]) >= 65536


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_restart_a_crashed_service(unit):
    """A service killed by a signal or exiting with an error comes back (issue 16: no manual restart)."""
    settings = dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings.get("Restart") in ("on-failure", "on-abnormal", "always")
    assert float(settings.get("RestartSec", "0")) > 0  # no tight crash loop


def test_the_mount_unit_clears_a_stale_mount_before_it_starts_and_after_it_stops():
    """A mount whose daemon died answers ENOTCONN until it is unmounted: lazily, and a failure
    (nothing mounted) must not stop the service from starting ("-")."""
    lines = (REPO / "systemd" / "dffs-mount@.service").read_text().splitlines()
    assert "ExecStartPre=-/bin/fusermount3 -u -z %f" in lines
    assert "ExecStopPost=-/bin/fusermount3 -u -z %f" in lines
