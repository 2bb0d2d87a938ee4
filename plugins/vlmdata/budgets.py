"""How long each kind of task may run, and the worst case of its retrying.

Three layers retry: a request inside a task (:class:`~vlmdata.fetch.http.RetryPolicy`: attempts,
backoff doubling up to ``max_wait``, a server's Retry-After capped there too), the task itself
(Airflow's ``retries`` with ``retry_delay`` doubling), and a run a user or a schedule starts
again. This module states the first two per kind of task, from the code's own constants; the
README's table ("Task timeouts and retry budgets") is :func:`markdown_table`, and a unit test
checks that the README shows exactly that and that each task's in-task waiting fits in its
``execution_timeout``: the timeout then stops a hung or crawling task, never a task that is
only backing off as told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from .catalog import load_catalog
from .fetch.policy import CRAWL_POLICY, RetryPolicy

# Airflow's retries of a failed task (every task of every generated DAG).
TASK_RETRIES = 2
RETRY_DELAY = timedelta(minutes=1)
RETRY_BACKOFF = 2.0  # the delay doubles: 1 min, then 2 min (Airflow adds up to as much again)
MAX_RETRY_DELAY = timedelta(minutes=10)

JITTER = 1.2  # RetryPolicy.wait multiplies its backoff by up to this much

# The OCR-VQA crawl: images per shard and threads per shard task (PlanCrawlOperator and
# CrawlShardOperator defaults); a thread handles its share of the shard one image after another.
CRAWL_SHARD_IMAGES = 2000
CRAWL_THREADS = 16


def loop_waits(policy: RetryPolicy) -> float:
    """Seconds one request may spend backing off before it gives up: between each of its
    ``attempts``, the larger of the jittered backoff and a Retry-After at the cap."""
    return sum(max(min(policy.backoff * 2 ** (n - 1), policy.max_wait) * JITTER, policy.max_wait) for n in range(1, policy.attempts))


def retry_delays(retries: int = TASK_RETRIES) -> float:
    """Seconds Airflow waits between the tries of a task, at most: before try k+1 it waits
    between d and 2d - 1 s with d = retry_delay x backoff^(k-1), capped at max_retry_delay."""
    base = RETRY_DELAY.total_seconds()
    return sum(min(2 * math.ceil(base * RETRY_BACKOFF ** (k - 1)) - 1, MAX_RETRY_DELAY.total_seconds()) for k in range(1, retries + 1))


@dataclass(frozen=True)
class Kind:
    """A kind of task: the tasks it covers, its timeout and why, and its in-task retrying."""

    name: str
    tasks: tuple[str, ...]  # task ids in the generated DAGs
    timeout: timedelta
    why: str
    policy: RetryPolicy | None = None  # the retry loop of its requests; None: no network
    loops: int = 0  # retry loops that may run one after another in one try
    loops_are: str = "no network requests"

    def waits_per_try(self) -> float:
        return self.loops * loop_waits(self.policy) if self.policy else 0.0

    def worst_until_failure(self) -> float:
        """Seconds from the first try to the task's final failure when every try runs out its timeout."""
        return (TASK_RETRIES + 1) * self.timeout.total_seconds() + retry_delays()


# Fallback mirror archives a crawl source fills from, one after another (OCR-VQA: 2).
MIRROR_ARCHIVES = max((len(s.crawl.fallback_mirrors) for s in load_catalog().values() if s.crawl), default=0)

KINDS = [
    Kind("acquisition plan", ("plan",), timedelta(hours=2),
         "probes upstream; SA-1B with `needed_by` also indexes tar headers by Range requests",
         RetryPolicy(), 1, "1 per artifact probed (in sequence)"),
    Kind("download", ("fetch",), timedelta(hours=6),
         "one artifact: tens of GB on a slow link, then its extraction; a timed-out try leaves the `.part` and the next try resumes it",
         RetryPolicy(), 3, "3: resolve (Hub, Drive), the download, one fresh download after a checksum mismatch"),
    Kind("bookkeeping", ("publish", "plan_crawl", "finish_crawl"), timedelta(minutes=30),
         "writes manifests, lists a folder or merges shard results"),
    Kind("crawl shard", ("crawl",), timedelta(hours=8),
         f"{CRAWL_SHARD_IMAGES:,} images over {CRAWL_THREADS} threads: minutes normally; the bound is a host that throttles every image",
         CRAWL_POLICY, math.ceil(CRAWL_SHARD_IMAGES / CRAWL_THREADS), f"1 per image, {math.ceil(CRAWL_SHARD_IMAGES / CRAWL_THREADS)} per thread"),
    Kind("mirror fill", ("fill_from_mirrors",), timedelta(hours=6),
         "downloads and applies OCR-VQA's fallback archives (GBs), one after another",
         RetryPolicy(), 3 * MIRROR_ARCHIVES, f"3 per mirror archive (probe, download, one fresh download), {MIRROR_ARCHIVES} archives"),
    Kind("verification plan", ("plan_verify",), timedelta(hours=2),
         "re-hashes every kept file and lists every extracted folder"),
    Kind("image chunk", ("check_images",), timedelta(hours=2),
         "decodes one chunk (20,000 images or 8 GiB) on one worker's cores: minutes; 2 h allows 3 images/s"),
    Kind("verification report", ("report",), timedelta(hours=1),
         "merges the chunks, validates annotation files, resolves every reference"),
    Kind("layout", ("materialise",), timedelta(hours=1), "links or maps every folder of a profile"),
    Kind("mixture", ("build",), timedelta(hours=2), "reads annotation files of up to millions of records, writes the training file and lock"),
]


def timeout_of(task_id: str) -> timedelta:
    """The execution_timeout of a task of the generated DAGs, by its task id."""
    for kind in KINDS:
        if task_id in kind.tasks:
            return kind.timeout
    raise KeyError(f"no timeout for task {task_id!r}: add it to vlmdata.budgets.KINDS")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def markdown_table() -> str:
    """The README's table, from the constants above and the code's retry policies."""
    rows = ["| kind | tasks | execution_timeout | why | in-task retry loop | loops per try | waits per try, at most | tries x timeout + delays |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        policy = kind.policy
        loop = f"{policy.attempts} attempts, waits up to {_duration(loop_waits(policy))}" if policy else "none"
        rows.append(
            f"| {kind.name} | {', '.join(f'`{t}`' for t in kind.tasks)} | {_duration(kind.timeout.total_seconds())} | {kind.why} | {loop} | {kind.loops_are} "
            f"| {_duration(kind.waits_per_try())} | {_duration(kind.worst_until_failure())} |"
        )
    return "\n".join(rows)
