#!/usr/bin/env bash
# A moto S3 server on loopback, for trying s3:// stores with no AWS account:
#
#   infra/moto-server.sh start     start it in the background (pid file and log in the state dir)
#   infra/moto-server.sh stop      SIGTERM, then SIGKILL after MOTO_STOP_TIMEOUT seconds
#   infra/moto-server.sh status    exit 0 when running, 3 when not (as LSB init scripts do)
#
# Then: export KOII_S3_ENDPOINT_URL=http://127.0.0.1:5000 and use --store s3://BUCKET.
# It runs moto's server through koiitasks.testing.moto_serve, which makes conditional writes
# atomic as they are on S3 (moto alone checks If-None-Match and writes without a lock).
#
# Settings (environment):
#   MOTO_HOST          address to bind, loopback by default       (127.0.0.1)
#   MOTO_PORT          port                                       (5000)
#   KOII_INFRA_DIR     state dir for moto-server.pid and .log     (<repo>/.koiitasks/infra)
#   KOII_PYTHON        interpreter with koiitasks and moto[server] (<repo>/.venv/bin/python, else python3)
#   MOTO_STOP_TIMEOUT  whole seconds between SIGTERM and SIGKILL  (10)
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"  # repo, state_dir, python
host="${MOTO_HOST:-127.0.0.1}"
port="${MOTO_PORT:-5000}"
stop_timeout="${MOTO_STOP_TIMEOUT:-10}"
pid_file="$state_dir/moto-server.pid"
url_file="$state_dir/moto-server.url"
log_file="$state_dir/moto-server.log"

usage() {
    echo "usage: $0 start|stop|status" >&2
    exit 2
}

# The pid in the pid file, if that process is alive and is a moto server (pids get reused).
running_pid() {
    local pid args
    [[ -f "$pid_file" ]] || return 1
    pid="$(<"$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    args="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
    [[ "$args" == *moto?serve* ]] || return 1
    echo "$pid"
}

# Whether something answers TCP on host:port (bash's /dev/tcp, no curl needed).
answers() {
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

start() {
    local pid
    if pid="$(running_pid)"; then
        echo "moto server already running (pid $pid) on $(<"$url_file")"
        return 0
    fi
    if answers; then
        echo "something else already listens on $host:$port; set MOTO_PORT" >&2
        return 1
    fi
    mkdir -p "$state_dir"
    nohup "$python" -m koiitasks.testing.moto_serve -H "$host" -p "$port" >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    echo "http://$host:$port" >"$url_file"
    for _ in $(seq 1 100); do
        if answers; then
            echo "moto server running (pid $pid) on http://$host:$port; log: $log_file"
            echo "use it with: export KOII_S3_ENDPOINT_URL=http://$host:$port"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    echo "moto server did not start; last lines of $log_file:" >&2
    tail -n 20 "$log_file" >&2 || true
    kill "$pid" 2>/dev/null || true
    rm -f "$pid_file" "$url_file"
    return 1
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "moto server not running"
        rm -f "$pid_file" "$url_file"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 $((stop_timeout * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pid_file" "$url_file"
            echo "moto server stopped (pid $pid)"
            return 0
        fi
        sleep 0.1
    done
    echo "moto server (pid $pid) ignored SIGTERM for ${stop_timeout}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pid_file" "$url_file"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        echo "moto server running (pid $pid) on $(<"$url_file")"
        return 0
    fi
    echo "moto server not running"
    return 3
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
