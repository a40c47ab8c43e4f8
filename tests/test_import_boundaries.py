"""Processes import only what they run: a daemon or a scheduler never loads the manager's database layer.

Each check is a fresh interpreter (a subprocess), because in this test process other tests may have loaded
SQLAlchemy already; what counts is what ``import MODULE`` alone drags in.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: What ``dffs daemon``, ``dffs mount``, ``dffs get`` and ``dffs scheduler`` import to run: the CLI entry modules
#: (which import their servers lazily) and the servers themselves, with the modules that read the cluster's config.
MEMBER_MODULES = [
    "dffs.cli.main",
    "dffs.cli.mount",
    "dffs.cli.get",
    "dffs.cli.scheduler",
    "dffs.daemon",
    "dffs.daemon.server",
    "dffs.daemon.service",
    "dffs.daemon.membership",
    "dffs.scheduler.server",
    "dffs.scheduler.membership",
    "dffs.manager.tunables",
]

FORBIDDEN = ("sqlalchemy", "alembic", "psycopg")

_PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in sys.argv[2:])))
"""


@pytest.mark.parametrize("module", MEMBER_MODULES)
def test_member_process_does_not_load_the_database_layer(module):
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *FORBIDDEN], capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, f"import {module} failed:\n{probe.stderr}"
    loaded = probe.stdout.split()
    assert not loaded, f"import {module} loads the database layer: {', '.join(loaded)}"


def test_the_probe_sees_a_database_import():
    """The check above can fail: the manager's store does load SQLAlchemy."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, "dffs.manager.store", *FORBIDDEN], capture_output=True, text=True, check=True
    )
    assert "sqlalchemy" in probe.stdout.split()
