"""The README's table of timeouts and retry budgets is computed from the code and holds."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlmdata import budgets
from vlmdata.budgets import KINDS, TASK_RETRIES, loop_waits, markdown_table, retry_delays
from vlmdata.crawl import CRAWL_POLICY
from vlmdata.fetch.http import RetryPolicy

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_table_the_code_computes():
    assert markdown_table() in README.read_text(), "README's 'Task timeouts and retry budgets' table drifted: paste vlmdata.budgets.markdown_table()"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_in_task_waiting_fits_in_the_timeout_of_every_try(kind):
    tries = TASK_RETRIES + 1
    assert kind.waits_per_try() * tries < kind.timeout.total_seconds() * tries, kind.name


@pytest.mark.parametrize("policy", [RetryPolicy(), CRAWL_POLICY, RetryPolicy(attempts=5, backoff=30, max_wait=100)])
def test_loop_waits_bounds_what_the_retry_policy_really_sleeps(policy, monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest jitter
    jittered = sum(policy.wait(n, None) for n in range(1, policy.attempts))
    told = sum(policy.wait(n, 10**6) for n in range(1, policy.attempts))  # a server asking for a day
    per_wait = sum(max(policy.wait(n, None), policy.wait(n, 10**6)) for n in range(1, policy.attempts))
    assert max(jittered, told) <= loop_waits(policy) == pytest.approx(per_wait)


def test_retry_delays_bound_what_airflow_waits_between_tries():
    """Airflow's own formula (TaskInstance.next_retry_datetime) over many runs never waits longer."""
    from airflow.models.taskinstance import TaskInstance

    task = SimpleNamespace(retry_delay=budgets.RETRY_DELAY, retry_exponential_backoff=budgets.RETRY_BACKOFF, max_retry_delay=budgets.MAX_RETRY_DELAY)
    end = datetime(2026, 1, 1, tzinfo=timezone.utc)
    longest = []
    for try_number in range(1, TASK_RETRIES + 1):
        delays = [
            TaskInstance.next_retry_datetime(SimpleNamespace(
                retry_delay_override=None, task=task, try_number=try_number, dag_id="verify_x", task_id="report",
                logical_date=end + timedelta(minutes=m), end_date=end, log=None,
            )) - end
            for m in range(300)
        ]
        longest.append(max(delays).total_seconds())
    assert sum(longest) <= retry_delays() and sum(longest) > retry_delays() * 0.9
