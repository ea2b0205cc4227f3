"""The committed gRPC modules are what scripts/gen-protos makes of boutique.proto today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "src" / "accompanist" / "demo" / "_proto"
GENERATED = ("boutique_pb2.py", "boutique_pb2.pyi", "boutique_pb2_grpc.py", "boutique_pb2_grpc.pyi")


def test_generated_modules_are_not_stale(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="regenerating needs grpcio-tools (the test extra)")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "protoc-gen-mypy").exists():
        pytest.skip("regenerating needs mypy-protobuf (the test extra)")
    # The script regenerates in place; run it on a copy of the tree so the checkout stays as it is.
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gen-protos", copy / "scripts" / "gen-protos")
    target = copy / "src" / "accompanist" / "demo" / "_proto"
    target.mkdir(parents=True)
    shutil.copy(PROTO_DIR / "boutique.proto", target / "boutique.proto")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(["bash", str(copy / "scripts" / "gen-protos")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh, committed = (target / name).read_text(), (PROTO_DIR / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-protos and commit the result"


def test_the_stubs_import_and_serve_the_boutique() -> None:
    pytest.importorskip("grpc")
    from accompanist.demo._proto import boutique_pb2, boutique_pb2_grpc

    services = set(boutique_pb2.DESCRIPTOR.services_by_name)
    assert services == {
        "CartService", "ProductCatalogService", "CurrencyService", "PaymentService", "ShippingService",
        "EmailService", "CheckoutService", "FrontendService",
    }  # fmt: skip
    assert hasattr(boutique_pb2_grpc, "add_CartServiceServicer_to_server")
