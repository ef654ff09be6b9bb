#!/usr/bin/env bash
# Fuzz campaign: runs each coverage-guided target of fuzz/ (frame, message,
# receiver, idx) under libFuzzer for SECONDS, starting from the seeds and the
# corpus kept in fuzz/corpus/<target>/, merges what added coverage back into
# that corpus (so `cargo test` replays it), keeps any crash in
# fuzz/artifacts/<target>/ (once fixed, move it to fuzz/regressions/<target>/,
# which `cargo test` replays too and minimising never drops), and prints a
# table: runs, coverage, corpus, crashes; then the corpus' line coverage.
#
# On the stable toolchain: cargo-fuzz needs nightly for its sanitizer flags, so
# this builds the libfuzzer-sys entry points itself with rustc's stable
# SanitizerCoverage pass (-Cpasses=sancov-module and its llvm-args, as cargo-fuzz
# passes them), no AddressSanitizer (the targets are safe Rust: a memory error
# would be a panic, which libFuzzer catches), with debug and overflow checks.
#
#   bench/fuzz.sh [SECONDS per target (60)] [TARGET ...]
#   FUZZ_RUNS=N bench/fuzz.sh   # N inputs per target from seed 1: repeatable (CI's smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(frame message receiver idx)

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --quiet -p fedfuzz --features libfuzzer --target "$host" \
  --target-dir target/fuzz "${targets[@]/#/--bin=fuzz-}"
cargo build --release --quiet -p fedfuzz --bin fuzz-seeds
bin=target/fuzz/$host/release
work=$(mktemp -d /tmp/fedfuzz.XXXXXX)
target/release/fuzz-seeds "$work/seeds"

pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

printf '%-9s %8s %10s %9s %6s %7s %7s %8s\n' target seconds runs runs/s cov features corpus crashes
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts" "$work/$t"
  # New inputs go to the first directory (scratch); the kept corpus and the seeds are read.
  if [[ -n ${FUZZ_RUNS:-} ]]; then budget=(-runs="$FUZZ_RUNS" -seed=1); else budget=(-max_total_time="$seconds"); fi
  "$bin/fuzz-$t" "${budget[@]}" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$work/$t" "$corpus" "$work/seeds/$t" > "$work/$t.log" 2>&1 &
  pid=$!
  status=0
  wait "$pid" || status=$?
  pid=
  # Keep a minimal corpus: the smallest set of inputs (old, new, seeds) that
  # covers all they cover together.
  mkdir -p "$work/$t.min"
  "$bin/fuzz-$t" -merge=1 -max_len=4096 "$work/$t.min" "$corpus" "$work/$t" "$work/seeds/$t" \
    > "$work/$t.merge" 2>&1
  rm -f "$corpus"/*
  cp "$work/$t.min"/* "$corpus"/
  shown=$seconds
  [[ -z ${FUZZ_RUNS:-} ]] || shown=-
  python3 - "$t" "$shown" "$work/$t.log" "$corpus" "$artifacts" "$status" <<'PY'
import os, re, sys
name, seconds, log, corpus, artifacts, status = sys.argv[1:]
text = open(log, errors="replace").read()
runs = re.search(r"stat::number_of_executed_units: (\d+)", text)
rate = re.search(r"stat::average_exec_per_sec:\s+(\d+)", text)
cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
crashes = [f for f in os.listdir(artifacts) if not f.startswith(".")]
print(f"{name:<9} {seconds:>8} {runs.group(1) if runs else '-':>10} {rate.group(1) if rate else '-':>9} "
      f"{cov[-1][0] if cov else '-':>6} {cov[-1][1] if cov else '-':>7} {len(os.listdir(corpus)):>7} {len(crashes):>8}")
if status != "0":
    print(f"  {name}: libFuzzer stopped with status {status}; the input is in {artifacts}/; last lines:")
    print("  " + "\n  ".join(text.strip().splitlines()[-12:]))
PY
  [[ $status == 0 ]] || found=1
done

# Line coverage of the code the targets reach, replaying the kept corpus
# (source-based coverage; needs rustup's llvm-tools component).
tools=$(rustc --print sysroot)/lib/rustlib/$host/bin
if [[ -x $tools/llvm-cov ]]; then
  # Instrumented build scripts write profiles too: into the work folder, not the repo.
  test_bin=$(RUSTFLAGS="-Cinstrument-coverage" LLVM_PROFILE_FILE="$work/build-%p-%m.profraw" cargo test --release --quiet -p fedfuzz --test corpus \
    --target-dir target/coverage --no-run --message-format=json |
    python3 -c 'import json,sys; print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "corpus"])')
  LLVM_PROFILE_FILE="$work/corpus-%p.profraw" "$test_bin" --quiet every_seed > /dev/null
  "$tools/llvm-profdata" merge -sparse "$work"/corpus-*.profraw -o "$work/corpus.profdata"
  echo
  echo "line coverage of the kept corpus (cargo test -p fedfuzz --test corpus):"
  "$tools/llvm-cov" report "$test_bin" -instr-profile="$work/corpus.profdata" \
    fedcore/src/protocol/frame.rs fedcore/src/protocol/message.rs \
    fedcore/src/protocol/transfer.rs fedcore/src/data.rs fedhost/src/dataset.rs
else
  echo "(no line coverage: rustup component add llvm-tools)"
fi
# A crash, a leak or a timeout fails the campaign.
exit "${found:-0}"
