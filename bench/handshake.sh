#!/usr/bin/env bash
# Handshake cost: how long joining takes over TCP (plaintext, admission by
# key, TLS, TLS + key, mutual TLS + key) and for a device on a serial line at
# 115200 baud (with and without its key).
#
# TCP: per mode, REPEATS servers each see CLIENTS host-client processes join
# one after another; the client's figure is from its first connection attempt
# to the welcome (TCP, TLS, hello, challenge and proof: `handshake_ms` in its
# log), the server's from the hello to the welcome sent (`admission_ms`).
# Serial: a firmware-sim at 115200 baud on a pty, the server's admission_ms
# (the challenge and proof cross the paced line). Servers are stopped as soon
# as everyone joined: nothing trains. Prints medians and ranges.
#
#   bench/handshake.sh [REPEATS (3)] [CLIENTS (5)]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3} clients=${2:-5}
model=mlp:784-16-10
out=$(mktemp -d /tmp/fedhandshake.XXXXXX)
cargo build --release --quiet -p host-server -p host-client -p firmware-sim
bin=target/release
data=data/mnist

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
echo "$key" > "$out/keys"
"$bin/host-server" certificates --out "$out/certs" --client client > /dev/null
ca=$out/certs/ca.pem

# Waits (bounded) until FILE holds PATTERN N times.
await() {
  local file=$1 pattern=$2 n=$3
  for ((tries = 0; tries < 600; tries++)); do
    [[ $(grep -c "$pattern" "$file" 2>/dev/null || true) -ge $n ]] && return 0
    sleep 0.05
  done
  echo "handshake.sh: timed out waiting for '$pattern' in $file" >&2
  exit 1
}

# Starts a server (its extra flags as arguments) waiting for many clients; sets $server and $addr.
start_server() {
  local dir=$1; shift
  mkdir -p "$dir"
  "$bin/host-server" --bind 127.0.0.1:0 --rounds 1 --model "$model" \
    --min-available-clients 1000 --max-clients 1000 --wait-timeout 60 \
    --out "$dir" --log-file "$dir/server.log" "$@" > "$dir/server.out" 2> /dev/null &
  server=$!
  pids+=("$server")
  await "$dir/server.out" "^listening on" 1
  addr=$(sed -n 's/^listening on //p' "$dir/server.out")
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

run_tcp() {
  local mode=$1; shift
  local server_flags=() client_flags=()
  case $mode in
    plaintext) ;;
    key) server_flags=(--auth-key-file "$out/keys"); client_flags=(--auth-key-file "$out/keys") ;;
    tls) server_flags=(--tls-cert "$out/certs/server.pem" --tls-key "$out/certs/server.key")
         client_flags=(--tls-ca "$ca") ;;
    tls+key) server_flags=(--tls-cert "$out/certs/server.pem" --tls-key "$out/certs/server.key" --auth-key-file "$out/keys")
             client_flags=(--tls-ca "$ca" --auth-key-file "$out/keys") ;;
    mutual-tls+key) server_flags=(--tls-cert "$out/certs/server.pem" --tls-key "$out/certs/server.key"
                                  --tls-client-ca "$ca" --auth-key-file "$out/keys")
                    client_flags=(--tls-ca "$ca" --tls-cert "$out/certs/client.pem" --tls-key "$out/certs/client.key"
                                  --auth-key-file "$out/keys") ;;
  esac
  for ((r = 0; r < repeats; r++)); do
    local dir=$out/$mode-$r
    start_server "$dir" "${server_flags[@]}"
    local joined=()
    for ((i = 0; i < clients; i++)); do
      "$bin/host-client" --server "$addr" --num-clients "$clients" --client-index "$i" \
        --data-dir "$data" "${client_flags[@]}" 2> "$dir/client-$i.log" > /dev/null &
      joined+=("$!")
      pids+=("$!")
      await "$dir/client-$i.log" "joined the federation" 1
    done
    stop "$server"
    for pid in "${joined[@]}"; do stop "$pid"; done
  done
}

run_serial() {
  local mode=$1 flags=()
  [[ $mode == key ]] && flags=(--auth-key-file "$out/keys")
  for ((r = 0; r < repeats; r++)); do
    local dir=$out/serial-$mode-$r
    mkdir -p "$dir"
    "$bin/firmware-sim" --pty --baud 115200 --shard 1/5 --model "$model" --name device \
      --data-dir "$data" "${flags[@]}" > "$dir/device.out" 2> "$dir/device.log" &
    local device=$!
    pids+=("$device")
    await "$dir/device.out" "/dev/pts" 1
    local pty
    pty=$(grep -o '/dev/pts/[0-9]*' "$dir/device.out" | head -1)
    start_server "$dir" --serial "$pty@115200" "${flags[@]}"
    await "$dir/server.log" "participant joined" 1
    stop "$server"
    stop "$device"
  done
}

for mode in plaintext key tls tls+key mutual-tls+key; do run_tcp "$mode"; done
for mode in none key; do run_serial "$mode"; done

python3 - "$out" <<'PY'
import glob, os, re, statistics, sys
out = sys.argv[1]
ansi = re.compile(r"\x1b\[[0-9;]*m")
def values(pattern, field):
    found = []
    for path in glob.glob(os.path.join(out, pattern)):
        for line in open(path, errors="replace"):
            line = ansi.sub("", line)
            m = re.search(field + r"=([0-9.]+)", line)
            if m:
                found.append(float(m.group(1)))
    return found
def show(label, xs):
    if not xs:
        print(f"{label:<34} (none)")
        return
    print(f"{label:<34} median {statistics.median(xs):8.2f} ms   range {min(xs):.2f}-{max(xs):.2f}   n={len(xs)}")
print("TCP on loopback: client = first connection attempt to welcome; server = hello to welcome")
for mode in ["plaintext", "key", "tls", "tls+key", "mutual-tls+key"]:
    show(f"  {mode}: client", values(f"{mode}-*/client-*.log", "handshake_ms"))
    show(f"  {mode}: server", values(f"{mode}-*/server.log", "admission_ms"))
print("A device on a pty at 115200 baud (firmware-sim): server = hello to welcome")
for mode in ["none", "key"]:
    show(f"  serial, key {mode}", values(f"serial-{mode}-*/server.log", "admission_ms"))
PY
rm -rf "$out"
