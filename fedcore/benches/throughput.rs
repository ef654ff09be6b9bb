//! Training throughput (samples/s) and aggregation throughput (parameters/s).
//!
//! `cargo bench -p fedcore`. The physical limits of one core whose SGEMM peaks
//! at 175 GFLOP/s (the 2-core EPYC these were first worked out on; `bench/ratio.sh`
//! measures the machine at hand), with a sample's FLOP counted as that bench
//! counts them: MLP 784-128-10 0.41 MFLOP, so 430k samples/s; the reference
//! CNN 4.03 MFLOP, so 43k samples/s.

// A benchmark has nothing to recover to: failing loudly is right.
#![allow(clippy::expect_used)]

#[path = "../tests/support/mnist.rs"]
mod support;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedcore::aggregate::FedAvg;
use fedcore::kernels::host::Host;
use fedcore::kernels::{Kernels, Portable};
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::scalar::{Fixed, Scalar};
use fedcore::train::{TrainConfig, Trainer};

const SAMPLES: usize = 2048;

fn bench_fit<S: Scalar, K: Kernels<S>>(
    c: &mut Criterion,
    mnist: &support::Mnist,
    name: &str,
    spec: &str,
    cfg: TrainConfig,
) {
    let spec: ModelSpec = spec.parse().expect("valid spec");
    let data = mnist.train().slice(0..SAMPLES);
    let mut params = vec![S::ZERO; spec.param_count()];
    init_params(&Plan::new(&spec), &mut params, &mut Rng::new(1));
    let mut trainer = Trainer::<S, _, K>::new(&spec, &cfg).expect("valid config");
    let mut group = c.benchmark_group("train");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.sample_size(10);
    group.bench_function(name, |b| {
        // Each timed fit starts from the same initial weights. Carried over,
        // the hundreds of fits criterion runs overfit the 2048 samples and the
        // later fits run at about half the speed (the CNN: 8.4k against 14.9k
        // samples/s on a 2-core Xeon with AVX-512): subnormal floats, which
        // Intel cores take a slow path for and which host-client flushes to
        // zero on its training threads (`fedhost::subnormal`), fedcore alone
        // not. Carried over with them flushed, the same bench ran 12.1-13.7k.
        b.iter_batched_ref(
            || params.clone(),
            |params| trainer.fit(params, &data, 3).expect("fit"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn training(c: &mut Criterion) {
    let mnist = support::Mnist::load();
    let batch32 = TrainConfig::default();
    let in_place = TrainConfig {
        batch_size: 1,
        momentum: 0.0,
        ..TrainConfig::default()
    };
    bench_fit::<f32, Host>(
        c,
        &mnist,
        "f32 mlp:784-128-10 batch 32",
        "mlp:784-128-10",
        batch32,
    );
    bench_fit::<f32, Host>(c, &mnist, "f32 cnn batch 32", "cnn", batch32);
    bench_fit::<Fixed, Portable>(
        c,
        &mnist,
        "Q16.16 mlp:784-32-10 batch 32",
        "mlp:784-32-10",
        batch32,
    );
    bench_fit::<Fixed, Portable>(
        c,
        &mnist,
        "Q16.16 mlp:784-32-10 in place",
        "mlp:784-32-10",
        in_place,
    );
    bench_fit::<f32, Host>(
        c,
        &mnist,
        "f32 mlp:784-32-10 in place",
        "mlp:784-32-10",
        in_place,
    );
}

fn aggregation(c: &mut Criterion) {
    let params = ModelSpec::reference_cnn().param_count();
    let update: Vec<f32> = (0..params).map(|i| (i % 97) as f32 * 1e-3).collect();
    let mut agg = FedAvg::new(vec![0.0f64; params]);
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(params as u64));
    group.bench_function("fedavg fold cnn update", |b| {
        b.iter(|| {
            for (i, chunk) in update.chunks(16_384).enumerate() {
                agg.fold(i * 16_384, chunk.iter().copied(), 12_000)
                    .expect("in range");
            }
            agg.commit(12_000);
        })
    });
    group.finish();
}

criterion_group!(benches, training, aggregation);
criterion_main!(benches);
