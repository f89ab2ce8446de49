#!/usr/bin/env bash
# run.sh BUILD - start the local Sluice stack in the foreground.
#
# Starts nats-server (max_payload 8 MiB) and etcd on loopback with their data
# under $RUN_DIR (default ./run), then one sluice-decode-worker and the
# sluice-frontend on MODEL (a Hugging Face model directory; default: a small
# random Llama written by genmodel into $RUN_DIR/models/tiny-llama), waits
# until each is healthy, prints the URL and a curl to paste, and stops all of
# it on Ctrl-C (or SIGTERM). nats-server and etcd run in their own sessions so
# that a Ctrl-C reaches the services first and they deregister before the
# infrastructure stops.
# DISAGG=1 (make run DISAGG=1) adds a sluice-prefill-worker and runs the
# decode worker with --disagg $DISAGG_MODE (default auto) and
# --max-local-prefill $MAX_LOCAL_PREFILL (default 256): long prompts are
# prefilled there and their KV written into the decode worker over UCX.
# Ports: NATS_PORT (4222), ETCD_PORT (2379),
# HTTP_PORT (8000).
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN="$ROOT/$BUILD/bin"
RUN_DIR=${RUN_DIR:-$ROOT/run}
NATS_PORT=${NATS_PORT:-4222}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
HTTP_PORT=${HTTP_PORT:-8000}
MODEL=${MODEL:-}
NS=${SLUICE_NAMESPACE:-default}
DISAGG=${DISAGG:-0}
DISAGG_MODE=${DISAGG_MODE:-auto}
MAX_LOCAL_PREFILL=${MAX_LOCAL_PREFILL:-256}
mkdir -p "$RUN_DIR/etcd" "$RUN_DIR/logs"

pids=()
stop_pids() { # stop the given pids: SIGTERM, up to 5 s, then SIGKILL
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping the stack..."
  # Services first (they deregister from etcd and drain), then nats and etcd.
  [ ${#pids[@]} -gt 2 ] && stop_pids "${pids[@]:2}"
  [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]:0:2}"
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM # stop here, not in the watch loop below

port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
for p in "$NATS_PORT" "$ETCD_PORT" "$HTTP_PORT"; do
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
setsid nats-server -c "$RUN_DIR/nats.conf" > "$RUN_DIR/logs/nats.log" 2>&1 &
pids+=($!)
setsid etcd --name sluice-local --data-dir "$RUN_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "sluice-local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --logger=zap --log-level=warn > "$RUN_DIR/logs/etcd.log" 2>&1 &
pids+=($!)

if [ -z "$MODEL" ]; then
  MODEL="$RUN_DIR/models/tiny-llama"
  if [ ! -f "$MODEL/config.json" ]; then
    echo "run: writing the default small model to $MODEL"
    mkdir -p "$(dirname "$MODEL")"
    "$ROOT/$BUILD/bench/genmodel" --preset tiny --arch llama --dtype f32 --seed 1 --out "$MODEL" \
      > "$RUN_DIR/logs/genmodel.log" 2>&1 || { echo "run: genmodel failed; see $RUN_DIR/logs/genmodel.log" >&2; exit 1; }
  fi
fi
NAME=$(basename "$MODEL")

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

decode_args=()
if [ "$DISAGG" = 1 ]; then
  "$BIN/sluice-prefill-worker" --model "$MODEL" --system-port 0 > "$RUN_DIR/logs/prefill-worker.log" 2>&1 &
  pids+=($!)
  decode_args=(--disagg "$DISAGG_MODE" --max-local-prefill "$MAX_LOCAL_PREFILL")
fi
"$BIN/sluice-decode-worker" --model "$MODEL" --system-port 0 "${decode_args[@]}" \
  > "$RUN_DIR/logs/decode-worker.log" 2>&1 &
pids+=($!)
"$BIN/sluice-frontend" --model-path "$MODEL" --port "$HTTP_PORT" > "$RUN_DIR/logs/frontend.log" 2>&1 &
pids+=($!)
wait_for "sluice-frontend with a worker" "curl -sf -m 1 http://127.0.0.1:$HTTP_PORT/health"

echo
echo "Sluice local stack is up (namespace $NS):"
echo "  NATS  $SLUICE_NATS"
echo "  etcd  $SLUICE_ETCD"
echo "  logs  $RUN_DIR/logs/"
echo "  model $MODEL (served as $NAME)"
if [ "$DISAGG" = 1 ]; then
  echo "  disaggregated: one prefill worker, decode worker --disagg $DISAGG_MODE (--max-local-prefill $MAX_LOCAL_PREFILL)"
fi
echo
echo "OpenAI-compatible API: http://127.0.0.1:$HTTP_PORT/v1"
echo "  curl http://127.0.0.1:$HTTP_PORT/v1/chat/completions -H 'Content-Type: application/json' \\"
echo "    -d '{\"model\": \"$NAME\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 32}'"
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
