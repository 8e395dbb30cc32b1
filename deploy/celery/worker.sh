#!/usr/bin/env bash
# Start one Dagster run worker on this host: a Celery worker on the `dagster` queue that runs whole runs, one per
# pool process, each with the executor ETL_EXECUTOR names (set it to in_process: the steps of a run one after the
# other in its process; ETL_ENV=production alone would pick the multiprocess executor). Run it under a process supervisor (systemd, a
# container), one per host; docs/celery.md says what each host needs.
#
#   deploy/celery/worker.sh NAME [CONCURRENCY]
#
# NAME is this worker's Celery node name (NAME@hostname), unique in the deployment. CONCURRENCY (default 1) is how
# many runs this host executes at once: each is a process that loads the code location on its first run (seconds
# to tens of seconds; it stays loaded for the next runs) and holds a partition in memory, so size it to the host's
# cores and memory. Environment: DAGSTER_HOME (this host's own directory holding deploy/celery/dagster.yaml as
# dagster.yaml), the variables that file names, ETL_DATA_DIR (this host's scratch directory), and the code
# location's own (ETL_EXECUTOR, ETL_LAKE_URL, ETL_LANDING_URL, ETL_POSTGRES_URL, <CONNECTION>_URL, ...), as on the
# daemon's host.
set -euo pipefail

name="${1:?usage: worker.sh NAME [CONCURRENCY]}"
concurrency=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
: "${DAGSTER_HOME:?set DAGSTER_HOME to the Dagster home of this host, holding deploy/celery/dagster.yaml as dagster.yaml}"

# dagster-celery starts `celery -A dagster_celery.app worker --prefetch-multiplier=1 -n NAME@%h` with the settings
# of worker.yaml; the options after `--` go to Celery as they are. prefork: each run in its own child process, so a
# run that crashes its interpreter takes only its child down. --without-gossip/--without-mingle: workers need not
# talk to each other, and a starting worker does not wait for the others' replies.
exec dagster-celery worker start \
  --app dagster_celery.app \
  --config-yaml "$here/worker.yaml" \
  --queue dagster \
  --name "$name" \
  --loglevel INFO \
  -- \
  --concurrency "$concurrency" \
  --pool prefork \
  --without-gossip \
  --without-mingle
