#!/usr/bin/env bash
# The reference lab's own client beside ours: 2 Keras CNN clients of the
# reference's shape (flwr 1.3.0 + tensorflow-cpu 2.12, start_numpy_client,
# flower/keras_client.py) and 3 of our Rust CNN clients against host-server
# --flower-bind, 5 rounds, 5 shares of MNIST; prints each round's
# participants by kind and the weighted accuracy. Not in CI (TensorFlow is
# ~600 MB). Installs its venv once in target/flower-reference-venv (PyPI).
#   bench/flower_reference.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
venv=target/flower-reference-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check flwr==1.3.0 tensorflow-cpu==2.12.0
fi
cargo build --release -q -p host-server -p host-client
out="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
target/release/host-server --bind 127.0.0.1:0 --flower-bind 127.0.0.1:0 --model cnn --rounds "$rounds" \
    --min-available-clients 5 --min-fit-clients 5 --min-evaluate-clients 5 \
    --out "$out" --log-file "$out/server.log" > "$out/server.out" &
pids+=($!)
for _ in $(seq 100); do [ "$(wc -l < "$out/server.out")" -ge 2 ] && break; sleep 0.1; done
ours="$(sed -n 's/^listening on //p' "$out/server.out")"
flower="$(sed -n 's/^flower listening on //p' "$out/server.out")"
target/release/host-client --server "$ours" --num-clients 5 --clients 3 --client-index 0 2> "$out/ours.log" &
pids+=($!)
for p in 3 4; do
    TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" flower/keras_client.py --server "$flower" --partition "$p" \
        > "$out/keras-$p.log" 2>&1 &
    pids+=($!)
done
start=$(date +%s.%N)
wait "${pids[0]}"
echo "wall time: $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s; output in $out"
python3 - "$out/history_$rounds.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
for r in h["rounds"]:
    kinds = sorted(p["kind"] for p in r["participants"] if p["examples"] > 0)
    acc = r["accuracy_distributed"]
    print(f"round {r['round']}: {len(kinds)} trained ({', '.join(kinds)}), "
          f"weighted accuracy {100 * acc:.2f}%, failures {len(r['failures'])}")
PY
