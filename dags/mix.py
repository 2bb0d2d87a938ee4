"""Airflow DAGs: Mix, generated from include/ (see vlmdata.dagfactory)."""

from vlmdata.dagfactory import mixture_dags

globals().update(mixture_dags())
