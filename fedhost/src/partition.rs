//! Splitting a dataset among clients.
//!
//! Every client computes its own share from the same seed, so the shares of
//! separate processes agree without talking to each other:
//! - `iid`: the 60k train and 10k test samples shuffled and cut into equal,
//!   disjoint shards;
//! - `dirichlet:<alpha>`: for each class, client proportions drawn from
//!   Dirichlet(alpha), the same proportions cutting that class's train and test
//!   samples (small alpha: each client sees few classes);
//! - `shards:<S>`: McMahan et al.'s pathological split: the samples sorted by
//!   label, cut into `S` shards a client, and the shards dealt at random (each
//!   client sees about `S` classes); train and test alike;
//! - `classes:<C>`: each client holds `C` classes (dealt round a seeded class
//!   order, so every class has holders when `clients * C` reaches the class
//!   count), each class's samples shared evenly among its holders;
//! - `seed`: the reference lab's split: each client takes all 70k samples and
//!   draws its own random 70/30 train/test split. Clients' test samples are
//!   other clients' training samples, so accuracy is inflated: not comparable
//!   with `iid`.

use std::str::FromStr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};

use crate::dataset::Labels;

/// How samples are split among clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    /// Disjoint equal shards of train and test.
    Iid,
    /// Label-skewed shards, class proportions from Dirichlet(alpha).
    Dirichlet(f64),
    /// Label-sorted shards, this many a client (McMahan et al.).
    Shards(u32),
    /// This many classes a client.
    Classes(u32),
    /// Each client's own random 70/30 split of all samples (leaks test samples).
    Seed,
}

impl FromStr for Partition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "iid" => Ok(Partition::Iid),
            "seed" => Ok(Partition::Seed),
            _ => {
                let count = |prefix: &str| {
                    s.strip_prefix(prefix)
                        .map(|n| n.parse::<u32>().ok().filter(|&n| n > 0))
                };
                if let Some(shards) = count("shards:") {
                    return shards.map(Partition::Shards).ok_or_else(|| {
                        format!("partition '{s}': shards:<S> takes a whole number of shards a client, at least 1")
                    });
                }
                if let Some(classes) = count("classes:") {
                    return classes.map(Partition::Classes).ok_or_else(|| {
                        format!("partition '{s}': classes:<C> takes a whole number of classes a client, at least 1")
                    });
                }
                let alpha = s
                    .strip_prefix("dirichlet:")
                    .and_then(|a| a.parse::<f64>().ok())
                    .filter(|a| *a > 0.0 && a.is_finite())
                    .ok_or_else(|| format!("unknown partition '{s}': use iid, seed, dirichlet:<alpha> with alpha > 0, shards:<S> or classes:<C>"))?;
                Ok(Partition::Dirichlet(alpha))
            }
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Partition::Shards(n) => write!(f, "shards:{n}"),
            Partition::Classes(n) => write!(f, "classes:{n}"),
            Partition::Seed => write!(f, "seed"),
        }
    }
}

/// A Dirichlet concentration that is not a positive number.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("dirichlet alpha must be a positive number, got {0}")]
pub struct BadAlpha(pub f64);

/// A client's samples, as pool indices (training samples first, then test samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Samples to train on.
    pub train: Vec<u32>,
    /// Samples to evaluate on.
    pub test: Vec<u32>,
}

impl Partition {
    /// Client `client`'s share (of `clients`), from the labels and the federation's `seed`.
    pub fn assign(
        &self,
        labels: &Labels,
        client: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Assignment, BadAlpha> {
        let clients = clients.max(1);
        let (n_train, n_test) = (labels.train.len() as u32, labels.test.len() as u32);
        let mut rng = StdRng::seed_from_u64(seed);
        match *self {
            Partition::Iid => {
                let mut cut = |n: u32, offset: u32| {
                    let mut all: Vec<u32> = (offset..offset + n).collect();
                    all.shuffle(&mut rng);
                    let (start, end) = (
                        client * all.len() / clients,
                        (client + 1) * all.len() / clients,
                    );
                    all[start..end].to_vec()
                };
                let train = cut(n_train, 0);
                Ok(Assignment {
                    train,
                    test: cut(n_test, n_train),
                })
            }
            Partition::Dirichlet(alpha) => {
                let classes = 1 + usize::from(labels.train.iter().copied().max().unwrap_or(0));
                // Gamma(alpha, 1) draws, normalised, are a Dirichlet(alpha) draw.
                let gamma = Gamma::new(alpha, 1.0).map_err(|_| BadAlpha(alpha))?;
                let proportions: Vec<Vec<f64>> = (0..classes)
                    .map(|_| {
                        let g: Vec<f64> = (0..clients)
                            .map(|_| gamma.sample(&mut rng).max(1e-12))
                            .collect();
                        let sum: f64 = g.iter().sum();
                        g.iter().map(|x| x / sum).collect()
                    })
                    .collect();
                let mut cut = |set: &[u8], offset: u32| {
                    let mut mine = Vec::new();
                    for (class, p) in proportions.iter().enumerate() {
                        let mut of_class: Vec<u32> = (0..set.len() as u32)
                            .filter(|&i| usize::from(set[i as usize]) == class)
                            .map(|i| offset + i)
                            .collect();
                        of_class.shuffle(&mut rng);
                        let before: f64 = p[..client].iter().sum();
                        let n = of_class.len() as f64;
                        let (start, end) =
                            ((before * n) as usize, ((before + p[client]) * n) as usize);
                        mine.extend_from_slice(&of_class[start..end.min(of_class.len())]);
                    }
                    mine
                };
                let train = cut(&labels.train, 0);
                Ok(Assignment {
                    train,
                    test: cut(&labels.test, n_train),
                })
            }
            Partition::Shards(per_client) => {
                let mut deal = |set: &[u8], offset: u32| {
                    let mut sorted: Vec<u32> = (0..set.len() as u32).collect();
                    sorted.sort_by_key(|&i| set[i as usize]);
                    let shards = clients * per_client as usize;
                    let mut order: Vec<usize> = (0..shards).collect();
                    order.shuffle(&mut rng);
                    let mut mine = Vec::new();
                    for &shard in &order[client * per_client as usize..][..per_client as usize] {
                        let (start, end) = (
                            shard * sorted.len() / shards,
                            (shard + 1) * sorted.len() / shards,
                        );
                        mine.extend(sorted[start..end].iter().map(|&i| offset + i));
                    }
                    mine
                };
                let train = deal(&labels.train, 0);
                Ok(Assignment {
                    train,
                    test: deal(&labels.test, n_train),
                })
            }
            Partition::Classes(per_client) => {
                let classes = 1 + usize::from(labels.train.iter().copied().max().unwrap_or(0));
                let per_client = (per_client as usize).min(classes);
                let mut order: Vec<usize> = (0..classes).collect();
                order.shuffle(&mut rng);
                let order = &order;
                let held =
                    |k: usize| (0..per_client).map(move |j| order[(k * per_client + j) % classes]);
                let mine: Vec<usize> = held(client).collect();
                let cut = |set: &[u8], offset: u32| {
                    let mut out = Vec::new();
                    for &class in &mine {
                        let holders: Vec<usize> = (0..clients)
                            .filter(|&k| held(k).any(|c| c == class))
                            .collect();
                        let rank = holders.iter().position(|&k| k == client).unwrap_or(0);
                        let mut of_class: Vec<u32> = (0..set.len() as u32)
                            .filter(|&i| usize::from(set[i as usize]) == class)
                            .map(|i| offset + i)
                            .collect();
                        // The same order for every holder: seeded by the class.
                        let mut class_rng = StdRng::seed_from_u64(
                            seed ^ (class as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        );
                        of_class.shuffle(&mut class_rng);
                        let n = of_class.len();
                        let h = holders.len().max(1);
                        out.extend_from_slice(&of_class[rank * n / h..(rank + 1) * n / h]);
                    }
                    out
                };
                let train = cut(&labels.train, 0);
                Ok(Assignment {
                    train,
                    test: cut(&labels.test, n_train),
                })
            }
            Partition::Seed => {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                let mut all: Vec<u32> = (0..n_train + n_test).collect();
                all.shuffle(&mut rng);
                let test = all.split_off(all.len() * 7 / 10);
                Ok(Assignment { train: all, test })
            }
        }
    }
}
