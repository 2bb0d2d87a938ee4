"""The UI's vlmdata page on a large deployment: 15 sources and 9 mixtures whose whole reports
list ``records`` entries each (every broken image of a source, every dead URL of the crawl,
every dropped record of a mixture), with their summaries beside them
(:mod:`vlmdata.replicas.large`).

Ours (:func:`vlmdata.status.gather` and the page's template) reads the summaries only. The
peer is the page a person would write first: the same summary, but from the whole reports
(``json.load`` of each lock, ``broken.json`` and ``crawl.json``). Both on a local root; on S3
each read is a GET, so the gap grows with the reports' size over the bandwidth.
"""

from __future__ import annotations

import json

from .common import Context, Contender, Row, cell, pair_rows, race

NAME = "status_page"


def run(ctx: Context) -> list[Row]:
    from vlmdata import pages, status
    from vlmdata.catalog import load_catalog
    from vlmdata.crawl import report_key as crawl_report_key
    from vlmdata.layout import load_profiles
    from vlmdata.mix import latest_lock_key, load_recipes, lock_summary, parse_lock
    from vlmdata.replicas import large
    from vlmdata.storage import LocalStorage
    from vlmdata.verify import report_key

    records = 30_000 if ctx.quick else 300_000
    catalog, profiles, recipes = load_catalog(), load_profiles(), load_recipes()
    storage = LocalStorage(ctx.tmp / "root")
    ctx.log(f"  writing 15 sources and 9 mixtures whose whole reports list {records:,} entries each")
    large.fill(storage, catalog, recipes, records)
    whole_keys = [report_key(s, "broken.json") for s in catalog] + [crawl_report_key(large.CRAWLED)] + [latest_lock_key(r) for r in recipes]
    whole = sum(storage.size(key) for key in whole_keys)

    def page(summary: status.Status) -> None:
        html = pages.render("status.html", status=summary, file_url=lambda key: key, run_url=lambda run: "")
        if html.count('class="card"') != len(recipes) or html.count('<tr id="source-') != len(catalog):
            raise RuntimeError("the page does not show every source and mixture")

    def ours():
        page(status.gather(storage, catalog, profiles, recipes))

    def whole_reports():
        summary = status.gather(storage, catalog, profiles, recipes)
        for source in summary.sources:  # every broken image, then the crawl, then every lock
            source.broken = len(json.loads(storage.read_bytes(report_key(source.id, "broken.json"))))
        json.loads(storage.read_bytes(crawl_report_key(large.CRAWLED)))
        for mixture in summary.mixtures:
            mixture.dropped = lock_summary(parse_lock(json.loads(storage.read_bytes(latest_lock_key(mixture.id)))))["dropped"]
        page(summary)

    ours_c = Contender("summaries only", ours)
    peers = [Contender("whole reports (json.load)", whole_reports)]
    race([ours_c, *peers], ctx.rounds, ctx.log)

    def notes(_peer: Contender) -> str:
        return (f"15 sources and 9 mixtures, {records:,} entries in each whole report ({whole / 1e6:.0f} MB of them): "
                f"ours reads none of them, so its time does not grow with the reports")

    return pair_rows(
        "the vlmdata page (status.gather + template), 15 sources, 9 mixtures", ours_c, peers,
        lambda c: cell(c.time, f"{1 / c.time:,.1f} pages/s" if c.time else "-"),
        lambda c: cell(c.time, f"{whole / c.time / 1e6:,.0f} MB/s of reports" if c.time else "-"),
        notes, lambda c: {"records": records, "whole_report_bytes": whole},
    )

