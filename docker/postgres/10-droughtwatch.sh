#!/usr/bin/env bash
# The stack's databases, each owned by its own login role, and Grafana's read-only role.
# The postgres image runs this once, on an empty data directory (the postgres-data volume), as
# the superuser; passwords come from the environment (docker/.env). To change one later:
# ALTER ROLE <name> PASSWORD '...' in psql, then update docker/.env.
#   dagster       the Dagster instance (DAGSTER_PG_URL)
#   mlflow        MLflow's tracking store and model registry
#   droughtwatch  the monitoring database (DROUGHTWATCH_METRICS_DB_URL); its tables are created
#                 by droughtwatch itself on first use, as the droughtwatch role
#   grafana       may connect to droughtwatch only, and read (never write) every table that the
#                 droughtwatch role creates there, now or later (default privileges)
# droughtwatch_tests/deploy/test_docker.py runs this script against a real PostgreSQL server.
set -eo pipefail

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-postgres}" \
    -v dagster_password="${DAGSTER_DB_PASSWORD:?}" \
    -v mlflow_password="${MLFLOW_DB_PASSWORD:?}" \
    -v droughtwatch_password="${DROUGHTWATCH_DB_PASSWORD:?}" \
    -v grafana_password="${GRAFANA_DB_PASSWORD:?}" <<'EOSQL'
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE droughtwatch LOGIN PASSWORD :'droughtwatch_password';
CREATE ROLE grafana LOGIN PASSWORD :'grafana_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
ALTER ROLE grafana SET default_transaction_read_only = on;

CREATE DATABASE dagster OWNER dagster;
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE droughtwatch OWNER droughtwatch;
-- Only each database's owner (and grafana, on droughtwatch) may connect.
REVOKE ALL ON DATABASE dagster, mlflow, droughtwatch FROM PUBLIC;
GRANT CONNECT ON DATABASE droughtwatch TO grafana;

\connect droughtwatch
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO grafana;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE droughtwatch IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
EOSQL
