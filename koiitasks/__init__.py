"""koiitasks: write, test and run Koii-style tasks in Python.

A task is three hooks (execute, audit, distribute) and a ``config-task.yml`` with Koii's field
names; every round is a Prefect flow that fans execute out to nodes, stores their signed,
slot-stamped results, has other nodes audit them, and appends the payouts to a signed ledger.
"""

from koiitasks.config import TaskConfig, load_config
from koiitasks.errors import KoiiTasksError
from koiitasks.round_result import NodeResult, RoundResult
from koiitasks.task import Context, NodeStore, SubmissionView, Task, load_task

__version__ = "0.1.0"

__all__ = [
    "Context",
    "KoiiTasksError",
    "NodeResult",
    "NodeStore",
    "RoundResult",
    "SubmissionView",
    "Task",
    "TaskConfig",
    "__version__",
    "load_config",
    "load_task",
]
