#!/bin/sh
# rangefetch in distributed mode as one benchmark command:
#   dist.sh WORKERS URL OUT RANGEFETCH...
# starts a private redis-server and WORKERS `rangefetch worker` processes,
# runs `rangefetch get URL -o OUT -c 16 -q --redis ...`, then stops the
# workers and redis and waits for them, so their CPU time and peak RSS are
# counted with the command's (run.py reads them with wait4).  The download's
# own seconds (after the workers are up) go to OUT.seconds for the throughput.
# With BENCH_CA set (run.py's TLS scenarios: the bench CA's certificate), the
# workers and `get` get `--ca-certificate BENCH_CA`, and the environment
# RANGEFETCH_CA_CERTIFICATE=BENCH_CA; unset, the command lines are the plain ones.
# The scale-out rows (run.py's per-address scenario) set three more, each
# unset by default: DIST_CONCURRENCY (each worker's -c; default 16/WORKERS),
# DIST_CONNECTIONS (get's -c; default 16) and DIST_INTERFACES (comma list:
# worker n gets `--interface` the n-th address, as if on a host of its own).
set -u
workers=$1 url=$2 out=$3
shift 3
concurrency=${DIST_CONCURRENCY:-$((16 / workers))}
connections=${DIST_CONNECTIONS:-16}
interfaces=${DIST_INTERFACES:-}
if [ -n "$interfaces" ] && [ "$(echo "$interfaces" | tr ',' '\n' | grep -c .)" -lt "$workers" ]; then
    echo "dist.sh: DIST_INTERFACES ($interfaces) names fewer than $workers addresses" >&2
    exit 2
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis=$!
i=0
until redis-cli -p "$port" ping >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then echo "dist.sh: redis-server did not start" >&2; kill "$redis"; exit 1; fi
    sleep 0.05
done
url_redis="redis://127.0.0.1:$port/0"
# Distributed mode keeps outputs inside the download directory.
RANGEFETCH_DOWNLOAD_DIR=$(dirname "$out")
export RANGEFETCH_DOWNLOAD_DIR
if [ -n "${BENCH_CA:-}" ]; then
    RANGEFETCH_CA_CERTIFICATE=$BENCH_CA
    export RANGEFETCH_CA_CERTIFICATE
fi
pids=""
n=0
while [ "$n" -lt "$workers" ]; do
    address=""
    [ -n "$interfaces" ] && address=$(echo "$interfaces" | cut -d, -f$((n + 1)))
    "$@" worker -c "$concurrency" --redis "$url_redis" ${address:+--interface} ${address:+"$address"} \
        ${BENCH_CA:+--ca-certificate} ${BENCH_CA:+"$BENCH_CA"} >>"$dir/worker.log" 2>&1 &
    pids="$pids $!"
    n=$((n + 1))
done
# Start timing once every worker has announced itself, as in a running cluster.
# A worker that exits before that (a bad option, say) fails the run at once.
i=0 started=1
until [ "$(redis-cli -p "$port" ZCARD rangefetch:workers 2>/dev/null)" -ge "$workers" ] 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then echo "dist.sh: workers did not start" >&2; break; fi
    for pid in $pids; do kill -0 "$pid" 2>/dev/null || started=0; done
    if [ "$started" -eq 0 ]; then echo "dist.sh: a worker exited at start-up" >&2; break; fi
    sleep 0.05
done
rc=1
if [ "$started" -eq 1 ]; then
    # The harness asks for a sub-second phase (BENCH_PHASE, see run.py's
    # wait_for_phase); start the clock at it, as the other tools do.
    if [ -n "${BENCH_PHASE:-}" ]; then
        python3 -c 'import sys, time; time.sleep((float(sys.argv[1]) - time.time() % 1.0) % 1.0)' "$BENCH_PHASE"
    fi
    t0=$(date +%s.%N)
    "$@" get "$url" -o "$out" -c "$connections" -q --redis "$url_redis" \
        ${BENCH_CA:+--ca-certificate} ${BENCH_CA:+"$BENCH_CA"}
    rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -eq 0 ] && echo "$t0 $t1" | awk '{ printf "%.3f\n", $2 - $1 }' >"$out.seconds"
fi
kill -TERM $pids 2>/dev/null
wait $pids 2>/dev/null
kill -TERM "$redis" 2>/dev/null
wait "$redis" 2>/dev/null
[ "$rc" -ne 0 ] && tail -n 3 "$dir/worker.log" >&2
rm -rf "$dir"
exit "$rc"
