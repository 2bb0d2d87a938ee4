"""OpenLineage names and facets of a step's lineage (:mod:`vlmdata.lineage`)."""

from __future__ import annotations

from airflow.providers.amazon.aws.assets.s3 import convert_asset_to_openlineage as s3_dataset
from airflow.providers.common.io.assets.file import convert_asset_to_openlineage as file_dataset
from airflow.sdk import Asset
from openlineage.client.serde import Serde

from vlmdata.lineage import FACET, Data, Lineage, dataset_name, to_openlineage
from vlmdata.storage import location_uri


def test_storage_locations_are_named_as_airflow_names_the_assets(tmp_path):
    """The datasets of the events and those Airflow's provider makes of the assets' URIs are the same."""
    for uri, converter in [(location_uri(tmp_path / "root", "_vlmdata/reports/coco_train2017/integrity.json"), file_dataset),
                           (location_uri("s3://bucket/shared", "mixtures/llava_instruct_150k"), s3_dataset)]:
        airflows = converter(Asset(name="a", uri=uri), None)
        assert dataset_name(uri) == (airflows.namespace, airflows.name)
    assert dataset_name(location_uri("s3://bucket/shared", "data/coco")) == ("s3://bucket", "shared/data/coco")
    assert dataset_name(location_uri(tmp_path, "data/coco")) == ("file", f"{tmp_path.resolve()}/data/coco")


def test_an_upstream_url_is_named_without_credentials_or_query():
    assert dataset_name("https://user:secret@dl.fbaipublicfiles.com:443/segment_anything/sa_000000.tar?Policy=x&Signature=y") == ("https://dl.fbaipublicfiles.com:443", "/segment_anything/sa_000000.tar")
    assert dataset_name("http://images.cocodataset.org/zips/train2017.zip") == ("http://images.cocodataset.org", "/zips/train2017.zip")


def test_the_events_carry_versions_counts_and_statistics():
    step = Lineage(
        inputs=[Data("https://huggingface.co/datasets/x/y/resolve/abc123/a.json", version="abc123")],
        outputs=[Data("s3://bucket/root/mixtures/r/r.json", version="f00d", records=12, bytes=3400, files=1), Data("s3://bucket/root/mixtures/r/lock.json")],
        counts={"recipe": "r", "records": 12, "dropped": 3},
    )
    inputs, outputs, run_facets = to_openlineage(step)
    (source,) = [Serde.to_dict(d) for d in inputs]
    assert (source["namespace"], source["name"], source["facets"]["version"]["datasetVersion"]) == ("https://huggingface.co", "/datasets/x/y/resolve/abc123/a.json", "abc123")
    training, lock = [Serde.to_dict(d) for d in outputs]
    stats = training["outputFacets"]["outputStatistics"]
    assert (stats["rowCount"], stats["size"], stats["fileCount"]) == (12, 3400, 1)
    assert training["facets"]["version"]["datasetVersion"] == "f00d"
    assert (lock["name"], lock.get("facets", {}), lock.get("outputFacets", {})) == ("root/mixtures/r/lock.json", {}, {})
    assert Serde.to_dict(run_facets[FACET])["counts"] == {"recipe": "r", "records": 12, "dropped": 3}
    assert to_openlineage(Lineage()) == ([], [], {})
