#!/bin/sh
# A fleet on one machine (docs/fleet.md, "Try it"): a Redis on a Unix socket and three pymgr
# hosts (host1 and host2 tagged scanner), all in the foreground; Ctrl-C stops every one of them.
#
#   examples/fleet/run.sh            # from the repository, after make venv (or with pymgr on PATH)
#
# Everything lives in var/fleet/ (or $PYMGR_FLEET_DIR): the socket, the key pair, each host's
# config copy, state and socket. Each run starts clean: nothing is kept in Redis (no persistence),
# and the hosts' task stores of the last run are removed, so a job key (--key long-scan) is new again.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${PYMGR_FLEET_DIR:-$root/var/fleet}
if [ -x "$root/.venv/bin/pymgr" ]; then pymgr=${PYMGR:-$root/.venv/bin/pymgr}; else pymgr=${PYMGR:-pymgr}; fi
redis_server=${REDIS_SERVER:-redis-server}
command -v "$redis_server" >/dev/null || { echo "run.sh: $redis_server is missing (apt-get install redis-server)" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ -f "$dir/console.key" ] || "$pymgr" fleet keygen console --dir "$dir" >/dev/null
for n in 1 2 3; do
    if [ -d "$dir/host$n" ]; then
        echo "run.sh: starting clean: removing $dir/host$n (host$n's task store of the last run)" >&2
        rm -rf "${dir:?}/host$n"
    fi
done

host_pids=""
redis_pid=""
rm -f "$dir/redis.sock"  # left by a Redis that was killed: Redis's own socket is awaited below
stop() {
    trap - INT TERM
    echo "run.sh: stopping the hosts, then Redis" >&2
    # Hosts first, waited for (each finishes the writes to Redis it has begun), then Redis.
    for pid in $host_pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $host_pids; do wait "$pid" || true; done
    [ -z "$redis_pid" ] || kill -TERM "$redis_pid" 2>/dev/null || true
    wait
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

# In a session of its own (where setsid exists): Ctrl-C in the terminal reaches the hosts, not Redis,
# which stop() ends last.
detach=""
if command -v setsid >/dev/null; then detach=setsid; fi
$detach "$redis_server" --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --save '' --appendonly no \
    --dir "$dir" --loglevel warning &
redis_pid=$!
tries=0
until [ -S "$dir/redis.sock" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || { echo "run.sh: Redis did not start" >&2; kill "$redis_pid"; exit 1; }
    sleep 0.1
done

for n in 1 2 3; do
    sed -e "s|@FLEET_DIR@|$dir|g" -e "s|@EXAMPLES@|$root/examples|g" "$here/host$n.toml" >"$dir/host$n.toml"
    "$pymgr" serve --config "$dir/host$n.toml" &
    host_pids="$! $host_pids"
done

cat <<EOT

A fleet of three hosts is starting (host1 and host2 tagged scanner). In another shell:

  export PYMGR_FLEET_REDIS=unix://$dir/redis.sock PYMGR_FLEET_KEY_ID=console PYMGR_FLEET_SIGNING_KEY=$dir/console.key
  $pymgr fleet hosts
  $pymgr fleet submit scan task_id:=1 duration:=5 --tag scanner --wait
  $pymgr fleet submit demo.echo greeting=hi --action --host host3 --wait
  $pymgr fleet submit scan task_id:=2 duration:=60 --host host2 --key long-scan
  $pymgr fleet list
  $pymgr fleet show long-scan
  $pymgr fleet logs long-scan -f
  $pymgr fleet stop long-scan

Ctrl-C here stops the hosts and Redis.
EOT
wait
