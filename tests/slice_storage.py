"""The slice through the library, as the tasks would run it: COCO and LLaVA-Instruct-150K
acquired from their replicas (whose settings must be in the environment: ``SliceReplica.install``),
both verified, both layouts materialised, the ``llava_instruct_150k`` mixture built. What the UI
tests look at."""

from __future__ import annotations

from vlmdata.acquire import Context, acquire
from vlmdata.catalog import load_catalog
from vlmdata.fetch.http import RetryPolicy
from vlmdata.layout import load_profiles, materialise
from vlmdata.mirrors import Mirrors
from vlmdata.mix import build, load_recipes
from vlmdata.storage import Storage
from vlmdata.verify import verify_source

SOURCES = ("coco_train2017", "llava_instruct_150k")
RECIPE = "llava_instruct_150k"


def fill(storage: Storage) -> None:
    catalog = load_catalog()
    context = Context(storage, mirrors=Mirrors.from_env(), policy=RetryPolicy(attempts=4, backoff=0.01))
    for source_id in SOURCES:
        acquire(catalog[source_id], context)
    for source_id in SOURCES:
        verify_source(catalog[source_id], storage, catalog, workers=2)
    for profile in load_profiles().values():
        materialise(profile, storage)
    build(load_recipes()[RECIPE], storage, catalog)
