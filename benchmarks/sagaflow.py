"""The saga as a Temporal workflow: reserve, charge, ship, each an activity on its service's
task queue; a decline compensates the steps that committed, last first.

Why a module of its own: Temporal's sandbox re-imports the workflow's module for every run, so
it imports nothing but temporalio and the standard library.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

__all__ = ["QUEUES", "UNDO", "WORKFLOW_QUEUE", "OrderWorkflow"]

WORKFLOW_QUEUE = "orders"
QUEUES = {"reserve": "inventory", "charge": "payment", "ship": "shipping"}
"""Each step's activity and the task queue of its service's worker, in saga order."""
UNDO = {"reserve": "release", "charge": "refund", "ship": "unship"}

# Infrastructure errors (5xx, refused connections, a lost worker) are retried for about a
# minute, like the choreography's commits; a decline ("Declined") is not retried.
_COMMIT = RetryPolicy(
    initial_interval=timedelta(milliseconds=50),
    maximum_interval=timedelta(milliseconds=500),
    maximum_attempts=120,
    non_retryable_error_types=["Declined"],
)
_UNDO = RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_interval=timedelta(seconds=1))
_TIMEOUT = timedelta(seconds=5)


@workflow.defn(name="Order")
class OrderWorkflow:
    @workflow.run
    async def run(self, order: dict[str, Any]) -> str:
        done: list[str] = []
        for step, queue in QUEUES.items():
            try:
                await workflow.execute_activity(
                    step, order, task_queue=queue, start_to_close_timeout=_TIMEOUT, retry_policy=_COMMIT
                )
            except ActivityError:
                for committed in reversed(done):
                    await workflow.execute_activity(
                        UNDO[committed],
                        order,
                        task_queue=QUEUES[committed],
                        start_to_close_timeout=_TIMEOUT,
                        retry_policy=_UNDO,
                    )
                return "compensated"
            done.append(step)
        return "completed"
