"""aws_default as Airflow users fill it in, read through the Amazon provider, against a real S3
protocol server (moto): plain keys with an endpoint, and a role assumed through STS."""

from __future__ import annotations

import json
import pickle

from airflow.sdk import Connection

from vlmdata import settings

ROLE = "arn:aws:iam::123456789012:role/vlmdata-writer"


def aws_default(**extra) -> Connection:
    return Connection(conn_id="aws_default", conn_type="aws", login="AKIAEXAMPLEKEY", password="example-secret", extra=json.dumps(extra))


def in_task(root: str, connection: Connection) -> settings.Settings:
    return settings._overridden({"vlmdata_root": root}.get, {"aws_default": connection}.get)


def test_keys_and_endpoint_from_the_connection_reach_the_storage(s3_endpoint, s3_bucket):
    found = in_task(f"s3://{s3_bucket}/llava", aws_default(endpoint_url=s3_endpoint, region_name="eu-west-1"))
    assert (found.s3.endpoint_url, found.s3.region_name) == (s3_endpoint, "eu-west-1")
    storage = found.storage()
    storage.write_bytes("_vlmdata/hello.txt", b"hello")
    assert storage.read_bytes("_vlmdata/hello.txt") == b"hello"
    assert found.s3.session.get_credentials().get_frozen_credentials().access_key == "AKIAEXAMPLEKEY"


def test_a_role_in_the_connection_is_assumed_and_a_worker_process_gets_its_credentials(s3_endpoint, s3_bucket):
    connection = aws_default(endpoint_url=s3_endpoint, role_arn=ROLE, service_config={"sts": {"endpoint_url": s3_endpoint}})
    found = in_task(f"s3://{s3_bucket}/llava", connection)
    assumed = found.s3.session.get_credentials().get_frozen_credentials()
    assert assumed.access_key != "AKIAEXAMPLEKEY" and assumed.token, "the connection's own keys were used, not the role's"
    found.storage().write_bytes("k", b"v")
    # What a decode worker process is handed (a boto3 Session does not pickle): the role's
    # current credentials, enough to open the same storage.
    options = pickle.loads(pickle.dumps(found.s3))
    assert options.session is None and options.aws_access_key_id == assumed.access_key and options.aws_session_token == assumed.token
    assert options.client("s3").get_object(Bucket=s3_bucket, Key="llava/k")["Body"].read() == b"v"
