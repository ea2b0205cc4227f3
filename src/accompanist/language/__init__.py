"""The choreography language: roles, located values, the ``Choreo`` operations, declarations."""

from accompanist.language.choreo import Choreo
from accompanist.language.choreography import App, Choreography, choreography
from accompanist.language.located import Located
from accompanist.language.roles import Role, roles
from accompanist.language.steps import Step, StepKind

__all__ = ["App", "Choreo", "Choreography", "Located", "Role", "Step", "StepKind", "choreography", "roles"]
