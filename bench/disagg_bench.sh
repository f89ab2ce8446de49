#!/usr/bin/env bash
# disagg_bench.sh MODE [MODEL_DIR] - aggregated vs disaggregated serving under
# a mix of ongoing decodes and long prompts (bench/RESULTS.md,
# "Disaggregation"). MODE: agg (one decode worker) or disagg (plus one
# sluice-prefill-worker, decode worker --disagg auto --max-local-prefill 128).
# Starts nats-server, etcd, the workers and the frontend on free-ish loopback
# ports, runs two loadgens at once (2 decode streams of 128 tokens; 4 long
# prompts at 0.25/s from 2 s later), stops everything and prints the run
# directory with decodes.json, long.json and the frontend's prefill metrics.
# MODEL_DIR defaults to a ~100M bf16 Llama written by genmodel.
set -u
MODE=${1:?agg or disagg}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${BUILD:-$ROOT/build}
M=${2:-/tmp/sluice-m100}
[ -f "$M/config.json" ] || "$B/bench/genmodel" --preset 100m --dtype bf16 --out "$M" >/dev/null
D=$(mktemp -d "/tmp/disagg-$MODE.XXXXXX")
mkdir -p "$D/etcd"
NP=$((24000 + RANDOM % 1000)) EP=$((26000 + RANDOM % 1000)) HP=$((28000 + RANDOM % 1000))
nats-server -a 127.0.0.1 -p $NP >"$D/nats.log" 2>&1 &
NATS=$!
etcd --data-dir "$D/etcd" --listen-client-urls http://127.0.0.1:$EP \
  --advertise-client-urls http://127.0.0.1:$EP \
  --listen-peer-urls http://127.0.0.1:$((EP + 1)) >"$D/etcd.log" 2>&1 &
ETCD=$!
sleep 2
BUSARGS=(--nats nats://127.0.0.1:$NP --etcd http://127.0.0.1:$EP --namespace db)
W=(--model "$M" --served-model-name m100 --threads 1 --max-batch-tokens 256 --kv-blocks 512
  --system-port -1 "${BUSARGS[@]}")
PIDS=()
if [ "$MODE" = disagg ]; then
  "$B/bin/sluice-prefill-worker" "${W[@]}" >"$D/prefill.log" 2>&1 &
  PIDS+=($!)
  "$B/bin/sluice-decode-worker" "${W[@]}" --disagg auto --max-local-prefill 128 >"$D/decode.log" 2>&1 &
else
  "$B/bin/sluice-decode-worker" "${W[@]}" >"$D/decode.log" 2>&1 &
fi
PIDS+=($!)
"$B/bin/sluice-frontend" --model-path "$M" --served-model-name m100 --port $HP --host 127.0.0.1 \
  "${BUSARGS[@]}" >"$D/frontend.log" 2>&1 &
PIDS+=($!)
URL=http://127.0.0.1:$HP
for _ in $(seq 100); do curl -s $URL/health | grep -q '"workers":1' && break; sleep 0.2; done
sleep 2
"$B/bench/loadgen" --url $URL --model m100 --concurrency 2 --num-requests 6 --isl 24 \
  --isl-stddev 0 --osl 128 --osl-stddev 0 --ignore-eos --json "$D/decodes.json" >"$D/decodes.log" 2>&1 &
L1=$!
sleep 2
"$B/bench/loadgen" --url $URL --model m100 --request-rate 0.25 --num-requests 4 --isl 100 \
  --isl-stddev 0 --osl 24 --osl-stddev 0 --ignore-eos --seed 11 --json "$D/long.json" \
  >"$D/long.log" 2>&1
wait $L1
curl -s $URL/metrics | grep -E '^sluice_frontend_(prefills_total|kv_transfer_bytes_total)' >"$D/prefills.txt"
kill "${PIDS[@]}" 2>/dev/null
sleep 2
kill $NATS $ETCD 2>/dev/null
wait 2>/dev/null
echo "$D"
