"""``vlmdata``: the pipeline's steps without Airflow.

    vlmdata sources
    vlmdata acquire coco_train2017 [--dry-run] [--acknowledge-licence] [--artifact NAME ...]
    vlmdata acquire sa1b --acknowledge-licence --needed-by sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json
    vlmdata verify coco_train2017
    vlmdata layout llava15
    vlmdata mix llava_instruct_150k [--seed N] [--format jsonl]
    vlmdata pools > pools.json && airflow pools import pools.json
    vlmdata status [--json]

``--root`` (or ``VLMDATA_ROOT``) is a folder or ``s3://bucket/prefix``; ``--catalog`` (or
``VLMDATA_CATALOG``) adds a folder of private source YAML files to the built-in catalog.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from . import __version__, acquire, redaction, settings, status
from .catalog import CatalogError, load_catalog
from .layout import load_profiles, materialise
from .mix import build, load_recipes, rebuild
from .pools import pools
from .verify import MODES, verify_source


def _size(source) -> str:
    """The exact size, else "~" and the approximate one, else "?"."""
    if source.declared_size is not None:
        return f"{source.declared_size / 1024**3:.1f} GiB"
    return "?" if source.approx_size is None else f"~{source.approx_size / 1024**3:.1f} GiB"


def cmd_sources(args, catalog) -> int:
    rows = [(s.id, s.kind, _size(s), s.licence.name + (" [ack]" if s.licence.acknowledge else "")) for s in catalog.values()]
    width = [max(len(r[i]) for r in rows + [("id", "kind", "size", "licence")]) for i in range(3)]
    print(f"{'id':<{width[0]}}  {'kind':<{width[1]}}  {'size':>{width[2]}}  licence")
    for row in rows:
        print(f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]:>{width[2]}}  {row[3]}")
    return 0


def cmd_acquire(args, catalog) -> int:
    ctx = settings.from_env(args.root).context(revision=args.revision)
    result = acquire.acquire(_lookup(catalog, args.source), ctx, acknowledge=args.acknowledge_licence, dry_run=args.dry_run, only=args.artifact or None, include_optional=args.include_optional, who=f"cli ({os.environ.get('USER', 'unknown')})", refetch_quarantined=args.refetch_quarantined, needed_by=args.needed_by)
    print(json.dumps(result, indent=1))
    return 0


def cmd_pools(args, catalog) -> int:
    print(json.dumps(pools(catalog), indent=1))
    return 0


def cmd_verify(args, catalog) -> int:
    report = verify_source(_lookup(catalog, args.source), settings.from_env(args.root).storage(), catalog, workers=args.workers, mode=args.mode)
    print(report.summary())
    return 1 if report.status == "fail" else 0


def cmd_layout(args, catalog) -> int:
    report = materialise(_lookup(load_profiles(), args.profile), settings.from_env(args.root).storage())
    print(json.dumps({"views": len(report["views"]), "missing": report["missing"]}, indent=1))
    return 0


def cmd_mix(args, catalog) -> int:
    storage = settings.from_env(args.root).storage()
    if args.from_lock:
        lock = rebuild(json.loads(open(args.from_lock).read()), storage, catalog)
    elif args.recipe:
        lock = build(_lookup(load_recipes(), args.recipe), storage, catalog, seed=args.seed, fmt=args.format)
    else:
        raise SystemExit("vlmdata mix: name a recipe or give --from-lock")
    print(json.dumps({"output": lock["output"], "counts": lock["counts"]}, indent=1))
    return 0


def cmd_status(args, catalog) -> int:
    summary = status.gather(settings.from_env(args.root).storage(), catalog, load_profiles(), load_recipes())
    print(json.dumps(dataclasses.asdict(summary), indent=1) if args.json else status.as_text(summary))
    return 0


def _lookup(table: dict, key: str):
    if key not in table:
        raise SystemExit(f"vlmdata: unknown name {key!r}; known: {', '.join(sorted(table))}")
    return table[key]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vlmdata", description=__doc__.split("\n\n")[0])
    top.add_argument("--version", action="version", version=__version__)
    top.add_argument("--root", help="storage root: a folder or s3://bucket/prefix (default: $VLMDATA_ROOT or ./data)")
    top.add_argument("--catalog", help="extra catalog folder(s), ':'-separated (default: $VLMDATA_CATALOG)")
    top.add_argument("-v", "--verbose", action="store_true")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("sources", help="list the sources: id, kind, size, licence").set_defaults(func=cmd_sources)
    p = sub.add_parser("acquire", help="fetch, verify and place a source's artifacts")
    p.add_argument("source")
    p.add_argument("--dry-run", action="store_true", help="only say what would be fetched and how big it is; never a download (without upstream: from the catalog's declared sizes, and it says so)")
    p.add_argument("--acknowledge-licence", action="store_true", help="accept a licence that requires it")
    p.add_argument("--artifact", action="append", help="only this artifact (repeatable)")
    p.add_argument("--include-optional", action="store_true")
    p.add_argument("--revision", help="Hub branch, tag or commit (overrides the catalog)")
    p.add_argument("--refetch-quarantined", action="store_true", help="fetch again the files verify moved to the quarantine")
    p.add_argument("--needed-by", action="append", metavar="TREE_PATH", help="SA-1B: the tars holding the images this annotation file (a data-tree path) references and the storage lacks, instead of the range (repeatable)")
    p.set_defaults(func=cmd_acquire)
    sub.add_parser("pools", help="the Airflow pools the DAGs use, for `airflow pools import`").set_defaults(func=cmd_pools)
    p = sub.add_parser("verify", help="integrity report of an acquired source")
    p.add_argument("source")
    p.add_argument("--workers", type=int, help="processes that decode images (default: one per core this process may use)")
    p.add_argument("--mode", choices=list(MODES), default="changed", help="which images to read: " + "; ".join(f"{name}: {what}" for name, what in MODES.items()) + " (default: changed)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("layout", help="materialise a layout profile")
    p.add_argument("profile")
    p.set_defaults(func=cmd_layout)
    p = sub.add_parser("mix", help="build a recipe's training file and lock")
    p.add_argument("recipe", nargs="?")
    p.add_argument("--from-lock", metavar="LOCK_JSON", help="rebuild exactly what a lock file describes (its inputs must be unchanged)")
    p.add_argument("--seed", type=int)
    p.add_argument("--format", choices=["json", "jsonl"])
    p.set_defaults(func=cmd_mix)
    p = sub.add_parser("status", help="what is on the storage: sources, layouts, mixtures (the UI's vlmdata page)")
    p.add_argument("--json", action="store_true", help="the summary as JSON (what the page's status.json serves)")
    p.set_defaults(func=cmd_status)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install()  # no query string (a signed URL's credentials) in any log line, at any level
    try:
        catalog = load_catalog(args.catalog)
        if args.catalog:
            os.environ["VLMDATA_CATALOG"] = args.catalog  # so every later catalog load sees it
        return args.func(args, catalog)
    except (CatalogError, acquire.LicenceNotAcknowledged) as exc:
        print(f"vlmdata: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clear one-line error, the traceback with -v
        if args.verbose:
            raise
        print(redaction.redact_text(f"vlmdata: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
