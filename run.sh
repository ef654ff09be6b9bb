#!/usr/bin/env bash
# The main job: the reference federation on this machine. Builds in release,
# starts host-server and N host-client processes on 127.0.0.1 (and with
# --devices, simulated microcontrollers on pseudo-terminals beside them; with
# --qemu-devices, the firmware image on emulated Cortex-M boards), shows
# a progress bar over rounds, and ends with a summary, one line per participant,
# and the paths of history and plots. Logs go to files in the out folder. Every
# process it starts is stopped on exit or Ctrl-C.
#
#   ./run.sh [--rounds N] [--clients N] [--model cnn|mlp:784-128-10|"28x28x1 conv:32x3 ..."] [--partition iid|dirichlet:A|shards:S|classes:C|seed]
#            [--strategy fedavg|fedavgm|fedprox|fedadam|fedyogi|fedadagrad|median|trimmed-mean|krum]
#            [--out DIR] [--port P (0: any free port)] [--data-dir DIR] [--encoding f32|int8]
#            [--train-slots N (clients training at once; default: the cores; 0: no turns)]
#            [--seed S (the model's initialisation and the rounds' sample orders)]
#            [--momentum-state persist|round (local momentum carries over between rounds, or restarts)]
#            [--devices N] [--device-baud B (0: unthrottled)] [--device-ber P (bit errors, e.g. 1e-4)]
#            [--qemu-devices N (firmware on QEMU boards: M4F training in f32, M3 in Q16.16, in turn)]
#            [--qemu-ram-kb K (the boards' RAM budget, default 128)]
#            [--secure (admission by key and TLS: a key and certificates made in OUT/secure on first use)]
#                                                            devices need a model that fits
#                                                            128 KiB, e.g. --model mlp:784-32-10
#            [--no-build (run the binaries in target/release as they are: benchmarks build first)]
set -euo pipefail
cd "$(dirname "$0")"

rounds=40 clients=5 model=cnn partition=iid strategy=fedavg out=results port=8000 data=data/mnist
devices=0 device_baud=115200 device_ber=0 qemu_devices=0 qemu_ram_kb=128 encoding=f32 train_slots=$(nproc) seed=0 momentum_state=persist
secure=0 build=1
while (($#)); do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --clients) clients=${2:?--clients needs a number}; shift 2 ;;
    --model) model=${2:?--model needs cnn or mlp:...}; shift 2 ;;
    --partition) partition=${2:?--partition needs iid, dirichlet:A, shards:S, classes:C or seed}; shift 2 ;;
    --strategy) strategy=${2:?--strategy needs a name}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --data-dir) data=${2:?--data-dir needs a directory of IDX files}; shift 2 ;;
    --devices) devices=${2:?--devices needs a number}; shift 2 ;;
    --device-baud) device_baud=${2:?--device-baud needs a baud rate}; shift 2 ;;
    --device-ber) device_ber=${2:?--device-ber needs a bit error rate}; shift 2 ;;
    --qemu-devices) qemu_devices=${2:?--qemu-devices needs a number}; shift 2 ;;
    --qemu-ram-kb) qemu_ram_kb=${2:?--qemu-ram-kb needs a number of KiB}; shift 2 ;;
    --encoding) encoding=${2:?--encoding needs f32 or int8}; shift 2 ;;
    --train-slots) train_slots=${2:?--train-slots needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --momentum-state) momentum_state=${2:?--momentum-state needs round or persist}; shift 2 ;;
    --secure) secure=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done

if ((build)); then
  echo "building (release)..."
  cargo build --release --quiet -p host-server -p host-client -p firmware-sim
fi
bin=target/release
mkdir -p "$out"
participants=$((clients + devices + qemu_devices))
if ((qemu_devices > 0)); then
  echo "QEMU for the boards (unpacked into firmware/target/qemu on first use)..."
  bash firmware/qemu.sh
fi

# --secure: every participant proves the federation's key, and TCP runs over
# TLS under the federation's own CA (devices on serial lines prove the key).
server_secure=() client_secure=() device_secure=()
if ((secure)); then
  keys=$out/secure/federation.key certs=$out/secure/certs
  mkdir -p "$out/secure"
  if [[ ! -f $keys ]]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$keys")
  fi
  [[ -f $certs/ca.pem ]] || "$bin/host-server" certificates --out "$certs" > /dev/null
  server_secure=(--auth-key-file "$keys" --tls-cert "$certs/server.pem" --tls-key "$certs/server.key")
  client_secure=(--auth-key-file "$keys" --tls-ca "$certs/ca.pem")
  device_secure=(--auth-key-file "$keys")
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo; echo "run.sh: interrupted"; exit 130' INT TERM

# The first line a process prints (its address or its line), waiting for it
# (20 s, or as many tenths of a second as a fourth argument says).
first_line() { # file pid what [tenths]
  local line="" tries
  for ((tries = 0; tries < ${4:-200} * 2; tries++)); do
    line=$(head -n 1 "$1")
    if [[ -n $line ]] || ! kill -0 "$2" 2>/dev/null; then
      break
    fi
    sleep 0.05
  done
  if [[ -z $line ]]; then
    echo "run.sh: $3 did not start (see $1 and its log)" >&2
    exit 1
  fi
  echo "$line"
}

start=$(date +%s.%N)
# Devices take the last shares of the data; each prints its pty path first.
serial=()
for ((d = 0; d < devices; d++)); do
  i=$((clients + d))
  : > "$out/device-$i.out"
  "$bin/firmware-sim" --pty --baud "$device_baud" --link-ber "$device_ber" --model "$model" --shard "$i/$participants" \
    --partition "$partition" --data-dir "$data" --name "device-$i" "${device_secure[@]}" \
    > "$out/device-$i.out" 2> "$out/device-$i.log" &
  pids+=("$!")
  dpids[d]=$!
done
for ((d = 0; d < devices; d++)); do
  i=$((clients + d))
  if ! path=$(first_line "$out/device-$i.out" "${dpids[d]}" "device $i"); then
    cat "$out/device-$i.log" >&2
    exit 1
  fi
  # The server paces its resend timer by the line's speed (an unthrottled pty keeps the default).
  if ((device_baud > 0)); then path="$path@$device_baud"; fi
  serial+=(--serial "$path")
done
# Boards take the shares after the devices'. The first start builds the
# image (cargo serialises the builds); each prints its link's pty first.
for ((q = 0; q < qemu_devices; q++)); do
  i=$((clients + devices + q))
  if ((q % 2 == 0)); then board=(--board m4 --numeric f32); else board=(--board m3 --numeric fixed); fi
  : > "$out/qemu-$i.out"
  "$bin/firmware-qemu" "${board[@]}" --model "$model" --ram-kb "$qemu_ram_kb" --shard "$i/$participants" \
    --partition "$partition" --data-dir "$data" --name "qemu-$i" "${device_secure[@]}" \
    > "$out/qemu-$i.out" 2> "$out/qemu-$i.log" &
  pids+=("$!")
  qpids[q]=$!
done
for ((q = 0; q < qemu_devices; q++)); do
  i=$((clients + devices + q))
  if ! path=$(first_line "$out/qemu-$i.out" "${qpids[q]}" "board $i" 3000); then
    cat "$out/qemu-$i.log" >&2
    exit 1
  fi
  serial+=(--serial "$path")
done
: > "$out/server.out"
"$bin/host-server" --bind "127.0.0.1:$port" --rounds "$rounds" --model "$model" --strategy "$strategy" \
  --min-available-clients "$participants" --min-fit-clients "$participants" \
  --min-evaluate-clients "$participants" --seed "$seed" --momentum-state "$momentum_state" "${serial[@]}" \
  "${server_secure[@]}" --out "$out" --log-file "$out/server.log" > >(tee "$out/server.out") &
server=$!
pids+=("$server")
# The server's first line is its real address (--port 0 picks a free port).
listening=$(first_line "$out/server.out" "$server" "the server")
addr=${listening#listening on }
for ((i = 0; i < clients; i++)); do
  "$bin/host-client" --server "$addr" --client-index "$i" --num-clients "$participants" \
    --partition "$partition" --data-dir "$data" --encoding "$encoding" --name "client" \
    --train-slots "$train_slots" --slot-dir "$out/.train-slots" "${client_secure[@]}" \
    2>"$out/client-$i.log" &
  pids+=("$!")
done
echo "server, $clients clients, $devices devices and $qemu_devices boards started: $model, $strategy, $partition, $rounds rounds (logs in $out/)"

status=0
wait "$server" || status=$?
end=$(date +%s.%N)
if ((status != 0)); then
  echo "run.sh: the server failed (exit $status); see $out/server.log" >&2
  exit "$status"
fi
printf 'run.sh: wall time %.1f s, start-up and shutdown included (build excluded)\n' "$(echo "$end - $start" | bc -l 2>/dev/null || python3 -c "print($end - $start)")"
