//! How close training runs to the machine: in one run, the one-core SGEMM peak
//! of the library the f32 path multiplies with (the gemm crate, timed through
//! the host backend's `Kernels::gemm`, as the layers call it), that path and
//! matrixmultiply (what it used before) on the products training does, and
//! each model's training throughput as GFLOP/s and as a fraction of that peak.
//!
//! `cargo bench -p fedcore --bench ratio` (or `bench/ratio.sh`, which names the
//! machine). Every figure is the median of several timed repetitions; one
//! thread; the peak is the best of two measurements, before and after the
//! training runs, so a noisy moment does not lower it. A sample's training FLOP
//! are counted from the products it does: 2 per multiply-add forward, 2 for the
//! weight gradient, and 2 more for the input gradient where a layer below needs
//! one (the first layer with weights does not); element-wise work (ReLU,
//! pooling, bias, softmax) is not counted.

// A benchmark has nothing to recover to: failing loudly is right.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/mnist.rs"]
mod support;

use std::time::Instant;

use fedcore::kernels::Kernels;
use fedcore::kernels::host::Host;
use fedcore::linalg::{Mat, MatMut};
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::{TrainConfig, Trainer};
use ndarray::Array2;

const REPEATS: usize = 7;

/// Median seconds of `REPEATS` runs of `work` (after one warm-up).
fn median_seconds(mut work: impl FnMut()) -> f64 {
    median_seconds_from(|| (), |()| work())
}

/// Median seconds of `REPEATS` runs of `work`, each (and one warm-up) on what
/// an untimed `setup` returns; what `work` returns is dropped untimed.
fn median_seconds_from<T, R>(mut setup: impl FnMut() -> T, mut work: impl FnMut(T) -> R) -> f64 {
    work(setup());
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let input = setup();
            let t = Instant::now();
            let output = work(input);
            let seconds = t.elapsed().as_secs_f64();
            drop(output);
            seconds
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

/// GFLOP/s of `C = A·B` for `(m, k, n)`, repeated to take at least ~50 ms:
/// `(matrixmultiply, gemm)`. A transposed operand (`a_t`, `b_t`) is stored the
/// other way round and multiplied through a transposed view, as backward does.
fn sgemm_gflops(m: usize, k: usize, n: usize, (a_t, b_t): (bool, bool)) -> (f64, f64) {
    let fill = |rows: usize, cols: usize| {
        Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3) % 13) as f32 * 0.1)
    };
    let a = if a_t { fill(k, m) } else { fill(m, k) };
    let b = if b_t { fill(n, k) } else { fill(k, n) };
    let mut c = Array2::<f32>::zeros((m, n));
    let flop = 2.0 * (m * k * n) as f64;
    let reps = ((5e7 / flop).ceil() as usize).max(1);
    let (av, bv) = (
        if a_t { a.t() } else { a.view() },
        if b_t { b.t() } else { b.view() },
    );
    let mm = median_seconds(|| {
        for _ in 0..reps {
            ndarray::linalg::general_mat_mul(1.0, &av, &bv, 0.0, &mut c);
        }
    });
    // fedcore's own f32 product, as the layers call it (the gemm crate, past
    // its size threshold, which every shape here passes).
    let (ap, bp) = (a.as_slice().unwrap(), b.as_slice().unwrap());
    let mut c = vec![0.0f32; m * n];
    let faer = median_seconds(|| {
        for _ in 0..reps {
            let a = if a_t {
                Mat::new(ap, k, m).t()
            } else {
                Mat::new(ap, m, k)
            };
            let b = if b_t {
                Mat::new(bp, n, k).t()
            } else {
                Mat::new(bp, k, n)
            };
            Host::gemm(a, b, MatMut::new(&mut c, m, n), None, 1.0);
        }
    });
    let rate = |seconds: f64| flop * reps as f64 / seconds / 1e9;
    (rate(mm), rate(faer))
}

/// Prints one shape's row.
fn row(label: &str, (mm, faer): (f64, f64)) {
    println!("{label:<44} {mm:>14.1} {faer:>10.1}");
}

/// FLOP of one sample's forward and backward products.
fn training_flop(plan: &Plan) -> f64 {
    plan.stages()
        .iter()
        .map(|s| {
            let (rows, k, units) = s.product_shape(1);
            let products = if s.needs_input_grad { 3.0 } else { 2.0 };
            2.0 * products * (rows * k * units) as f64
        })
        .sum()
}

/// The best square SGEMM of gemm (the f32 path's), in GFLOP/s, printing each.
fn square_peak() -> f64 {
    [256, 512, 1024]
        .into_iter()
        .map(|size| {
            let rates = sgemm_gflops(size, size, size, (false, false));
            row(&format!("{size} x {size} x {size} (square)"), rates);
            rates.1
        })
        .fold(0.0, f64::max)
}

fn main() {
    println!("one thread; medians of {REPEATS} runs");
    println!();
    println!("SGEMM, C = A·B, GFLOP/s");
    println!(
        "{:<44} {:>14} {:>10}",
        "shape (m x k x n)", "matrixmultiply", "gemm"
    );
    let before = square_peak();
    let mnist = support::Mnist::load();
    let batch = TrainConfig::default().batch_size as usize;
    let models = ["cnn", "mlp:784-128-10"];
    for model in models {
        let spec: ModelSpec = model.parse().unwrap();
        for stage in Plan::new(&spec).stages() {
            let (m, k, n) = stage.product_shape(batch);
            if m == 0 {
                continue;
            }
            // Forward (A·W), the weight gradient (Aᵀ·dY) and, below the first
            // layer, the input gradient (dY·Wᵀ), each with the layout backward uses.
            row(
                &format!("{model}: {m} x {k} x {n}"),
                sgemm_gflops(m, k, n, (false, false)),
            );
            row(
                &format!("{model}: {k} x {m} x {n} (weight grad)"),
                sgemm_gflops(k, m, n, (true, false)),
            );
            if stage.needs_input_grad {
                row(
                    &format!("{model}: {m} x {n} x {k} (input grad)"),
                    sgemm_gflops(m, n, k, (false, true)),
                );
            }
        }
    }
    const SAMPLES: usize = 2048;
    let data = mnist.train().slice(0..SAMPLES);
    let mut trained = Vec::new();
    for model in models {
        let spec: ModelSpec = model.parse().unwrap();
        let plan = Plan::new(&spec);
        let mut params = vec![0.0f32; spec.param_count()];
        init_params(&plan, &mut params, &mut Rng::new(1));
        let mut trainer = Trainer::<f32, _, Host>::new(&spec, &TrainConfig::default()).unwrap();
        // Every repetition from the initial weights, as the throughput bench
        // does: there criterion's hundreds of fits carried over overfit the
        // 2048 samples into subnormal floats, slow on Intel cores. These eight
        // fits measured the same either way (2-core Xeon, CNN 18.3k carried
        // over, 18.0k fresh, medians of three), but would not with more.
        let seconds = median_seconds_from(
            || params.clone(),
            |mut fresh| {
                trainer.fit(&mut fresh, &data, 3).unwrap();
                fresh
            },
        );
        trained.push((model, SAMPLES as f64 / seconds, training_flop(&plan)));
    }
    println!("again, after training:");
    let peak = before.max(square_peak());
    println!();
    println!("peak (gemm's best square, the library training uses): {peak:.1} GFLOP/s");
    println!();
    println!(
        "{:<18} {:>12} {:>13} {:>10} {:>9}",
        "training (f32)", "samples/s", "MFLOP/sample", "GFLOP/s", "of peak"
    );
    for (model, rate, flop) in trained {
        let gflops = rate * flop / 1e9;
        println!(
            "{model:<18} {rate:>12.0} {:>13.2} {gflops:>10.1} {:>8.1}%",
            flop / 1e6,
            100.0 * gflops / peak
        );
    }
}
