"""The Online Boutique's services, each a process with its own gRPC API and SQLite database.

Run one with ``python -m accompanist.demo.services NAME --port P --db PATH [--seed]``;
:data:`SERVICES` names them all. They know nothing of Accompanist.
"""

__all__ = ["SERVICES"]

SERVICES = ("cart", "catalog", "currency", "payment", "shipping", "email", "checkout", "frontend")
"""Every service: the six the checkout calls, the orchestrated checkout, and the frontend."""
