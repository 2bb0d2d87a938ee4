"""Airflow DAGs: Layout, generated from include/ (see vlmdata.dagfactory)."""

from vlmdata.dagfactory import layout_dags

globals().update(layout_dags())
