#!/usr/bin/env bash
# Measures a whole ./run.sh: wall time (with /usr/bin/time -v), the peak resident
# memory of all its processes together and of the server and of one client
# (sampled from ps every 0.1 s), and from the history: final accuracy, seconds
# per round, start-up time (launch to the end of round 1 minus round 1 itself),
# bytes per round and where the time goes.
#
#   bench/federation.sh [run.sh options]      e.g. bench/federation.sh --model mlp:784-128-10
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d /tmp/fedbench.XXXXXX)
cargo build --release --quiet -p host-server -p host-client -p firmware-sim  # all that run.sh builds: it runs with --no-build, so no build (not even cargo's check that all is fresh, 0.2-0.4 s) is timed

sample() {
  local total=0 server=0 client=0
  while sleep 0.1; do
    read -r t s c < <(ps -C host-server,host-client -o comm=,rss= 2>/dev/null |
      awk '{t+=$2} $1=="host-server"{s=($2>s?$2:s)} $1=="host-client"{c=($2>c?$2:c)} END{print t+0, s+0, c+0}')
    ((t > total)) && total=$t
    ((s > server)) && server=$s
    ((c > client)) && client=$c
    echo "$total $server $client" > "$out/rss"
  done
}
sample &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT

/usr/bin/time -v ./run.sh --no-build "$@" --out "$out" > "$out/run.txt" 2> "$out/time.txt" || { cat "$out/run.txt" "$out/time.txt"; exit 1; }
kill $sampler 2>/dev/null || true
read -r total server client < "$out/rss"
wall=$(grep "Elapsed (wall clock)" "$out/time.txt" | awk '{print $NF}')
python3 - "$out" "$wall" "$total" "$server" "$client" <<'PY'
import glob, json, sys
out, wall, total, server, client = sys.argv[1:]
h = json.load(open(glob.glob(f"{out}/history_*.json")[0]))
rounds = h["rounds"]
n = len(rounds)
per_round = sum(r["seconds"] for r in rounds) / n
phases = {}
for r in rounds:
    for k, v in r["phase_seconds"].items():
        phases[k] = phases.get(k, 0) + v / n
m, s = wall.split(":")[-2:]
wall_s = float(m) * 60 + float(s)
print(f"model {h['config']['model']}, {h['config']['strategy']}, {n} rounds, {len(rounds[-1]['participants'])} participants")
print(f"final accuracy     {100 * rounds[-1]['accuracy_distributed']:.2f}%")
print(f"wall time          {wall_s:.1f} s (build excluded)")
print(f"seconds per round  {per_round:.2f}")
print(f"start-up           {wall_s - sum(r['seconds'] for r in rounds):.1f} s (wall time not spent in rounds)")
print(f"peak RSS, all      {int(total) / 1024:.0f} MB")
print(f"peak RSS, server   {int(server) / 1024:.0f} MB")
print(f"peak RSS, a client {int(client) / 1024:.0f} MB")
print(f"bytes per round    {sum(r['bytes'] for r in rounds) / n / 1e6:.2f} MB")
print("per round: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(phases.items())))
PY
echo "outputs in $out"
