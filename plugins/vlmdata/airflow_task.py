"""Whether this process runs an Airflow task: what only a task can do (read a Variable, register
a secret with Airflow's masker) is tried only there."""

from __future__ import annotations

import sys


def in_airflow_task() -> bool:
    """True in a task's process (Airflow's task runner is loaded); False in the CLI, the tests
    and DAG parsing, where importing Airflow would cost seconds and find no task context."""
    return "airflow.sdk.execution_time.task_runner" in sys.modules
