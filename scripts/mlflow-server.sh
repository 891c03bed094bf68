#!/usr/bin/env bash
# Start the team MLflow tracking server: PostgreSQL backend store + proxied artifact store.
#
# Usage: scripts/mlflow-server.sh [--host H] [--port P] [--db NAME] [--artifacts DIR]
#                                 [--workers N] [--allowed-hosts LIST] [-- EXTRA MLFLOW SERVER ARGS]
#
# Environment (flags win over environment, environment over defaults):
#   UNLEARN_MLFLOW_HOST       interface to bind                     (127.0.0.1)
#   UNLEARN_MLFLOW_PORT       port                                  (5000)
#   UNLEARN_MLFLOW_ARTIFACTS  artifact destination: a directory or a URI such as s3://bucket/mlflow
#                                                                   (./mlserver-artifacts)
#   UNLEARN_MLFLOW_WORKERS    uvicorn worker processes              (2)
#   UNLEARN_PG_HOST / UNLEARN_PG_PORT / UNLEARN_PG_USER / UNLEARN_PG_DB
#                             the PostgreSQL server and database    (127.0.0.1 / 5432 / postgres / unlearn_mlflow)
#   PGPASSWORD                the database password, if the server asks for one (read by psql and libpq)
#   MLFLOW_BACKEND_STORE_URI  a complete backend store URI (e.g. postgresql+psycopg2://u:pw@db.internal:5432/mlflow);
#                             when set, the UNLEARN_PG_* variables are ignored and no local PostgreSQL is started
#                             or database created: the database must exist.
#   MLFLOW_SERVER_ALLOWED_HOSTS / MLFLOW_SERVER_CORS_ALLOWED_ORIGINS
#                             read by MLflow itself: set them when clients reach the server by a name other than
#                             localhost or a private IP (MLflow 3 refuses other Host headers by default).
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION
#                             MLflow's background job runner (GenAI scorers; unused here)   (false)
#
# The script stays in the foreground (exec's mlflow server); stop it with Ctrl-C or SIGTERM.
set -euo pipefail

host="${UNLEARN_MLFLOW_HOST:-127.0.0.1}"
port="${UNLEARN_MLFLOW_PORT:-5000}"
artifacts="${UNLEARN_MLFLOW_ARTIFACTS:-./mlserver-artifacts}"
workers="${UNLEARN_MLFLOW_WORKERS:-2}"
pg_host="${UNLEARN_PG_HOST:-127.0.0.1}"
pg_port="${UNLEARN_PG_PORT:-5432}"
pg_user="${UNLEARN_PG_USER:-postgres}"
pg_db="${UNLEARN_PG_DB:-unlearn_mlflow}"
allowed_hosts=""
extra=()

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --db) pg_db="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --allowed-hosts) allowed_hosts="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "mlflow-server.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ ! "$pg_db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
  echo "mlflow-server.sh: database name must be a plain identifier: $pg_db" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mlflow_bin="${MLFLOW_BIN:-}"
if [[ -z "$mlflow_bin" ]]; then
  if [[ -x "$repo/.venv/bin/mlflow" ]]; then mlflow_bin="$repo/.venv/bin/mlflow"; else mlflow_bin="mlflow"; fi
fi

if [[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then
  backend="$MLFLOW_BACKEND_STORE_URI"
else
  # A local PostgreSQL that is not running: start it (Debian/Ubuntu cluster tools), when we can.
  if ! pg_isready -q -h "$pg_host" -p "$pg_port" 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
      echo "mlflow-server.sh: PostgreSQL not ready on $pg_host:$pg_port, starting the local cluster" >&2
      # shellcheck disable=SC2046
      pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start || true
      for _ in $(seq 1 30); do pg_isready -q -h "$pg_host" -p "$pg_port" && break; sleep 1; done
    fi
    if ! pg_isready -q -h "$pg_host" -p "$pg_port" 2>/dev/null; then
      echo "mlflow-server.sh: PostgreSQL is not reachable on $pg_host:$pg_port" >&2
      exit 1
    fi
  fi
  psql_args=(-h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -v ON_ERROR_STOP=1 -Atq)
  if [[ -z "$(psql "${psql_args[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$pg_db'")" ]]; then
    echo "mlflow-server.sh: creating database $pg_db" >&2
    psql "${psql_args[@]}" -c "CREATE DATABASE \"$pg_db\""
  fi
  auth="$pg_user"
  # The password goes to MLflow through the URI only when one is set (trust/peer auth needs none).
  if [[ -n "${PGPASSWORD:-}" ]]; then
    auth="$pg_user:$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' \
      "$PGPASSWORD")"
  fi
  # psycopg2 explicitly: SQLAlchemy 2.1's bare postgresql:// means psycopg 3, and MLflow's server
  # job-lock manager supports only psycopg2 among the PostgreSQL drivers.
  backend="postgresql+psycopg2://$auth@$pg_host:$pg_port/$pg_db"
fi

# A plain directory becomes absolute, so the server does not depend on its working directory.
if [[ "$artifacts" != *://* ]]; then
  mkdir -p "$artifacts"
  artifacts="$(cd "$artifacts" && pwd)"
fi

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"

args=(server --backend-store-uri "$backend" --artifacts-destination "$artifacts" --serve-artifacts
      --host "$host" --port "$port" --workers "$workers")
if [[ -n "$allowed_hosts" ]]; then args+=(--allowed-hosts "$allowed_hosts"); fi

client_host="$host"
if [[ "$host" == "0.0.0.0" ]]; then client_host="127.0.0.1"; fi
echo "mlflow-server.sh: backend store $(sed -E 's#(//[^:/@]+):[^@]*@#\1:***@#' <<<"$backend")" >&2
echo "mlflow-server.sh: artifacts      $artifacts" >&2
echo "mlflow-server.sh: point the pipeline at it with:" >&2
echo "export MLFLOW_TRACKING_URI=http://$client_host:$port"
exec "$mlflow_bin" "${args[@]}" "${extra[@]}"
