"""The sidecar: one process per service running that service's role of every session."""

from accompanist.sidecar.config import SidecarConfig
from accompanist.sidecar.sidecar import Sidecar

__all__ = ["Sidecar", "SidecarConfig"]
