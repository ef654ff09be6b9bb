#!/usr/bin/env bash
# Poisoning: 5 clients on MNIST (IID), one of them malicious (host-client
# --attack), for each strategy; prints the final weighted accuracy of each
# against the clean FedAvg run. Every process it starts is stopped on exit.
#
#   bench/poison.sh [ROUNDS (10)] [MODEL (mlp:784-32-10)] [NORM (2: --max-update-norm for fedavg+norm)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10} model=${2:-mlp:784-32-10} norm=${3:-2}
cargo build --release --quiet -p host-server -p host-client
bin=target/release
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# run STRATEGY ATTACK [server flags...]: prints the final accuracy.
run() {
  local strategy=$1 attack=$2; shift 2
  local out; out=$(mktemp -d /tmp/fedpoison.XXXXXX)
  "$bin/host-server" --bind 127.0.0.1:0 --rounds "$rounds" --model "$model" --strategy "$strategy" \
    --min-available-clients 5 --min-fit-clients 5 --min-evaluate-clients 5 "$@" \
    --out "$out" --log-file "$out/server.log" > "$out/server.out" &
  local server=$!; pids+=("$server")
  local addr=""
  for ((tries = 0; tries < 200; tries++)); do
    addr=$(sed -n 's/^listening on //p' "$out/server.out"); [[ -n $addr ]] && break; sleep 0.05
  done
  "$bin/host-client" --server "$addr" --clients 4 --num-clients 5 2>/dev/null & pids+=("$!")
  local evil=()
  [[ $attack != none ]] && evil=(--attack "$attack")
  "$bin/host-client" --server "$addr" --client-index 4 --num-clients 5 --name evil "${evil[@]}" 2>/dev/null & pids+=("$!")
  wait "$server"
  python3 -c "import json,sys; h=json.load(open(sys.argv[1])); print('%.2f' % (100*h['rounds'][-1]['accuracy_distributed']))" "$out/history_$rounds.json"
}

echo "| strategy | clean | 1 of 5 scale:-10 | 1 of 5 noise:0.5 |"
echo "| --- | --- | --- | --- |"
for s in fedavg fedavg+norm median trimmed-mean krum multi-krum; do
  case $s in
    fedavg+norm) args=(fedavg --max-update-norm "$norm") ;;
    krum) args=(krum --krum-malicious 1 --krum-keep 1) ;;
    multi-krum) args=(krum --krum-malicious 1 --krum-keep 3) ;;
    *) args=("$s") ;;
  esac
  row="| $s"
  for attack in none scale:-10 noise:0.5; do
    row="$row | $(run "${args[0]}" "$attack" "${args[@]:1}")%"
  done
  echo "$row |"
done
