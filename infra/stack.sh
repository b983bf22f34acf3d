#!/usr/bin/env bash
# A local stack on loopback for running tasks on a schedule:
#
#   infra/stack.sh start [--postgres] [--no-ui]  Prefect server with its UI (SQLite, or
#                                              PostgreSQL made here with initdb/pg_ctl) and the
#                                              moto server
#   infra/stack.sh serve TASK_DIR [OPTIONS]    `koiitasks deploy TASK_DIR OPTIONS` in the
#                                              background (serves the task's rounds)
#   infra/stack.sh worker POOL                 `prefect worker start --pool POOL` in the
#                                              background (for `koiitasks deploy --work-pool`)
#   infra/stack.sh stop                        stop everything started here, newest first
#   infra/stack.sh status                      what runs; exit 0 if the server runs, 3 if not
#
# Then: export PREFECT_API_URL=http://127.0.0.1:4200/api (start prints it) and open
# http://127.0.0.1:4200 for the UI.
#
# Settings (environment):
#   PREFECT_PORT      Prefect server port                        (4200)
#   PG_PORT           PostgreSQL port, with --postgres           (5433)
#   KOII_INFRA_DIR    state dir: pid files, logs, PREFECT_HOME   (<repo>/.koiitasks/infra)
#   KOII_PYTHON       interpreter with koiitasks installed       (<repo>/.venv/bin/python, else python3)
#   STOP_TIMEOUT      whole seconds between SIGTERM and SIGKILL  (20)
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"  # repo, state_dir, python
host=127.0.0.1
port="${PREFECT_PORT:-4200}"
pg_port="${PG_PORT:-5433}"
stop_timeout="${STOP_TIMEOUT:-20}"
api_url="http://$host:$port/api"

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Settings every Prefect process here gets: no telemetry, concurrency leases kept on disk so a
# server restart does not cancel long rounds (the default keeps them in memory).
prefect_env() {
    export PREFECT_HOME="$state_dir/prefect"
    export DO_NOT_TRACK=1
    export PREFECT_SERVER_ANALYTICS_ENABLED=false
    export PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem
    if [[ -f "$state_dir/database-url" ]]; then
        PREFECT_SERVER_DATABASE_CONNECTION_URL="$(<"$state_dir/database-url")"
        export PREFECT_SERVER_DATABASE_CONNECTION_URL
    fi
}

# The pid in NAME.pid if that process is alive and its command line contains PATTERN.
running_pid() {
    local name="$1" pattern="$2" pid args
    [[ -f "$state_dir/$name.pid" ]] || return 1
    pid="$(<"$state_dir/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
    [[ "$args" == *"$pattern"* ]] || return 1
    echo "$pid"
}

# Start a command in a session of its own, in the background, with a pid file and a log.
launch() {
    local name="$1"
    shift
    mkdir -p "$state_dir"
    setsid nohup "$@" >>"$state_dir/$name.log" 2>&1 </dev/null &
    echo "$!" >"$state_dir/$name.pid"
}

# Every descendant of a pid (flow-run processes live in sessions of their own).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# SIGTERM to NAME's session, then SIGKILL to whatever is left of it and its descendants.
halt() {
    local name="$1" pattern="$2" pid tree
    pid="$(running_pid "$name" "$pattern")" || { rm -f "$state_dir/$name.pid"; return 0; }
    tree="$(descendants "$pid")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((stop_timeout * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for p in $pid $tree; do
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -f "$state_dir/$name.pid"
    echo "stopped $name (pid $pid)"
}

postgres_bin() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$found" ]]; then
        echo "$found"
    elif command -v initdb >/dev/null; then
        dirname "$(command -v initdb)"
    else
        echo "no PostgreSQL binaries (initdb, pg_ctl): install PostgreSQL 14.9+ (apt-get install postgresql)" >&2
        return 1
    fi
}

# PostgreSQL refuses to run as root: as root, run its commands as the postgres user, in a data
# folder that user can reach (a folder under /root is closed to it).
as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_dir() {
    if [[ -f "$state_dir/pg-dir" ]]; then
        cat "$state_dir/pg-dir"
    elif [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$state_dir" 2>/dev/null; then
        mktemp -d "${TMPDIR:-/tmp}/koiitasks-pg-XXXXXX"
    else
        echo "$state_dir/postgres"
    fi
}

start_postgres() {
    local bin dir
    bin="$(postgres_bin)"
    dir="$(pg_dir)"
    echo "$dir" >"$state_dir/pg-dir"
    mkdir -p "$dir"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres:postgres "$dir"
    fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres >>"$state_dir/postgres.log"
    fi
    if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_postgres "$bin/pg_ctl" -D "$dir/data" -w -l "$dir/server.log" \
            -o "-p $pg_port -k $dir -c listen_addresses=$host" start >>"$state_dir/postgres.log"
    fi
    as_postgres "$bin/createdb" -h "$host" -p "$pg_port" -U postgres prefect 2>/dev/null || true
    echo "postgresql+asyncpg://postgres@$host:$pg_port/prefect" >"$state_dir/database-url"
    echo "PostgreSQL running on $host:$pg_port (data: $dir/data)"
}

stop_postgres() {
    local bin dir
    [[ -f "$state_dir/pg-dir" ]] || return 0
    dir="$(<"$state_dir/pg-dir")"
    bin="$(postgres_bin)"
    if as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        echo "stopped PostgreSQL"
    fi
    rm -f "$state_dir/database-url"
}

wait_healthy() {
    local pid="$1"
    for _ in $(seq 1 600); do
        if "$python" -c "import sys, urllib.request as u; sys.exit(u.urlopen('$api_url/health', timeout=2).read() != b'true')" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "prefect server exited; see $state_dir/prefect-server.log" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "prefect server not healthy after 120 s; see $state_dir/prefect-server.log" >&2
    return 1
}

start() {
    local postgres=0 ui="--ui" pid
    for arg in "$@"; do
        case "$arg" in
            --postgres) postgres=1 ;;
            --no-ui) ui="--no-ui" ;;
            *) usage ;;
        esac
    done
    mkdir -p "$state_dir"
    if [[ "$postgres" == 1 ]]; then
        start_postgres
    else
        rm -f "$state_dir/database-url"
    fi
    prefect_env
    if pid="$(running_pid prefect-server "prefect server start")"; then
        echo "Prefect server already running (pid $pid) on $api_url"
    else
        launch prefect-server "$python" -m prefect server start --host "$host" --port "$port" "$ui"
        pid="$(<"$state_dir/prefect-server.pid")"
        wait_healthy "$pid"
        echo "Prefect server running (pid $pid) on $api_url; log: $state_dir/prefect-server.log"
    fi
    if [[ -x "$repo/infra/moto-server.sh" ]]; then
        KOII_INFRA_DIR="$state_dir" KOII_PYTHON="$python" "$repo/infra/moto-server.sh" start
    else
        echo "no infra/moto-server.sh in this checkout: no moto server (only s3:// stores need one)"
    fi
    echo "use it with: export PREFECT_API_URL=$api_url"
}

serve() {
    local pid
    [[ $# -ge 1 ]] || usage
    if pid="$(running_pid serve "koiitasks deploy")"; then
        echo "koiitasks deploy already running (pid $pid); stop it first" >&2
        return 1
    fi
    prefect_env
    export PREFECT_API_URL="$api_url"
    launch serve "$python" -m koiitasks deploy "$@"
    echo "koiitasks deploy running (pid $(<"$state_dir/serve.pid")); log: $state_dir/serve.log"
}

worker() {
    [[ $# -eq 1 ]] || usage
    prefect_env
    export PREFECT_API_URL="$api_url"
    export PREFECT_LOGGING_EXTRA_LOGGERS=koiitasks
    launch worker "$python" -m prefect worker start --pool "$1" --type process
    echo "prefect worker for pool $1 running (pid $(<"$state_dir/worker.pid")); log: $state_dir/worker.log"
}

stop() {
    halt serve "koiitasks deploy"
    halt worker "prefect worker start"
    if [[ -x "$repo/infra/moto-server.sh" ]]; then
        KOII_INFRA_DIR="$state_dir" KOII_PYTHON="$python" "$repo/infra/moto-server.sh" stop || true
    fi
    halt prefect-server "prefect server start"
    stop_postgres
}

status() {
    local pid code=3
    if pid="$(running_pid prefect-server "prefect server start")"; then
        echo "Prefect server: running (pid $pid) on $api_url"
        code=0
    else
        echo "Prefect server: not running"
    fi
    if [[ -f "$state_dir/database-url" ]]; then
        echo "database: $(<"$state_dir/database-url")"
    fi
    if pid="$(running_pid serve "koiitasks deploy")"; then
        echo "koiitasks deploy: running (pid $pid); log: $state_dir/serve.log"
    fi
    if pid="$(running_pid worker "prefect worker start")"; then
        echo "prefect worker: running (pid $pid); log: $state_dir/worker.log"
    fi
    if [[ -x "$repo/infra/moto-server.sh" ]]; then
        KOII_INFRA_DIR="$state_dir" "$repo/infra/moto-server.sh" status || true
    fi
    return "$code"
}

command="${1:-}"
[[ $# -gt 0 ]] && shift
case "$command" in
    start) start "$@" ;;
    serve) serve "$@" ;;
    worker) worker "$@" ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
