//! An in-process FedAvg simulation on MNIST, built from fedcore alone: every
//! client trains from the global model on its own IID shard, the updates are
//! folded into one streaming FedAvg accumulator, and the new global model is
//! scored on each client's test shard with the example-weighted average.
//! No network: it shows the core at work until the TCP federation exists.
//!
//! `cargo run --release -p fedcore --example simulate -- [rounds] [clients] [model]`

#[path = "../tests/support/mnist.rs"]
mod support;

use std::time::Instant;

use fedcore::aggregate::{FedAvg, WeightedMean};
use fedcore::data::Dataset;
use fedcore::model::{ModelSpec, Plan, init_params};
use fedcore::rng::Rng;
use fedcore::train::{TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = args.next().map_or(Ok(5), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let spec: ModelSpec = args
        .next()
        .map_or(Ok(ModelSpec::mlp(&[784, 128, 10])?), |a| a.parse())?;
    if clients == 0 {
        return Err("need at least one client".into());
    }
    let mnist = support::Mnist::load();
    let (train, test) = (mnist.train(), mnist.test());
    let shard = |n: usize, i: usize| (i * n / clients)..((i + 1) * n / clients);
    let cfg = TrainConfig::default();
    let mut trainer = Trainer::<f32, _>::new(&spec, &cfg)?;
    let mut global = vec![0.0f32; spec.param_count()];
    init_params(&Plan::new(&spec), &mut global, &mut Rng::new(0));
    let mut agg = FedAvg::new(vec![0.0f64; global.len()]);
    let mut local = global.clone();
    println!(
        "FedAvg simulation: {spec} ({} parameters), {clients} clients, IID, {rounds} rounds",
        global.len()
    );
    println!(
        "{:>5} {:>10} {:>10} {:>8}",
        "round", "accuracy", "loss", "seconds"
    );
    let start = Instant::now();
    for round in 1..=rounds {
        let t = Instant::now();
        agg.reset();
        for i in 0..clients {
            local.copy_from_slice(&global);
            let data = train.slice(shard(train.len(), i));
            let stats = trainer.fit(&mut local, &data, u64::from(round) << 16 | i as u64)?;
            agg.fold(0, local.iter().copied(), u64::from(stats.examples))?;
            agg.commit(u64::from(stats.examples));
        }
        agg.finish(&mut global)?;
        let (mut acc, mut loss) = (WeightedMean::default(), WeightedMean::default());
        for i in 0..clients {
            let s = trainer.evaluate(&global, &test.slice(shard(test.len(), i)))?;
            acc.add(u64::from(s.examples), s.accuracy());
            loss.add(u64::from(s.examples), s.loss());
        }
        let (acc, loss) = (acc.mean().unwrap_or(0.0), loss.mean().unwrap_or(0.0));
        println!(
            "{round:>5} {:>9.2}% {loss:>10.4} {:>8.2}",
            100.0 * acc,
            t.elapsed().as_secs_f64()
        );
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
