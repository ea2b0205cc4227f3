"""The engine tests' fixtures, for these probes too."""

from tests.engine.conftest import mesh

__all__ = ["mesh"]
