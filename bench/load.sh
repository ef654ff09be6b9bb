#!/usr/bin/env bash
# Load: one server, N concurrent participants (one host-client process running
# N virtual clients), the MLP, a few rounds. Reports the server's peak RSS
# (/usr/bin/time -v), its seconds per round and the failures from the history.
# Memory should stay O(model), not O(clients x model).
#
#   bench/load.sh [CLIENTS (200)] [ROUNDS (3)] [MODEL (mlp:784-32-10)]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-200} rounds=${2:-3} model=${3:-mlp:784-32-10}
out=$(mktemp -d /tmp/fedload.XXXXXX)
cargo build --release --quiet -p host-server -p host-client
bin=target/release

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

: > "$out/server.out"
/usr/bin/time -v "$bin/host-server" --bind 127.0.0.1:0 --rounds "$rounds" --model "$model" \
  --min-available-clients "$clients" --min-fit-clients "$clients" --min-evaluate-clients "$clients" \
  --out "$out" --log-file "$out/server.log" > "$out/server.out" 2> "$out/server.time" &
pids+=("$!")
server=$!
for ((tries = 0; tries < 200; tries++)); do
  addr=$(sed -n 's/^listening on //p' "$out/server.out")
  [[ -n $addr ]] && break
  sleep 0.05
done
[[ -n $addr ]] || { echo "load.sh: the server did not start" >&2; exit 1; }
"$bin/host-client" --server "$addr" --clients "$clients" --num-clients "$clients" \
  --connect-timeout 60 2> "$out/clients.log" &
pids+=("$!")
wait "$server"
python3 - "$out/history_$rounds.json" "$out/server.time" "$clients" <<'PY'
import json, re, statistics, sys
history, timing, clients = json.load(open(sys.argv[1])), open(sys.argv[2]).read(), int(sys.argv[3])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1))
rounds = history["rounds"]
failures = sum(len(r["failures"]) for r in rounds)
trained = [sum(p["fit"] is not None for p in r["participants"]) for r in rounds]
print(f"clients {clients}, rounds {len(rounds)}, trained per round {trained}, failures {failures}")
print(f"server peak RSS {rss / 1024:.1f} MiB; seconds per round median {statistics.median(r['seconds'] for r in rounds):.2f}")
print(f"final accuracy {100 * rounds[-1]['accuracy_distributed']:.2f}%")
PY
