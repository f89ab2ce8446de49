#!/usr/bin/env bash
# run.sh BUILD - start the local Sluice stack in the foreground.
#
# Starts nats-server (max_payload 8 MiB) and etcd on loopback with their data
# under $RUN_DIR (default ./run), then every Sluice service that has been
# built, waits until each is healthy, prints where things are, and stops all
# of it on Ctrl-C (or SIGTERM). Ports: NATS_PORT (4222), ETCD_PORT (2379).
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/$BUILD/bin"
RUN_DIR=${RUN_DIR:-$ROOT/run}
NATS_PORT=${NATS_PORT:-4222}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
NS=${SLUICE_NAMESPACE:-default}
mkdir -p "$RUN_DIR/etcd" "$RUN_DIR/logs"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping the stack..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup INT TERM EXIT

port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
for p in "$NATS_PORT" "$ETCD_PORT"; do
  if port_busy "$p"; then
    echo "run: port $p is already in use; set NATS_PORT / ETCD_PORT or stop what holds it" >&2
    exit 1
  fi
done

cat > "$RUN_DIR/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
max_payload: 8MB
max_pending: 64MB
CONF
nats-server -c "$RUN_DIR/nats.conf" > "$RUN_DIR/logs/nats.log" 2>&1 &
pids+=($!)
etcd --name sluice-local --data-dir "$RUN_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "sluice-local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --logger=zap --log-level=warn > "$RUN_DIR/logs/etcd.log" 2>&1 &
pids+=($!)

wait_for() { # name, command
  for _ in $(seq 150); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "run: $1 did not become ready; see $RUN_DIR/logs/" >&2
  exit 1
}
wait_for nats-server "port_busy $NATS_PORT"
wait_for etcd "curl -sf -m 1 http://127.0.0.1:$ETCD_PORT/health | grep -q true"

export SLUICE_NATS="nats://127.0.0.1:$NATS_PORT"
export SLUICE_ETCD="http://127.0.0.1:$ETCD_PORT"
export SLUICE_NAMESPACE="$NS"

echo
echo "Sluice local stack is up (namespace $NS):"
echo "  NATS  $SLUICE_NATS"
echo "  etcd  $SLUICE_ETCD"
echo "  logs  $RUN_DIR/logs/"
if [ -x "$BIN/sluice-ctl" ]; then
  echo "  list instances:  SLUICE_ETCD=$SLUICE_ETCD $BIN/sluice-ctl ls"
  echo "  follow events:   SLUICE_NATS=$SLUICE_NATS $BIN/sluice-ctl events"
fi
echo "Press Ctrl-C to stop."
while :; do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      echo "run: a process of the stack (pid $p) exited; see $RUN_DIR/logs/" >&2
      exit 1
    fi
  done
  sleep 1
done
