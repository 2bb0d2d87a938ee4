"""``vlmdata``: the pipeline's steps without Airflow.

examples:
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
import re
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, acquire, redaction, settings, status
from .catalog import CatalogError, load_catalog
from .layout import load_profiles, materialise
from .mix import FORMATS, Lock, build, load_recipes, lock_of, parse_lock, read_lock, rebuild
from .pools import pools
from .verify import MODES, verify_source


def cmd_sources(args, catalog) -> int:
    rows = [(s.id, s.kind, s.size_text(), s.licence.name + (" [ack]" if s.licence.acknowledge else "")) for s in catalog.values()]
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
        lock = rebuild(_read_lock(args.from_lock, storage), storage, catalog, force=args.force)
    elif args.recipe:
        lock = build(_lookup(load_recipes(), args.recipe), storage, catalog, seed=args.seed, fmt=args.format, force=args.force)
    else:
        raise SystemExit("vlmdata mix: name a recipe or give --from-lock")
    written = lock.to_json()
    print(json.dumps({"output": written["output"], "lock": lock_of(lock.output.key), "image_folder": lock.image_folder, "counts": written["counts"]}, indent=1))
    return 0


def _read_lock(where: str, storage) -> Lock:
    """A lock from a local file, else from the storage (a key such as mixtures/<recipe>/lock.json)."""
    if os.path.isfile(where):
        with open(where, "rb") as handle:
            return parse_lock(handle.read(), where)
    if not storage.exists(where):
        raise SystemExit(f"vlmdata mix: no lock {where!r}: neither a file nor a key on {storage.url}")
    return read_lock(storage, where)


def cmd_status(args, catalog) -> int:
    profiles, recipes = load_profiles(), load_recipes()
    runs = None
    if args.runs:  # Airflow's metadata database, as the page reads it
        from .ui.app import dag_runs

        runs = dag_runs(status.dag_ids(catalog, profiles, recipes))
    summary = status.gather(settings.from_env(args.root).storage(), catalog, profiles, recipes, runs)
    print(json.dumps(dataclasses.asdict(summary), indent=1) if args.json else status.as_text(summary))
    return 0


def _lookup(table: dict, key: str):
    if key not in table:
        raise SystemExit(f"vlmdata: unknown name {key!r}; known: {', '.join(sorted(table))}")
    return table[key]


# reStructuredText's inline markup (:role:`x`, ``x``, `x`, **x**), which docstrings use and a
# terminal shows as noise: the text inside is kept.
_MARKUP = re.compile(r"(?::[a-z]+:)?``?([^`]+)``?|\*\*([^*]+)\*\*")


def plain(text: str) -> str:
    return _MARKUP.sub(lambda m: m.group(1) or m.group(2), text)


class PlainHelp(argparse.RawDescriptionHelpFormatter):
    """Help without reStructuredText markup; the description and epilog keep their lines."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))

    def _expand_help(self, action) -> str:
        return plain(super()._expand_help(action))


def parser() -> argparse.ArgumentParser:
    description, examples = __doc__.split("\n\n", 1)
    top = argparse.ArgumentParser(prog="vlmdata", description=description, epilog=examples, formatter_class=PlainHelp)
    top.add_argument("--version", action="version", version=__version__)
    top.add_argument("--root", help="storage root: a folder or s3://bucket/prefix (default: $VLMDATA_ROOT or ./data)")
    top.add_argument("--catalog", help="extra catalog folder(s), ':'-separated (default: $VLMDATA_CATALOG)")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=PlainHelp)

    command("sources", "list the sources: id, kind, size, licence").set_defaults(func=cmd_sources)
    p = command("acquire", "fetch, verify and place a source's artifacts")
    p.add_argument("source")
    p.add_argument("--dry-run", action="store_true", help="only say what would be fetched and how big it is; never a download (without upstream: from the catalog's declared sizes, and it says so)")
    p.add_argument("--acknowledge-licence", action="store_true", help="accept a licence that requires it")
    p.add_argument("--artifact", action="append", help="only this artifact (repeatable)")
    p.add_argument("--include-optional", action="store_true", help="also the artifacts the catalog marks optional")
    p.add_argument("--revision", help="Hub branch, tag or commit (overrides the catalog)")
    p.add_argument("--refetch-quarantined", action="store_true", help="fetch again the files verify moved to the quarantine")
    p.add_argument("--needed-by", action="append", metavar="TREE_PATH", help="only what this annotation file (a data-tree path, or recipe:ID for a recipe's files) references and the storage lacks: SA-1B's tars "
                   "holding its images instead of the range; from a zip over HTTP, its members alone by Range requests (repeatable)")
    p.set_defaults(func=cmd_acquire)
    command("pools", "the Airflow pools the DAGs use, as JSON for 'airflow pools import'").set_defaults(func=cmd_pools)
    p = command("verify", "integrity report of an acquired source")
    p.add_argument("source")
    p.add_argument("--workers", type=int, help="processes that decode images (default: one per core this process may use)")
    p.add_argument("--mode", choices=list(MODES), default="changed", help="which images to read: " + "; ".join(f"{name}: {what}" for name, what in MODES.items()) + " (default: changed)")
    p.set_defaults(func=cmd_verify)
    p = command("layout", "materialise a layout profile")
    p.add_argument("profile")
    p.set_defaults(func=cmd_layout)
    p = command("mix", "build a recipe's training file and lock")
    p.add_argument("recipe", nargs="?", help="a recipe id from include/recipes")
    p.add_argument("--from-lock", metavar="LOCK_JSON", help="rebuild exactly what a lock describes (its inputs must be unchanged): a local file, or a key on the storage such as mixtures/<recipe>/<recipe>.json.lock.json")
    p.add_argument("--seed", type=int, help="sampling seed (default: the recipe's); another seed writes <recipe>.seed<N>.<format> beside the default output")
    p.add_argument("--format", choices=FORMATS, help="the training file's format (default: the recipe's): json, jsonl, or an export as webdataset or parquet shards")
    p.add_argument("--force", action="store_true", help="build even when nothing changed since the last build of that output (which otherwise returns its lock and writes nothing)")
    p.set_defaults(func=cmd_mix)
    p = command("status", "what is on the storage: sources, layouts, mixtures (the UI's vlmdata page)")
    p.add_argument("--json", action="store_true", help="the summary as JSON (what the page's status.json serves)")
    p.add_argument("--runs", action="store_true", help="also each DAG's last run and next refresh, from Airflow's metadata database (run it with Airflow's settings: AIRFLOW_HOME, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
    p.set_defaults(func=cmd_status)
    return top


def _run(args) -> int:
    catalog = load_catalog(args.catalog)
    if args.catalog:
        os.environ["VLMDATA_CATALOG"] = args.catalog  # so every later catalog load sees it
    return args.func(args, catalog)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install()  # no query string (a signed URL's credentials) in any log line, at any level
    try:
        with logging_redirect_tqdm():  # log lines above a progress bar, not through it
            return _run(args)
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
