"""The demo's tests need gRPC (the ``demo`` extra); without it they are skipped, saying so."""

from __future__ import annotations

import pytest

pytest.importorskip("grpc", reason="the demo needs gRPC: pip install -e '.[demo]' (the test extra has it)")
