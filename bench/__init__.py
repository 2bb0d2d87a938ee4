"""Side-by-side benchmarks of vlmdata's steps against the tools a person would use by hand.

Run ``python -m bench`` from the repository root (``make bench``); see ``bench/README.md``.
Every comparison runs ours and its peers in the same process run, on the same generated
data, interleaved round by round, and reports the ratio of ours to each peer. Test data and
the in-memory HTTP server come from ``vlmdata.replicas`` (what the tests use).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

MODULES = ("download", "segmented", "hashing", "extraction", "images", "mixture", "tar_index", "partial_zip", "rerun", "status_page", "startup", "executors")
