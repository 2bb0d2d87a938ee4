# The vlmdata image: Airflow's official image with the locked dependencies, the vlmdata package
# (installed, not editable), the DAG files and include/ (catalog, layouts, recipes).
# docker-compose.yaml builds it; the same image runs under the official Helm chart
# (docs/deployment.md).
FROM apache/airflow:3.3.2-python3.11

# A folder the airflow user owns (one that COPY creates may belong to root): pip builds the
# package inside it, and it is removed once installed.
RUN mkdir -p /tmp/vlmdata/src/plugins

# The lock first, so a change to the package alone does not re-install every dependency.
# Naming apache-airflow at the image's version (as Airflow's docs advise) makes pip fail
# loudly instead of replacing the image's Airflow if the lock and the base tag ever disagree.
# The providers docker-compose.yaml relies on (the Celery executor, PostgreSQL, Redis, the FAB
# auth manager) are named too: the image has them, and pip keeps its versions unless the
# lock's pins need others.
COPY --chown=airflow:0 requirements.lock /tmp/vlmdata/requirements.lock
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/vlmdata/requirements.lock \
        apache-airflow-providers-celery apache-airflow-providers-postgres \
        apache-airflow-providers-redis apache-airflow-providers-fab

# The package, installed as a regular (non-editable) distribution: nothing points back at the
# build context.
# include/ (catalog, layouts, recipes) goes into the package: plugins/vlmdata/include links to it.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/vlmdata/src/
COPY --chown=airflow:0 plugins/ /tmp/vlmdata/src/plugins/
COPY --chown=airflow:0 include/ /tmp/vlmdata/src/include/
RUN pip install --no-cache-dir --no-deps /tmp/vlmdata/src && rm -rf /tmp/vlmdata

# DAG files where Airflow looks for them.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/

# Download staging: docker-compose.yaml puts a volume of each worker here. Group 0 may write,
# so the container runs under any AIRFLOW_UID (the official image's convention).
ENV VLMDATA_STAGING=/opt/airflow/staging
RUN mkdir -p /opt/airflow/staging && chmod g+rwx /opt/airflow/staging
