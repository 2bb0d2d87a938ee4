"""Airflow DAGs: Verify, generated from include/ (see vlmdata.dagfactory)."""

from vlmdata.dagfactory import verify_dags

globals().update(verify_dags())
