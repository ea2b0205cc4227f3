"""The two interpreters of the choreography vocabulary: central and projected."""

from accompanist.interpreters.central import CentralRun, CentralRunner, TraceEvent, run_central
from accompanist.interpreters.projected import ProjectedChoreo, StepRunner, project

__all__ = ["CentralRun", "CentralRunner", "ProjectedChoreo", "StepRunner", "TraceEvent", "project", "run_central"]
