"""``python -m bench [--quick] [--only NAME[,NAME]] [--rounds N]``: run the comparisons, print
the table, write ``bench/results/latest.json`` and ``latest.md``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import MODULES, REPO_ROOT
from .common import Context, Row, tool_version

RESULTS = Path(__file__).resolve().parent / "results"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "curl": tool_version("curl"),
        "sha256sum": tool_version("sha256sum"),
        "openssl": tool_version("openssl", "version"),
        "unzip": tool_version("unzip", "-v"),
        "jpeginfo": tool_version("jpeginfo", "--version"),
        "aria2c": tool_version("aria2c"),
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("vlmdata", "requests", "Pillow", "huggingface_hub"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def _code_version() -> str | None:
    """The commit the measured code is at (``+local changes`` when the package differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "plugins"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + (" +local changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    head = ("comparison", "ours", "peer", "ours/peer", "notes")
    body = [(r.name, r.ours, r.peer, _ratio(r.ratio), r.notes) for r in rows]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(4)]
    out = []
    for number, line in enumerate([head, *body]):
        out.append("  ".join(str(v).ljust(w) for v, w in zip(line[:4], widths)) + "  " + line[4])
        if number == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(out)


def markdown(rows: list[Row], meta: dict) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [
        f"# vlmdata bench ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"{meta['date']}, code at {meta['code'] or 'unknown commit'}, {meta['cpus']} CPUs, {meta['platform']}, {meta['rounds']} rounds per contender (the best round shown; every round in latest.json), "
        f"{meta['duration_s']:.0f} s in all; 1-minute load average {meta['load_average_1min']['start']} at the start, "
        f"{meta['load_average_1min']['end']} at the end.",
        "",
        *([f"**Warning**: {meta['warning']}.", ""] if meta["warning"] else []),
        "`ours/peer` is ours' wall-clock time divided by the peer's for the same work: **below 1 ours is faster**, "
        "above 1 ours is slower. Throughputs are in decimal MB/s. See `bench/README.md`.",
        "",
        "| comparison | ours | peer | ours/peer | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {esc(r.name)} | {esc(r.ours)} | {esc(r.peer)} | {_ratio(r.ratio)} | {esc(r.notes)} |" for r in rows]
    lines += ["", "Tools: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in meta["versions"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (the whole run well within 3 minutes on 2 cores)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help=f"run only these comparisons (repeat or comma-separate): {', '.join(MODULES)}")
    parser.add_argument("--rounds", type=int, default=None, help="runs per contender (default 2 with --quick, 3 otherwise; full-size extraction uses at most 2)")
    parser.add_argument("--mixture-records", type=int, default=None, metavar="N", help="records of the synthetic annotation the mixture comparison builds (the scale run: 1250000)")
    parser.add_argument("--segmented-mib", type=int, default=None, metavar="N", help="size of the file the segmented comparison downloads (default 512, 128 with --quick)")
    parser.add_argument("--tmpdir", default=None, help="where generated data goes (default: the system temp folder); removed afterwards")
    args = parser.parse_args(argv)

    chosen = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in chosen if n not in MODULES]
    if unknown:
        parser.error(f"unknown comparison(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    rounds = args.rounds or (2 if args.quick else 3)
    os.chdir(REPO_ROOT)  # subprocesses run `python -m bench.*` from here

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    rows: list[Row] = []
    durations: dict[str, float] = {}
    failed = False
    base = Path(tempfile.mkdtemp(prefix="vlmdata-bench-", dir=args.tmpdir))
    try:
        for name in chosen:
            _log(f"{name}: starting")
            t0 = time.monotonic()
            tmp = base / name
            tmp.mkdir()
            try:
                module = importlib.import_module(f"bench.{name}")
                rows += module.run(Context(quick=args.quick, rounds=rounds, tmp=tmp, log=_log, mixture_records=args.mixture_records,
                                           segmented_mib=args.segmented_mib))
            except Exception as exc:  # noqa: BLE001 - one broken comparison must not hide the others
                failed = True
                traceback.print_exc()
                rows.append(Row(name, "error", "-", None, f"FAILED: {type(exc).__name__}: {exc}"[:300]))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            durations[name] = round(time.monotonic() - t0, 1)
            _log(f"{name}: done in {durations[name]:.0f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "only": chosen if args.only else None,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "code": _code_version(),
        "versions": _versions(),
        "durations_s": durations,
        "duration_s": round(time.monotonic() - started, 1),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
    }
    busy = max(meta["load_average_1min"].values()) > (os.cpu_count() or 1)
    meta["warning"] = (
        f"the machine was busy (1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} CPUs): absolute numbers are low and noisy; ratios hold better" if busy else None
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1) + "\n")
    (RESULTS / "latest.md").write_text(markdown(rows, meta))
    print(table(rows))
    if meta["warning"]:
        print(f"\nWarning: {meta['warning']}.")
    print(f"\n{meta['duration_s']:.0f} s; ours/peer < 1: ours faster. Written: bench/results/latest.json, latest.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
