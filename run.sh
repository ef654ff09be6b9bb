#!/usr/bin/env bash
# The main job. Until the TCP federation (host-server + host-client) lands, this
# runs fedcore's in-process FedAvg simulation on MNIST: 5 IID clients, the
# reference training settings, the example-weighted average of accuracy.
#
#   ./run.sh [--rounds N] [--clients N] [--model mlp:784-128-10|cnn]
set -euo pipefail
cd "$(dirname "$0")"

rounds=5 clients=5 model=mlp:784-128-10
while (($#)); do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --clients) clients=${2:?--clients needs a number}; shift 2 ;;
    --model) model=${2:?--model needs a spec such as mlp:784-128-10 or cnn}; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet -p fedcore --example simulate
exec ./target/release/examples/simulate "$rounds" "$clients" "$model"
