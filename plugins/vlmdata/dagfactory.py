"""DAGs generated from the catalog, the layout profiles and the recipes.

Assets chain them: ``acquire_<source>`` emits ``vlmdata.acquired.<source>``; ``verify_<source>``
runs on it (and again when a source its annotations point into is verified) and emits
``vlmdata.verified.<source>``; each ``layout_<profile>`` runs when any source is verified;
``mix_<recipe>`` runs once every source it reads is verified.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, AssetAlias, AssetAll, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule

from .budgets import CRAWL_SHARD_IMAGES, CRAWL_THREADS, MAX_RETRY_DELAY, RETRY_BACKOFF, RETRY_DELAY, TASK_RETRIES, timeout_of
from .catalog import Source, load_catalog
from .fetch.policy import DRY_RUN_POLICY
from .kinds import kind_named, offers_needed_by
from .layout import Profile, load_profiles
from .manifest import source_prefix
from .mix import FORMATS, Recipe, load_recipes, mixture_prefix
from .pools import DECODE_POOL, crawl_pool, fetch_pool, mirror_pool
from .settings import root_from_env
from .storage import location_uri
from .verify import CHUNK_BYTES, CHUNK_IMAGES, MODES, report_key
from .operators import (
    BuildMixtureOperator,
    CheckImageChunkOperator,
    CrawlShardOperator,
    FillFromMirrorsOperator,
    FinishCrawlOperator,
    MaterialiseLayoutOperator,
    PlanAcquisitionOperator,
    PlanCrawlOperator,
    PlanVerifyOperator,
    PublishSourceOperator,
    ReportVerifyOperator,
    fetch_operator_for,
)

REVERIFY = "0 3 * * 0"  # Sundays 03:00 UTC
DEFAULT_ARGS = {"owner": "vlmdata", "retries": TASK_RETRIES, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": RETRY_BACKOFF, "max_retry_delay": MAX_RETRY_DELAY}


def with_timeouts(dag: DAG) -> DAG:
    """Every task gets the execution_timeout of its kind (vlmdata.budgets; a task id it does not
    know fails the DAG's import, so no task goes without one)."""
    for task in dag.tasks:
        task.execution_timeout = timeout_of(task.task_id)
    return dag


def refresh_timetable(cron: str) -> CronTriggerTimetable:
    """A cron schedule that never fires on unpause, only at its next tick.

    ``run_immediately=False`` does not do that in Airflow 3.3: without a start date, a DAG first
    seen (or unpaused) within 10% of its period after a tick still gets that tick's run (the first
    ~3 days of a month for ``@monthly``), and a manual dry run then queues behind a full download.
    A zero buffer keeps only a tick that is exactly now."""
    return CronTriggerTimetable(cron, timezone="UTC", run_immediately=timedelta(0))


def on_storage(key: str) -> str:
    """The URI of a storage key, for an asset to name the data it stands for (``file://`` or
    ``s3://``, so lineage tools can follow it).

    The root is the environment's (``VLMDATA_ROOT``) as the DAG processor sees it, not the
    ``vlmdata_root`` Variable: an asset is its name and URI on both sides of a schedule, and a
    Variable moved while runs are under way would rename the assets of one DAG file before
    another's next parse, losing the asset-triggered runs in between."""
    return location_uri(root_from_env(), key)


def acquired(source_id: str) -> Asset:
    """The source's record on the storage (the manifest naming every file it placed: sources
    share folders of the data tree, so no folder is one source's own)."""
    return Asset(f"vlmdata.acquired.{source_id}", uri=on_storage(source_prefix(source_id)), group="vlmdata")


def acquired_if_changed(source_id: str) -> AssetAlias:
    """The outlet of a task that emits ``acquired(source_id)`` only when the run changed something."""
    return AssetAlias(f"vlmdata.acquired.{source_id}.if_changed", group="vlmdata")


def verified(source_id: str) -> Asset:
    """The source's integrity report."""
    return Asset(f"vlmdata.verified.{source_id}", uri=on_storage(report_key(source_id)), group="vlmdata")


def laid_out(profile: Profile) -> Asset:
    """The profile's view: the tree a training script is pointed at."""
    return Asset(f"vlmdata.layout.{profile.id}", uri=on_storage(profile.root), group="vlmdata")


def mixture(recipe_id: str) -> Asset:
    """The mixture's folder: the training file, its lock and its chart."""
    return Asset(f"vlmdata.mixture.{recipe_id}", uri=on_storage(mixture_prefix(recipe_id)), group="vlmdata")


def optional(default, kind: str, title: str, description: str, **schema) -> Param:
    """A Param the Trigger form does not mark required: Airflow 3.3's form marks required every
    param whose JSON schema type excludes null. The operators read null as the default."""
    return Param(default, type=["null", kind], title=title, description=description, **schema)


def from_param(params: dict[str, Param], name: str) -> str:
    """An operator argument templated from the DAG's param (a ``template_fields`` entry, so the
    task's Rendered Template view shows what the run was given). The DAG renders templates as
    native objects (booleans, lists, numbers); text goes through ``tojson`` so that a revision
    such as ``1.10`` stays text instead of being read as a number, and empty text stays ``''``."""
    if isinstance(params[name].value, str):
        return f"{{{{ (params.{name} or '') | tojson }}}}"
    return f"{{{{ params.{name} }}}}"


def artifacts_param(source: Source) -> Param:
    """A multi-select of the catalog's artifacts (the form lists ``examples``; ``items.enum``
    rejects any other name); a free list where upstream lists them at plan time (a folder, a
    links file), as the catalog names none."""
    names = [a.name for a in source.artifacts]
    if not names:
        return optional([], "array", "Artifacts", "Fetch only these artifacts, named as upstream lists them, one a line (empty: all).", items={"type": "string"})
    return optional(
        [], "array", "Artifacts", "Fetch only these artifacts (none chosen: every artifact that is not optional).",
        items={"type": "string", "enum": names}, examples=names, uniqueItems=True,
        values_display={a.name: f"{a.name} (optional)" for a in source.artifacts if a.optional},
    )


def acquisition_dag(source: Source) -> DAG:
    params = {}
    if source.licence.acknowledge:  # first in the form: no download starts without it
        params["acknowledge_licence"] = optional(
            False, "boolean", "Accept the licence", f"I accept: {source.licence.name}. {source.licence.notice or ''}".strip(),
        )
    params |= {
        "dry_run": optional(False, "boolean", "Dry run", "Only say what would be fetched and how big it is (in the plan task's log); never a download. "
                         "Without upstream (a host name that does not resolve, refused connections, timeouts) it answers in seconds from the catalog's "
                         "declared sizes and what is on the storage, and says so."),
        "artifacts": artifacts_param(source),
        "include_optional": optional(False, "boolean", "Include optional artifacts", "Also fetch artifacts marked optional in the catalog."),
        "refetch_quarantined": optional(False, "boolean", "Refetch quarantined files", "Fetch again the files verify moved to the quarantine (their copies stay there)."),
    }
    kind = kind_named(source.kind)
    if kind.revision:
        params["revision"] = optional(getattr(getattr(source, kind.section), kind.revision), "string", "Revision", "Branch, tag or 40-hex commit of the Hub repository (empty: the catalog's pin).")
    if kind.needed_by:
        params["needed_by"] = optional(
            [], "array", "Tars needed by annotation files", items={"type": "string"},
            description="Instead of the catalog's range: the tars holding the SAM images that these annotation files reference and the storage lacks "
            "(paths in the data tree, e.g. sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json, or recipe:<id> for a recipe's files). Tars not fetched before are indexed by reading "
            f"their member headers with Range requests (once; kept on the storage). The account: _vlmdata/reports/{source.id}/needed_tars.json. "
            "With dry_run: only that account.",
        )
    elif offers_needed_by(source):
        params["needed_by"] = optional(
            [], "array", "Only the images needed by annotation files", items={"type": "string"},
            description="Instead of whole archives: from each zip, only the members these annotation files reference and the storage lacks, read by "
            "HTTP Range requests (data-tree paths, e.g. llava/llava_v1_5_mix665k.json, or recipe:<id> for a recipe's files). The manifest records the "
            "archive as read in part (each member's CRC-32 and size checked instead of the archive's sha256); a later run without needed_by fetches "
            "the rest. A server that ignores Range: the whole archive, said in the log and the summary (whole_instead). Empty: every archive whole.",
        )
    doc = f"""### Acquire {source.title}

{source.description}

* kind: `{source.kind}`; declared size: {source.size_text(about='about ', unknown='unknown')}; licence: {source.licence.name}{' (acknowledgement required)' if source.licence.acknowledge else ''}
* artifacts: {', '.join(f'`{a.name}`' for a in source.artifacts)}
* tasks: `plan` probes upstream, compares with the manifest (nothing changed: the rest skips and no asset event is sent)
  and pins what it resolved (commit, size, checksums, ETag...); `fetch` (one per changed artifact, named after it) downloads,
  verifies and places exactly that version, and fails without retrying if upstream moved since the plan (trigger again to plan anew);
  {_after_fetch_doc(source)}
* `dry_run`: `plan` logs what would be fetched, how big it is and what is current, and the rest skips. It probes upstream
  briefly ({DRY_RUN_POLICY.attempts} attempts, at most {DRY_RUN_POLICY.max_wait:.0f} s apart); if upstream cannot be reached it still succeeds, answering from the catalog's
  declared sizes (exact, approximate or unknown) and the artifacts placed on the storage, in a log line starting
  `DRY RUN WITHOUT UPSTREAM` that names the upstream it could not reach.
{_needed_by_doc(source) if "needed_by" in params and not kind.needed_by else ""}"""
    with DAG(
        dag_id=f"acquire_{source.id}",
        description=f"Acquire {source.title}",
        doc_md=doc,
        # Explicitly not on unpause: a refresh runs at its next tick (a licence may need a yes first).
        schedule=refresh_timetable(source.refresh) if source.refresh else None,
        catchup=False,
        # Paused until a user unpauses it: an acquisition can download terabytes.
        is_paused_upon_creation=True,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        render_template_as_native_obj=True,  # params reach the operators as booleans and lists (from_param)
        tags=["vlmdata", "acquire", source.kind],
    ) as dag:
        plan = PlanAcquisitionOperator(task_id="plan", source_id=source.id, **{name: from_param(params, name) for name in params})
        selection = {name: from_param(params, name) for name in ("artifacts", "needed_by") if name in params}
        dry_run = from_param(params, "dry_run")
        # Each fetch gets its artifact's pin (what the plan resolved); the template, rendered with
        # the mapped task's context, names it after the artifact in the UI.
        fetch = fetch_operator_for(source.kind).partial(
            task_id="fetch", source_id=source.id, pool=fetch_pool(source), max_active_tis_per_dagrun=4, map_index_template="{{ task.pin['name'] }}",
        ).expand(pin=plan.output)
        if not kind.crawl:
            PublishSourceOperator(task_id="publish", source_id=source.id, fetched=fetch.output, outlets=[acquired(source.id)], **selection)
        else:
            # The list file first; the crawl plans even when the list is unchanged, so a
            # refresh retries the images still missing.
            publish = PublishSourceOperator(task_id="publish", source_id=source.id, fetched=fetch.output, **selection)
            shards = PlanCrawlOperator(task_id="plan_crawl", source_id=source.id, shard_size=CRAWL_SHARD_IMAGES, dry_run=dry_run, trigger_rule=TriggerRule.NONE_FAILED)
            publish >> shards
            crawled = CrawlShardOperator.partial(
                task_id="crawl", source_id=source.id, workers=CRAWL_THREADS, pool=crawl_pool(source), map_index_template="shard {{ task.shard.shard }} ({{ task.shard.count }} images)",
            ).expand(shard=shards.output)
            # none_failed: with nothing to crawl, the report still says what the mirrors should fill.
            finished = FinishCrawlOperator(task_id="finish_crawl", source_id=source.id, dry_run=dry_run, trigger_rule=TriggerRule.NONE_FAILED)
            crawled >> finished
            finished >> FillFromMirrorsOperator(
                task_id="fill_from_mirrors", source_id=source.id, asset=acquired(source.id), published=publish.output,
                outlets=[acquired_if_changed(source.id)], pool=mirror_pool(source), dry_run=dry_run, trigger_rule=TriggerRule.NONE_FAILED,
            )
    return with_timeouts(dag)


def _needed_by_doc(source: Source) -> str:
    """The doc of ``needed_by`` for a source whose zips can be read in part."""
    zips = ", ".join(f"`{a.name}`" for a in source.artifacts if a.is_zip)
    return f"""* `needed_by` (annotation files as data-tree paths, or `recipe:<id>`): from {zips}, only the members they reference and the
  storage lacks, read by HTTP Range requests; the manifest records each archive as read in part (CRC-32 and size of every member
  checked instead of its sha256) and a later run without `needed_by` fetches the rest. A server that ignores Range: the whole
  archive, with a warning in the `fetch` log and `whole_instead` in the summary. See docs/partial-zip.md.
"""


def _after_fetch_doc(source: Source) -> str:
    """The doc of the tasks after `fetch`: publish, and for a crawl source the crawl and the mirrors."""
    if not kind_named(source.kind).crawl:
        return f"`publish` records the acquisition and emits `{acquired(source.id).name}`."
    mirrors = ", ".join(f"`{url}`" for url in source.crawl.fallback_mirrors) or "none in the catalog"
    return f"""`publish` records the list's acquisition;
  `plan_crawl` shards the images still missing (a refresh retries the dead ones); `crawl` (mapped over the shards)
  fetches them, GIF/PNG converted to JPEG, dead URLs and broken images recorded; `finish_crawl` writes the crawl report
  `_vlmdata/reports/{source.id}/crawl.json` and the manifest's image index; `fill_from_mirrors` fills what is still missing
  from the fallback mirror archives in order ({mirrors}): each is downloaded (resumable), applied and deleted, and skipped
  without a download when it is unchanged upstream and holds none of the missing images; a dead mirror is a warning.
  It emits `{acquired(source.id).name}` (through the alias `{acquired_if_changed(source.id).name}`) only when the run
  changed something: a new list, images crawled or filled."""


def verify_dag(source: Source) -> DAG:
    triggers = [acquired(source.id), *(verified(ref) for ref in source.references)]
    params = {
        "chunk_images": optional(CHUNK_IMAGES, "integer", "Images per chunk", "At most this many images per check_images task (empty: the default).", minimum=1),
        "chunk_gib": optional(
            CHUNK_BYTES / 1024**3, "number", "GiB per chunk",
            "At most this many GiB of images per check_images task (a larger image is a chunk of its own; empty: the default).", exclusiveMinimum=0,
        ),
        "mode": Param(
            "auto", enum=["auto", *MODES], title="Mode",
            description="Which images to read. auto: crc for the weekly run, changed for any other; " + "; ".join(f"{name}: {what}" for name, what in MODES.items()) + ". The report covers every image in every mode.",
            values_display={"auto": "auto (crc weekly, changed otherwise)", **{name: f"{name}: {what}" for name, what in MODES.items()}},
        ),
    }
    with DAG(
        dag_id=f"verify_{source.id}",
        description=f"Integrity of {source.title}",
        doc_md=f"""### Verify {source.title}

`plan_verify` re-hashes kept files against the manifest, checks every extracted member is present with its size,
and splits the images to read into chunks (params `chunk_images`, `chunk_gib`); `check_images` (mapped, one task per chunk,
in the `{DECODE_POOL}` pool) fully decodes each chunk's images with Pillow on one worker's cores; `report` gathers
the chunks, carries over the results of the images not read, quarantines what does not decode, validates annotation files as LLaVA conversations and resolves every
image they reference. Report: `_vlmdata/reports/{source.id}/integrity.json` on the storage.
Runs after `acquire_{source.id}`{' and whenever ' + ', '.join(source.references) + ' is verified' if source.references else ''},
and every Sunday to catch bit rot. Thresholds of the catalog's `integrity:` decide failure or warning.

Param `mode` (which images are read; the report covers every image in every mode, the ones not read with the
results `_vlmdata/reports/{source.id}/verified.msgpack` recorded, by size and stamp: mtime and inode, or ETag):
`auto` (the default) is `crc` for the weekly run and `changed` for a run an asset or a person triggered;
`changed` decodes only images new or changed since the last verification; `crc` reads every image and decodes
the new or changed ones and those whose CRC-32 differs from the recorded one (bit rot: a warning names them); `full`
decodes every image. Decoded bytes that differ from their archive member's CRC-32 count as broken.
""",
        # The assets, and a weekly re-check that catches bit rot on the storage.
        schedule=AssetOrTimeSchedule(timetable=refresh_timetable(REVERIFY), assets=AssetAny(*triggers)),
        catchup=False,
        is_paused_upon_creation=False,  # runs when its inputs change: nothing to download
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        render_template_as_native_obj=True,  # the chunk bounds reach the operator as numbers (from_param)
        tags=["vlmdata", "verify"],
    ) as dag:
        plan = PlanVerifyOperator(
            task_id="plan_verify", source_id=source.id, chunk_images=from_param(params, "chunk_images"), chunk_gib=from_param(params, "chunk_gib"), mode=from_param(params, "mode"),
        )
        checked = CheckImageChunkOperator.partial(task_id="check_images", pool=DECODE_POOL, map_index_template="{{ task.chunk.label }}").expand(chunk=plan.output)
        # A source without images has no chunk (check_images skips); one that is not acquired
        # yet skips plan_verify, and then the report skips too.
        report = ReportVerifyOperator(task_id="report", source_id=source.id, outlets=[verified(source.id)], trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        plan >> report
        checked >> report
    return with_timeouts(dag)


def layout_dag(profile: Profile, catalog: dict[str, Source]) -> DAG:
    with DAG(
        dag_id=f"layout_{profile.id}",
        description=profile.title,
        doc_md=f"### Layout: {profile.title}\n\n{profile.description}\n\nView root: `{profile.root}`. Report: `_vlmdata/layouts/{profile.id}.json`. Runs whenever a source is verified.",
        schedule=AssetAny(*(verified(sid) for sid in sorted(catalog))),
        catchup=False,
        is_paused_upon_creation=False,  # runs when its inputs change: nothing to download
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["vlmdata", "layout"],
    ) as dag:
        MaterialiseLayoutOperator(task_id="materialise", profile_id=profile.id, outlets=[laid_out(profile)])
    return with_timeouts(dag)


def mixture_inputs(recipe: Recipe) -> list[str]:
    """The sources whose annotation files a recipe reads.

    Not the sources of the images they reference: those are alternatives at times (two SAM
    sources) and would block the recipe forever. ``verify_<source>`` re-runs when a source it
    references is verified, so the mixture is rebuilt when its images change.
    """
    return sorted({component.source for component in recipe.components})


def mixture_params(seed: int, fmt: str) -> dict[str, Param]:
    return {
        "seed": optional(seed, "integer", "Seed", "Seed of the sampling of components that take a count or a fraction (empty: the recipe's)."),
        "format": Param(fmt, enum=list(FORMATS), title="Format", description="json: one list (what LLaVA's loader reads); jsonl: one record a line; "
                        "webdataset: tar shards, each record's JSON and image; parquet: Parquet files with the image bytes (Hugging Face Image feature). "
                        "Shards hold at most the recipe's shard_bytes."),
    }


def build_args(params: dict[str, Param]) -> dict[str, str]:
    """The mixture's build arguments, templated from its form."""
    return {"seed": from_param(params, "seed"), "fmt": from_param(params, "format")}


def mixture_dag(recipe: Recipe) -> DAG:
    sources = mixture_inputs(recipe)
    params = mixture_params(recipe.seed, recipe.format)
    with DAG(
        dag_id=f"mix_{recipe.id}",
        description=recipe.title,
        doc_md=f"""### Mixture: {recipe.title}

{recipe.description}

Components: {', '.join(f'`{c.label}` ({c.take})' for c in recipe.components)}. Output: `mixtures/{recipe.id}/` on the storage
(the training file and its lock, `<output>.lock.json`, copied to `lock.json`). Runs once {', '.join(sources)} {'is' if len(sources) == 1 else 'are'} verified, or from the UI with a seed and format.
""",
        schedule=AssetAll(*(verified(s) for s in sources)) if len(sources) > 1 else [verified(sources[0])],
        catchup=False,
        is_paused_upon_creation=False,  # runs when its inputs change: nothing to download
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        render_template_as_native_obj=True,  # the seed reaches the operator as a number (from_param)
        tags=["vlmdata", "mixture"],
    ) as dag:
        BuildMixtureOperator(task_id="build", recipe_id=recipe.id, outlets=[mixture(recipe.id)], **build_args(params))
    return with_timeouts(dag)


def any_mixture_dag(recipes: dict[str, Recipe]) -> DAG:
    """One form for every recipe: pick it, a seed and a format in the Trigger dialog."""
    ids = sorted(recipes)
    params = {
        "recipe": Param(ids[0], enum=ids, title="Recipe", description="Which recipe of include/recipes/ to build.", values_display={i: f"{i}: {recipes[i].title}" for i in ids}),
        **mixture_params(0, "json"),
    }
    with DAG(
        dag_id="mix",
        description="Build any recipe with a chosen seed and format",
        doc_md="### Build a mixture\n\nTrigger with a recipe from `include/recipes/`, a seed (sampling of components that take a count or a fraction) and a format. "
        "Output: `mixtures/<recipe>/` with the training file (`<recipe>.<format>`, `<recipe>.seed<N>.<format>` for a seed other than the recipe's), its lock `<output>.lock.json` (copied to `lock.json`) and `composition.svg`. The per-recipe `mix_<recipe>` DAGs rebuild on their own when their sources are verified.",
        schedule=None,
        is_paused_upon_creation=False,  # only triggered: paused, a user's trigger would wait unseen
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        render_template_as_native_obj=True,  # the seed reaches the operator as a number (from_param)
        tags=["vlmdata", "mixture"],
    ) as dag:
        BuildMixtureOperator(task_id="build", recipe_id=from_param(params, "recipe"), **build_args(params))
    return with_timeouts(dag)


def acquisition_dags() -> dict[str, DAG]:
    """One per source of the catalog."""
    return {f"acquire_{s.id}": acquisition_dag(s) for s in load_catalog().values()}


def verify_dags() -> dict[str, DAG]:
    return {f"verify_{s.id}": verify_dag(s) for s in load_catalog().values()}


def layout_dags() -> dict[str, DAG]:
    catalog = load_catalog()
    return {f"layout_{p.id}": layout_dag(p, catalog) for p in load_profiles().values()}


def mixture_dags() -> dict[str, DAG]:
    recipes = load_recipes()
    return {"mix": any_mixture_dag(recipes), **{f"mix_{r.id}": mixture_dag(r) for r in recipes.values()}}
