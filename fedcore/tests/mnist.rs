//! Training on real MNIST: f32 and fixed point both learn.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

#[path = "support/mnist.rs"]
mod support;

use fedcore::kernels::host::Host;
use fedcore::kernels::{Kernels, Portable};
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::scalar::{Fixed, Scalar};
use fedcore::train::{Rounding, TrainConfig, Trainer};

fn train_and_score<S: Scalar, K: Kernels<S>>(
    cfg: &TrainConfig,
    train_n: usize,
    test_n: usize,
) -> f32 {
    score::<S, K>(
        &ModelSpec::mlp(&[784, 32, 10]).unwrap(),
        cfg,
        train_n,
        test_n,
    )
}

fn score<S: Scalar, K: Kernels<S>>(
    spec: &ModelSpec,
    cfg: &TrainConfig,
    train_n: usize,
    test_n: usize,
) -> f32 {
    let mnist = support::Mnist::load();
    let spec = spec.clone();
    let mut params = vec![S::ZERO; spec.param_count()];
    init_params(&Plan::new(&spec), &mut params, &mut Rng::new(1));
    let mut trainer = Trainer::<S, _, K>::new(&spec, cfg).unwrap();
    trainer
        .fit(&mut params, &mnist.train().slice(0..train_n), 7)
        .unwrap();
    let stats = trainer
        .evaluate(&params, &mnist.test().slice(0..test_n))
        .unwrap();
    assert!(stats.loss().is_finite());
    stats.accuracy()
}

#[test]
fn f32_and_fixed_minibatch_momentum_learn_mnist_alike() {
    // The reference settings (batch 32, lr 0.01, momentum 0.9), one epoch on 10,000 samples.
    let f32_acc = train_and_score::<f32, Host>(&TrainConfig::default(), 10_000, 10_000);
    let fixed_acc = train_and_score::<Fixed, Portable>(&TrainConfig::default(), 10_000, 10_000);
    assert!(f32_acc > 0.86, "f32 accuracy {f32_acc}");
    assert!(
        (f32_acc - fixed_acc).abs() < 0.01,
        "f32 {f32_acc} vs Q16.16 {fixed_acc}"
    );
}

#[test]
fn fixed_in_place_learns_mnist() {
    let cfg = TrainConfig {
        batch_size: 1,
        momentum: 0.0,
        rounding: Rounding::Stochastic,
        ..TrainConfig::default()
    };
    let acc = train_and_score::<Fixed, Portable>(&cfg, 10_000, 10_000);
    assert!(acc > 0.88, "fixed accuracy {acc}");
}

#[test]
fn reference_cnn_learns_mnist() {
    let acc = score::<f32, Host>(
        &ModelSpec::reference_cnn(),
        &TrainConfig::default(),
        6_000,
        10_000,
    );
    assert!(acc > 0.90, "cnn accuracy {acc}");
}
