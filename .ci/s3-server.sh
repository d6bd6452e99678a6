#!/usr/bin/env bash
# A real S3-compatible server on loopback for the remote-store tests (moto's server, from PyPI,
# with signature checking on; see .ci/s3_server.py).
#
#   .ci/s3-server.sh start DIR [WATCH_PID]  installs moto if missing, starts the server on a free
#                                           127.0.0.1 port, waits until it answers, then prints
#                                           `export SQUIRREL_S3_...=...` lines (endpoint, bucket,
#                                           region, access key, secret, pid) for `eval`
#   .ci/s3-server.sh stop DIR               kills the server started into DIR and waits for it
#
# moto goes into a venv at $SQUIRREL_S3_VENV (default: target/s3-venv in the repository), made
# once and reused. The server's log is DIR/server.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SQUIRREL_S3_VENV:-$repo/target/s3-venv}"
moto_version="5.2.1"

install() {
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import moto, werkzeug, boto3" 2>/dev/null; then
        return
    fi
    echo "installing moto[server]==$moto_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" --disable-pip-version-check -q install "moto[server]==$moto_version" >&2
}

start() {
    local dir="$1" watch="${2:-}"
    mkdir -p "$dir"
    install
    rm -f "$dir/state.env"
    # setsid: the server is not in the caller's process group, so a ^C or a group kill aimed at
    # a test run does not take it down mid-test; `stop` (or WATCH_PID ending) does.
    setsid "$venv/bin/python" "$repo/.ci/s3_server.py" "$dir/state.env" $watch \
        >"$dir/server.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/pid"
    # The state file is written only once the server serves and the bucket exists.
    local i
    for ((i = 0; i < 600; i++)); do
        [[ -s "$dir/state.env" ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "s3-server: the server exited; its log:" >&2
            cat "$dir/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [[ ! -s "$dir/state.env" ]]; then
        echo "s3-server: not ready after 60 s; its log:" >&2
        cat "$dir/server.log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    # shellcheck disable=SC1091
    source "$dir/state.env"
    local hostport="${SQUIRREL_S3_ENDPOINT#http://}"
    if ! (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null; then
        echo "s3-server: nothing listens on $hostport" >&2
        exit 1
    fi
    cat "$dir/state.env"
}

stop() {
    local dir="$1"
    [[ -f "$dir/pid" ]] || return 0
    local pid
    pid="$(cat "$dir/pid")"
    if kill "$pid" 2>/dev/null; then
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: s3-server.sh start DIR [WATCH_PID]}" "${3:-}" ;;
    stop) stop "${2:?usage: s3-server.sh stop DIR}" ;;
    *)
        echo "usage: s3-server.sh install | start DIR [WATCH_PID] | stop DIR" >&2
        exit 2
        ;;
esac
