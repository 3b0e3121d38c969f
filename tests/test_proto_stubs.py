"""The committed Python stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "proto"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    assert protos, "no .proto files found"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        check=True,
    )
    stale = []
    for proto in protos:
        stem = proto.removesuffix(".proto")
        for suffix in GENERATED:
            fresh = (tmp_path / f"{stem}{suffix}").read_text()
            committed_path = PROTO_ROOT / f"{stem}{suffix}"
            if not committed_path.exists() or committed_path.read_text() != fresh:
                stale.append(f"{stem}{suffix}")
    assert not stale, f"stale generated stubs (run `make proto`): {stale}"


def test_every_proto_field_and_message_is_documented() -> None:
    """Each message, field, enum value, service and rpc has a comment line above it."""
    undocumented = []
    for proto in PROTO_ROOT.rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_decl = stripped.startswith(("message ", "service ", "rpc ", "enum ")) or (
                stripped.endswith(";") and "=" in stripped
                and not stripped.startswith(("syntax", "option", "package", "import", "//")))
            if not is_decl:
                continue
            previous = lines[i - 1].strip() if i else ""
            if not previous.startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {stripped}")
    assert not undocumented, "undocumented proto declarations:\n" + "\n".join(undocumented)
