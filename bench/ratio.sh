#!/usr/bin/env bash
# The ratio of training to the machine: names the machine, then runs fedcore's
# ratio bench (one thread): the SGEMM peak of the library the f32 path uses, the
# same library on the products training does, and each model's training
# throughput in samples/s, GFLOP/s and as a fraction of that peak.
#
#   bench/ratio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(lscpu | sed -n 's/^Model name: *//p')
cores=$(nproc)
vector=$(grep -o -w -m1 -E 'avx512f' /proc/cpuinfo || grep -o -w -m1 -E 'avx2' /proc/cpuinfo || echo "no AVX2")
echo "machine: $model, $cores cores, widest vector unit: $vector"
cargo bench --quiet -p fedcore --bench ratio 2>/dev/null
