//! A participant's own side, whoever coordinates it: its data, the model it
//! holds, and training and evaluation on blocking threads, at most one per
//! core of this process and, with training slots, one per core of the machine
//! (for models large enough that turns pay, [`Slots::turn_for`]).
//!
//! Both conversations drive it: ours ([`crate::participant`]) and Flower's
//! ([`crate::flower`]). The trainer is kept between rounds, so its arena is
//! allocated once and a velocity kept for the next fit survives evaluations.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fedcore::data::Dataset;
use fedcore::kernels::host::Host;
use fedcore::model::ModelSpec;
use fedcore::train::{Stats, TrainConfig, Trainer};
use fedhost::dataset::Shard;
use fedhost::share::Share;
use tokio::sync::Semaphore;

use crate::slots::{SlotConfig, Slots};

/// One participant's data, cores and model.
pub struct Local {
    data: Arc<Share>,
    cores: Arc<Semaphore>,
    slots: Option<Arc<Slots>>,
    model: Option<Model>,
}

/// The federation's model as this participant holds it.
struct Model {
    spec: ModelSpec,
    params: Vec<f32>,
    trainer: Option<Trainer<f32, Vec<f32>, Host>>,
}

/// An evaluation's figures.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    /// Its loss, accuracy and examples.
    pub stats: Stats,
    /// Seconds it took.
    pub seconds: f32,
}

impl Local {
    /// A participant on `data`, training on one of `cores` at a time and, with
    /// `slots`, in the machine's training slots.
    pub fn new(
        data: Arc<Share>,
        cores: Arc<Semaphore>,
        slots: Option<&SlotConfig>,
    ) -> anyhow::Result<Self> {
        let slots = match slots {
            Some(slots) => Some(Arc::new(Slots::open(slots).with_context(|| {
                format!("cannot open the training slots in {}", slots.dir.display())
            })?)),
            None => None,
        };
        Ok(Local {
            data,
            cores,
            slots,
            model: None,
        })
    }

    /// Training examples it holds.
    pub fn train_examples(&self) -> u32 {
        self.data.train.len() as u32
    }

    /// Test examples it holds.
    pub fn test_examples(&self) -> u32 {
        self.data.test.len() as u32
    }

    /// What its samples are (told in the hello, so that a model they do not
    /// fit is refused at once).
    pub fn data_shape(&self) -> fedcore::protocol::DataShape {
        fedcore::protocol::DataShape::of(&self.data.train, &self.data.test)
    }

    /// Holds `spec` from now on: its parameters are zeros if it was not the
    /// model held (and the trainer goes). True when the model changed.
    pub fn hold(&mut self, spec: &ModelSpec) -> bool {
        if self.model.as_ref().is_some_and(|m| &m.spec == spec) {
            return false;
        }
        self.model = Some(Model {
            spec: spec.clone(),
            params: vec![0.0; spec.param_count()],
            trainer: None,
        });
        true
    }

    /// The held model's parameters.
    pub fn params(&mut self) -> anyhow::Result<&mut Vec<f32>> {
        Ok(&mut self.model_mut()?.params)
    }

    fn model_mut(&mut self) -> anyhow::Result<&mut Model> {
        self.model
            .as_mut()
            .context("no model yet: the coordinator sent an instruction before the model")
    }

    /// Trains the held parameters in place on the training data under `cfg`,
    /// in the order `seed` gives.
    pub async fn fit(&mut self, cfg: TrainConfig, seed: u64) -> anyhow::Result<Stats> {
        let data = self.data.train.clone();
        self.compute(Some(cfg), data, move |t, p, d, between| {
            t.fit_with(p, d, seed, between)
        })
        .await
    }

    /// Scores the held parameters on the test data.
    pub async fn evaluate(&mut self) -> anyhow::Result<Scored> {
        let t = Instant::now();
        let data = self.data.test.clone();
        // The held trainer as it is (its arena serves evaluation too), so that
        // a velocity kept for the next fit survives.
        let stats = self
            .compute(None, data, |t, p, d, _| t.evaluate(p, d))
            .await?;
        Ok(Scored {
            stats,
            seconds: t.elapsed().as_secs_f32(),
        })
    }

    /// Runs `work` on a blocking thread once a core of this process is free
    /// and in a machine-wide training slot if there are slots, with a trainer
    /// for `cfg` (the held one when its arena fits; with no `cfg`, the held one
    /// as it is, or one for evaluation) and the parameters moved there and back.
    async fn compute<R: Send + 'static>(
        &mut self,
        cfg: Option<TrainConfig>,
        data: Shard,
        work: impl FnOnce(
            &mut Trainer<f32, Vec<f32>, Host>,
            &mut Vec<f32>,
            &Shard,
            &mut dyn FnMut(usize),
        ) -> Result<R, fedcore::Error>
        + Send
        + 'static,
    ) -> anyhow::Result<R> {
        let slots = self.slots.clone();
        let permit = Arc::clone(&self.cores).acquire_owned().await?;
        let model = self.model_mut()?;
        let (spec, mut params, trainer) = (
            model.spec.clone(),
            std::mem::take(&mut model.params),
            model.trainer.take(),
        );
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Pool threads are reused: cheap enough to set every time.
            fedhost::subnormal::flush_to_zero();
            let reused = trainer.and_then(|mut t| match cfg {
                Some(cfg) => t.set_config(&cfg).is_ok().then_some(t),
                None => Some(t),
            });
            let mut trainer = match reused {
                Some(t) => t,
                None => Trainer::new(&spec, &cfg.unwrap_or_else(TrainConfig::evaluation))?,
            };
            let working_set = fedcore::train::memory::<f32, Host>(&spec, trainer.config()).total();
            let mut turn = slots.as_deref().and_then(|s| s.turn_for(working_set));
            let mut between = |trained| {
                if let Some(turn) = turn.as_mut() {
                    turn.between(trained);
                }
            };
            let result = work(&mut trainer, &mut params, &data, &mut between);
            Ok::<_, fedcore::Error>((result, trainer, params))
        })
        .await?;
        let (result, trainer, params) = joined.context("cannot build a trainer")?;
        (model.trainer, model.params) = (Some(trainer), params);
        result.context("local training failed")
    }
}
