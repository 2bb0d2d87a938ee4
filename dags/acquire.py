"""Airflow DAGs: Acquire, generated from include/ (see vlmdata.dagfactory)."""

from vlmdata.dagfactory import acquisition_dags

globals().update(acquisition_dags())
