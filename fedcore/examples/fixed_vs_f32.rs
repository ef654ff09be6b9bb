//! Measures how fixed-point training compares with f32 on full MNIST, for each
//! fixed format and rounding mode, under identical initialisation, sample order
//! and settings. This is how Q16.16 with stochastic rounding was chosen.
//!
//! `cargo run --release -p fedcore --example fixed_vs_f32 -- [epochs] [hidden]`

#[path = "../tests/support/mnist.rs"]
mod support;

use std::time::Instant;

use fedcore::Error;
use fedcore::fixed::FixedI32;
use fedcore::fixed::types::extra::{U20, U24};
use fedcore::kernels::host::Host;
use fedcore::kernels::{Kernels, Portable};
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::scalar::{Fixed, Scalar};
use fedcore::train::{Rounding, TrainConfig, Trainer};

fn run<S: Scalar, K: Kernels<S>>(
    mnist: &support::Mnist,
    spec: &ModelSpec,
    cfg: &TrainConfig,
    label: &str,
) -> Result<(), Error> {
    let mut params = vec![S::ZERO; spec.param_count()];
    init_params(&Plan::new(spec), &mut params, &mut Rng::new(1));
    let mut trainer = Trainer::<S, _, K>::new(spec, cfg)?;
    let start = Instant::now();
    let train = trainer.fit(&mut params, &mnist.train(), 7)?;
    let secs = start.elapsed().as_secs_f64();
    let test = trainer.evaluate(&params, &mnist.test())?;
    println!(
        "{:<8} {:<34} train loss {:.4}  test loss {:.4}  test accuracy {:.2}%  ({secs:.1} s)",
        S::NAME,
        label,
        train.loss(),
        test.loss(),
        100.0 * test.accuracy()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let epochs: u32 = args.next().map_or(Ok(1), |a| a.parse())?;
    let hidden: u32 = args.next().map_or(Ok(32), |a| a.parse())?;
    let spec = ModelSpec::mlp(&[784, hidden, 10])?;
    let mnist = support::Mnist::load();
    println!("MLP {spec}, {epochs} epoch(s) on 60,000, tested on 10,000");
    for (label, base) in [
        (
            "in place, batch 1, lr 0.01",
            TrainConfig {
                batch_size: 1,
                momentum: 0.0,
                ..TrainConfig::default()
            },
        ),
        ("batch 32, lr 0.01, momentum 0.9", TrainConfig::default()),
    ] {
        let cfg = TrainConfig { epochs, ..base };
        let nearest = TrainConfig {
            rounding: Rounding::Nearest,
            ..cfg
        };
        run::<f32, Host>(&mnist, &spec, &cfg, label)?;
        run::<Fixed, Portable>(&mnist, &spec, &nearest, &format!("{label}, nearest"))?;
        run::<Fixed, Portable>(&mnist, &spec, &cfg, &format!("{label}, stochastic"))?;
        run::<FixedI32<U20>, Portable>(&mnist, &spec, &nearest, &format!("{label}, nearest"))?;
        run::<FixedI32<U20>, Portable>(&mnist, &spec, &cfg, &format!("{label}, stochastic"))?;
        run::<FixedI32<U24>, Portable>(&mnist, &spec, &nearest, &format!("{label}, nearest"))?;
        run::<FixedI32<U24>, Portable>(&mnist, &spec, &cfg, &format!("{label}, stochastic"))?;
    }
    Ok(())
}
