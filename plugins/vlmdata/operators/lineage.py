"""OpenLineage events from the operators, through Airflow's OpenLineage provider.

The provider calls ``get_openlineage_facets_on_complete`` when a task succeeds (in a process
forked from the task's; ``..._on_failure`` when it fails) and sends what it returns with the
run's own facets. An operator that mixes :class:`EmitsLineage` in says what it read and wrote
by its ``read_lineage(storage)``, read back from the storage by :mod:`vlmdata.lineage`. Without
the provider, or with it unconfigured (no transport: it disables itself), nothing calls them.
"""

from __future__ import annotations

from .. import lineage, settings
from ..storage import Storage


class EmitsLineage:
    def read_lineage(self, storage: Storage) -> lineage.Lineage:
        raise NotImplementedError

    def get_openlineage_facets_on_complete(self, task_instance):
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs, outputs, run_facets = lineage.to_openlineage(self.read_lineage(settings.from_airflow().storage()))
        return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)

    def get_openlineage_facets_on_failure(self, task_instance):
        """A failed step names nothing: the storage then holds the previous version's records
        (a fetch that found upstream moved), which are not what this run read or wrote."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage()
