#!/usr/bin/env bash
# Estimated real-hardware time per round of the firmware boards of a run
# (./run.sh --qemu-devices N --out DIR): the instructions each board counted
# per round under QEMU's -icount (from DIR/qemu-*.out), on a 168 MHz
# Cortex-M4F and a 48 MHz M3-class part at one instruction a cycle (a lower
# bound: loads, stores, multiplies and branches take more than one on those
# cores), and the link's time at 115200 baud (10 bits a byte) for the bytes
# the history recorded both ways. Medians over the rounds.
#
#   bench/firmware.sh DIR
set -euo pipefail
dir=${1:?usage: bench/firmware.sh DIR (a run.sh --qemu-devices output folder)}
python3 - "$dir" <<'PY'
import glob, json, os, re, statistics, sys

out = sys.argv[1]
histories = sorted(glob.glob(os.path.join(out, "history_*.json")), key=os.path.getmtime)
if not histories:
    sys.exit(f"bench/firmware.sh: no history_*.json in {out}")
rounds = json.load(open(histories[-1]))["rounds"]
boards = sorted(glob.glob(os.path.join(out, "qemu-*.out")))
if not boards:
    sys.exit(f"bench/firmware.sh: no qemu-*.out in {out} (run.sh --qemu-devices N)")
count = re.compile(r"round (\d+): (train|evaluate) \d+ ticks = (\d+) instructions")
print("| board | kind, numeric | samples (train/test) | train Minstr/round | evaluate Minstr/round "
      "| at 168 MHz: train + evaluate s | at 48 MHz: train + evaluate s | link bytes/round | link s at 115200 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for path in boards:
    text = open(path).read()
    name = re.search(r"firmware: (\S+) \((qemu-m\d)\), \S+, (\S+) in", text)
    shard = re.search(r"shard: (\d+) training and (\d+) test", text)
    if not name or not shard:
        print(f"| {path} | (no boot line) |")
        continue
    work = {"train": [], "evaluate": []}
    for m in count.finditer(text):
        work[m.group(2)].append(int(m.group(3)))
    train = statistics.median(work["train"]) if work["train"] else 0
    evaluate = statistics.median(work["evaluate"]) if work["evaluate"] else 0
    link = [p["bytes_sent"] + p["bytes_received"]
            for r in rounds for p in r["participants"] if p["name"] == name.group(1)]
    link = statistics.median(link) if link else 0
    at = lambda mhz: f"{train / mhz / 1e6:.1f} + {evaluate / mhz / 1e6:.1f}"
    print(f"| {name.group(1)} | {name.group(2)}, {name.group(3)} | {shard.group(1)}/{shard.group(2)} "
          f"| {train / 1e6:,.0f} | {evaluate / 1e6:,.0f} | {at(168)} | {at(48)} "
          f"| {link:,.0f} | {link * 10 / 115200:.1f} |")
PY
