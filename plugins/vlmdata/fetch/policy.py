"""The retry policies of our request loops, in a module of their own (standard library only):
the DAG files read them at every parse (vlmdata.budgets' timeouts and the DAG docs), and
vlmdata.fetch.http, which runs them, imports requests."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff: float = 1.0  # first wait; doubles each time, with jitter
    max_wait: float = 120.0  # also caps a server's Retry-After
    connect_timeout: float = 30.0
    read_timeout: float = 120.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * 2 ** (attempt - 1), self.max_wait) * random.uniform(0.8, 1.2)


# A dry run is a question someone waits for (at a terminal, in the Trigger dialog) and costs
# nothing when upstream does not answer: it answers from the catalog. So it retries briefly (3
# attempts, waiting at most 5 s, 10 s to connect, 30 s for an answer) instead of an acquisition's
# 8 attempts and minutes of backoff (RetryPolicy's defaults): a silent host costs it about 100 s
# at worst, a refused or unresolvable one seconds.
DRY_RUN_POLICY = RetryPolicy(attempts=3, max_wait=5.0, connect_timeout=10.0, read_timeout=30.0)

# The crawl: fewer, shorter retries than a multi-GB download: a dead cover should not hold a shard for minutes.
CRAWL_POLICY = RetryPolicy(attempts=4, backoff=1.0, max_wait=60.0)
