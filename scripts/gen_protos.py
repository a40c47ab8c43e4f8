#!/usr/bin/env python3
"""Regenerate the Python gRPC/protobuf modules in ``dffs/api`` from ``protos/``.

The generated files are committed, so that installing dffs needs no protoc;
``tests/test_protos.py`` fails when they drift from the ``.proto`` sources.
Run from anywhere::

    python scripts/gen_protos.py            # writes into the repository
    python scripts/gen_protos.py --out DIR  # writes DIR/dffs/api/*

Uses the protoc bundled in grpcio-tools (pinned in pyproject.toml), so every
developer produces byte-identical output.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("dffs") / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The .proto sources, in a stable order."""
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES)


def protoc_args(out: Path) -> list[str]:
    """Command line for grpc_tools.protoc writing into ``out``."""
    well_known = resources.files("grpc_tools") / "_proto"
    return [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in proto_files()),
    ]


def generate(out: Path) -> list[Path]:
    """Write the generated modules under ``out/dffs/api``; return their paths.

    Previously generated files there are removed first, so a deleted .proto
    leaves no stale module behind.
    """
    from grpc_tools import protoc

    target = out / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for old in target.iterdir():
        if is_generated(old):
            old.unlink()
    if not proto_files():
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    rc = protoc.main(protoc_args(out))
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return sorted(p for p in target.iterdir() if is_generated(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT,
        help="output root; files land in OUT/dffs/api (default: the repository root)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
