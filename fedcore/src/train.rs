//! Local training and evaluation: SGD with momentum, FedProx, and an in-place
//! batch-1 variant for the smallest devices.
//!
//! A [`Trainer`] owns no parameters: it trains the caller's flat buffer, using
//! one scratch arena whose exact size [`memory`] reports before anything is
//! allocated, so a device can size its static memory at boot. The arena can be
//! any `AsMut<[S]>`: a `Vec` on a host, a static array or a borrowed slice on a
//! device.
//!
//! The update is Keras' SGD: `v = momentum·v - lr·g; w += v` with `g` the batch
//! mean gradient (plus `mu·(w - w_global)` for FedProx). With batch size 1 and no
//! momentum the gradient of each weight row is applied as soon as it is computed,
//! so no gradient buffer exists at all: for the 784-32-10 MLP in Q16.16 that is
//! 102 KB of parameters and about 4 KB of everything else.

use core::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::data::{Dataset, Values};
use crate::kernels::Kernels;
use crate::model::network::{Fold, GradSink, Pass, backward, forward, sgd_step, softmax_xent};
use crate::model::{Layer, ModelSpec, Plan};
use crate::rng::{Permutation, Rng};
use crate::scalar::Scalar;

/// How fixed-point products in the weight update are rounded (f32 ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rounding {
    /// Round to nearest: updates smaller than half a unit in the last place are lost.
    Nearest,
    /// Round up with probability equal to the discarded fraction: unbiased, so small updates survive on average.
    Stochastic,
}

/// Whether SGD momentum carries over from one fit to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MomentumState {
    /// Every fit starts from zero velocity.
    Round,
    /// The velocity of the previous fit carries over while the weights are
    /// reset to the global model: what a Keras client that keeps one compiled
    /// model for the whole run does (the reference lab's).
    Persist,
}

/// Local training settings (what a round's fit instruction carries).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the local data.
    pub epochs: u32,
    /// Samples per gradient step.
    pub batch_size: u32,
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0 disables the velocity buffer).
    pub momentum: f32,
    /// FedProx proximal coefficient `mu` (0 disables the term and its anchor copy).
    pub proximal_mu: f32,
    /// Rounding of the fixed-point update.
    pub rounding: Rounding,
    /// Whether momentum carries over between fits.
    pub momentum_state: MomentumState,
}

impl Default for TrainConfig {
    /// The reference lab's settings: 1 epoch, batch 32, lr 0.01, momentum 0.9,
    /// kept from one fit to the next as its Keras clients keep it.
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 32,
            lr: 0.01,
            momentum: 0.9,
            proximal_mu: 0.0,
            rounding: Rounding::Stochastic,
            momentum_state: MomentumState::Persist,
        }
    }
}

impl TrainConfig {
    /// The settings every host evaluates with: no optimizer state (momentum 0),
    /// at the default training batch, so a client's training arena serves
    /// evaluation too. Scores do not depend on the batch.
    pub fn evaluation() -> Self {
        TrainConfig {
            momentum: 0.0,
            ..TrainConfig::default()
        }
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch_size == 0 {
            return Err(Error::BadConfig("batch size must be at least 1"));
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return Err(Error::BadConfig(
                "learning rate must be a finite number >= 0",
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::BadConfig("momentum must be in [0, 1)"));
        }
        if !(self.proximal_mu >= 0.0 && self.proximal_mu.is_finite()) {
            return Err(Error::BadConfig("proximal mu must be a finite number >= 0"));
        }
        Ok(())
    }

    /// True when training runs in place (batch 1, no momentum): no gradient buffer.
    pub fn in_place(&self) -> bool {
        self.batch_size == 1 && self.momentum == 0.0
    }
}

/// Bytes a model needs to train, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    /// The parameters themselves.
    pub parameters: usize,
    /// The gradient buffer (zero when training in place).
    pub gradients: usize,
    /// Momentum velocity and the FedProx anchor copy of the global model.
    pub optimizer_state: usize,
    /// Every layer's activations for one batch (kept for backward).
    pub activations: usize,
    /// Backward deltas, im2col matrix and the in-place gradient row.
    pub scratch: usize,
}

impl Memory {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.parameters + self.gradients + self.optimizer_state + self.activations + self.scratch
    }
}

/// Lengths (in scalars) of the trainer arena's parts, in arena order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    grads: usize,
    velocity: usize,
    anchor: usize,
    acts: usize,
    delta: usize,
    cols: usize,
    row: usize,
}

impl Layout {
    /// The arena for `plan` and `cfg`, on a backend that folds its steps
    /// into its products or not (`folds`).
    fn new(plan: &Plan, cfg: &TrainConfig, folds: bool) -> Self {
        let (b, p) = (cfg.batch_size as usize, plan.param_count());
        let in_place = cfg.in_place();
        Layout {
            // Folded steps, and steps in place, keep no gradients.
            grads: if in_place || folds { 0 } else { p },
            velocity: if cfg.momentum > 0.0 { p } else { 0 },
            anchor: if cfg.proximal_mu > 0.0 { p } else { 0 },
            acts: b * plan.acts_len(),
            delta: b * plan.delta_len(),
            cols: b * plan.cols_len(),
            // The in-place row, and the scratch a fused stage's gradients pass through.
            row: if in_place && !folds {
                plan.widest_row().max(plan.fused_params())
            } else {
                plan.fused_params()
            },
        }
    }

    fn total(&self) -> usize {
        self.grads + self.velocity + self.anchor + self.acts + 2 * self.delta + self.cols + self.row
    }
}

/// Exact bytes needed to train `spec` with `cfg` in scalar type `S` on the
/// backend `K`.
pub fn memory<S: Scalar, K: Kernels<S>>(spec: &ModelSpec, cfg: &TrainConfig) -> Memory {
    let plan = Plan::new(spec);
    let l = Layout::new(&plan, cfg, K::FOLDS_STEP);
    let size = core::mem::size_of::<S>();
    Memory {
        parameters: plan.param_count() * size,
        gradients: l.grads * size,
        optimizer_state: (l.velocity + l.anchor) * size,
        activations: l.acts * size,
        scratch: (2 * l.delta + l.cols + l.row) * size,
    }
}

/// Loss and accuracy over a pass, kept in integers until asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Samples seen.
    pub examples: u32,
    /// Correct argmax predictions.
    pub correct: u32,
    /// Summed cross-entropy, times 2^16.
    pub loss_q16: i64,
}

impl Stats {
    /// Mean cross-entropy loss.
    pub fn loss(&self) -> f32 {
        (self.loss_q16 as f64 / 65536.0 / f64::from(self.examples.max(1))) as f32
    }

    /// Fraction of correct predictions.
    pub fn accuracy(&self) -> f32 {
        self.correct as f32 / self.examples.max(1) as f32
    }

    fn add(&mut self, n: usize, loss_q16: i64, correct: u32) {
        self.examples += n as u32;
        self.loss_q16 += loss_q16;
        self.correct += correct;
    }
}

/// Trains and evaluates a model held in the caller's parameter buffer, in
/// scalar type `S`, with its arena in `B`, on the backend `K`.
#[derive(Debug)]
pub struct Trainer<S, B, K> {
    plan: Plan,
    cfg: TrainConfig,
    layout: Layout,
    arena: B,
    /// Whether the arena's velocity is the last fit's (kept for `MomentumState::Persist`).
    velocity_kept: bool,
    /// Whether the plan has dropout (whose masks need a seed a batch).
    dropout: bool,
    _scalar: PhantomData<(S, K)>,
}

/// The arena split into its parts.
struct Parts<'a, S> {
    grads: &'a mut [S],
    velocity: &'a mut [S],
    anchor: &'a mut [S],
    acts: &'a mut [S],
    delta: (&'a mut [S], &'a mut [S]),
    cols: &'a mut [S],
    row: &'a mut [S],
}

impl<S: Scalar, B: AsMut<[S]>, K: Kernels<S>> Trainer<S, B, K> {
    /// Scalars the arena must hold for `spec` and `cfg`.
    pub fn arena_len(spec: &ModelSpec, cfg: &TrainConfig) -> usize {
        Layout::new(&Plan::new(spec), cfg, K::FOLDS_STEP).total()
    }

    /// A trainer working in `arena` (at least [`Trainer::arena_len`] scalars).
    pub fn with_arena(spec: &ModelSpec, cfg: &TrainConfig, mut arena: B) -> Result<Self, Error> {
        cfg.validate()?;
        let plan = Plan::new(spec);
        let layout = Layout::new(&plan, cfg, K::FOLDS_STEP);
        let got = arena.as_mut().len();
        if got < layout.total() {
            return Err(Error::BufferLength {
                expected: layout.total(),
                got,
            });
        }
        let dropout = spec
            .layers()
            .iter()
            .any(|l| matches!(l, Layer::Dropout { .. }));
        Ok(Trainer {
            plan,
            cfg: *cfg,
            layout,
            arena,
            velocity_kept: false,
            dropout,
            _scalar: PhantomData,
        })
    }

    /// The resolved model.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The current settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Changes the settings (a new round may bring a new learning rate), if the arena still fits them.
    pub fn set_config(&mut self, cfg: &TrainConfig) -> Result<(), Error> {
        cfg.validate()?;
        let layout = Layout::new(&self.plan, cfg, K::FOLDS_STEP);
        let got = self.arena.as_mut().len();
        if got < layout.total() {
            return Err(Error::BufferLength {
                expected: layout.total(),
                got,
            });
        }
        // A new layout puts other buffers where the velocity was.
        self.velocity_kept &= layout == self.layout;
        self.cfg = *cfg;
        self.layout = layout;
        Ok(())
    }

    /// Trains `params` for the configured epochs on `data`; returns the last epoch's stats.
    /// Momentum starts from zero (or, with [`MomentumState::Persist`], from where
    /// the previous fit on this trainer left it) and the FedProx anchor is
    /// `params` as given.
    pub fn fit(
        &mut self,
        params: &mut [S],
        data: &impl Dataset,
        seed: u64,
    ) -> Result<Stats, Error> {
        self.fit_with(params, data, seed, |_| {})
    }

    /// [`Trainer::fit`], calling `between(samples)` between batches with the
    /// samples trained so far: where a host can give its core away for a while.
    pub fn fit_with(
        &mut self,
        params: &mut [S],
        data: &impl Dataset,
        seed: u64,
        mut between: impl FnMut(usize),
    ) -> Result<Stats, Error> {
        self.check(params.len(), data)?;
        let (plan, cfg) = (&self.plan, self.cfg);
        let Parts {
            grads,
            velocity,
            anchor,
            acts,
            delta,
            cols,
            row,
        } = split(self.arena.as_mut(), &self.layout);
        if !(cfg.momentum_state == MomentumState::Persist && self.velocity_kept) {
            velocity.fill(S::ZERO);
        }
        self.velocity_kept = !velocity.is_empty();
        anchor.copy_from_slice(&params[..anchor.len()]);
        let mut rng = Rng::new(seed);
        let lr = S::from_f32(cfg.lr);
        let momentum = S::from_f32(cfg.momentum);
        let prox = S::from_f32(cfg.lr * cfg.proximal_mu);
        let dithered = S::NEEDS_DITHER && cfg.rounding == Rounding::Stochastic;
        let batch = cfg.batch_size as usize;
        let mut stats = Stats::default();
        let mut trained = 0;
        for _ in 0..cfg.epochs {
            stats = Stats::default();
            let order = Permutation::new(data.len() as u32, &mut rng);
            let index = |i: usize| order.get(i as u32) as usize;
            for start in (0..data.len()).step_by(batch) {
                if trained > 0 {
                    between(trained);
                }
                let n = batch.min(data.len() - start);
                trained += n;
                let label = |k: usize| data.sample(index(start + k)).label;
                load(plan, acts, data, n, |k| index(start + k));
                // Drawn only for nets with dropout, so that others keep their streams.
                let seed = if self.dropout {
                    (u64::from(rng.next_u32()) << 32) | u64::from(rng.next_u32())
                } else {
                    0
                };
                let pass = Pass::Train { seed };
                forward::<S, K>(plan, params, acts, cols, n, pass);
                let cap = acts.len() / plan.acts_len();
                let logits = &acts[plan.logits_slot() * cap..][..n * plan.classes()];
                let (loss, correct) = softmax_xent(logits, label, plan.classes(), delta.0);
                stats.add(n, loss, correct);
                // lr times the batch *mean* gradient: backward produces sums.
                let step = lr.div(S::from_count(n as u32));
                let mut dither = || if dithered { rng.next_u32() } else { 1 << 31 };
                let deltas = (&mut *delta.0, &mut *delta.1);
                if K::FOLDS_STEP {
                    let fold = Fold {
                        velocity: &mut *velocity,
                        anchor: &*anchor,
                        coeffs: [step, momentum, prox],
                        scratch: &mut *row,
                    };
                    let sink = GradSink::Fold(fold);
                    backward::<S, K>(plan, params, acts, cols, deltas, n, pass, sink);
                    continue;
                }
                if cfg.in_place() {
                    // The same update as a mini-batch step without momentum, one row at a time.
                    let mut rule = |w: &mut [S], at: usize, g: &[S]| {
                        let anchor = anchor.get(at..at + w.len()).unwrap_or(&[]);
                        sgd_step(w, g, &mut [], anchor, [step, momentum, prox], &mut dither);
                    };
                    let sink = GradSink::Apply {
                        row,
                        rule: &mut rule,
                    };
                    backward::<S, K>(plan, params, acts, cols, deltas, n, pass, sink);
                } else {
                    let sink = GradSink::Store(grads);
                    backward::<S, K>(plan, params, acts, cols, deltas, n, pass, sink);
                    sgd_step(
                        params,
                        grads,
                        velocity,
                        anchor,
                        [step, momentum, prox],
                        &mut dither,
                    );
                }
            }
        }
        Ok(stats)
    }

    /// Loss and accuracy of `params` on `data`.
    pub fn evaluate(&mut self, params: &[S], data: &impl Dataset) -> Result<Stats, Error> {
        self.check(params.len(), data)?;
        let plan = &self.plan;
        let Parts {
            acts, delta, cols, ..
        } = split(self.arena.as_mut(), &self.layout);
        let batch = self.cfg.batch_size as usize;
        let mut stats = Stats::default();
        for start in (0..data.len()).step_by(batch) {
            let n = batch.min(data.len() - start);
            load(plan, acts, data, n, |k| start + k);
            forward::<S, K>(plan, params, acts, cols, n, Pass::Evaluate);
            let cap = acts.len() / plan.acts_len();
            let logits = &acts[plan.logits_slot() * cap..][..n * plan.classes()];
            let (loss, correct) = softmax_xent(
                logits,
                |k| data.sample(start + k).label,
                plan.classes(),
                delta.0,
            );
            stats.add(n, loss, correct);
        }
        Ok(stats)
    }

    /// Checks the parameter buffer and every sample's shape and label up front, so
    /// the passes themselves meet only valid data.
    fn check(&self, params: usize, data: &impl Dataset) -> Result<(), Error> {
        if params != self.plan.param_count() {
            return Err(Error::BufferLength {
                expected: self.plan.param_count(),
                got: params,
            });
        }
        if data.is_empty() {
            return Err(Error::EmptyDataset);
        }
        let (pixels, classes) = (self.plan.input_len(), self.plan.classes());
        for i in 0..data.len() {
            let s = data.sample(i);
            if s.values.len() != pixels {
                return Err(Error::SampleShape {
                    expected: pixels,
                    got: s.values.len(),
                });
            }
            if usize::from(s.label) >= classes {
                return Err(Error::LabelOutOfRange {
                    label: s.label,
                    classes,
                });
            }
        }
        Ok(())
    }
}

#[cfg(feature = "alloc")]
impl<S: Scalar, K: Kernels<S>> Trainer<S, alloc::vec::Vec<S>, K> {
    /// A trainer with a heap-allocated arena of exactly the size it needs.
    pub fn new(spec: &ModelSpec, cfg: &TrainConfig) -> Result<Self, Error> {
        let len = Self::arena_len(spec, cfg);
        Self::with_arena(spec, cfg, alloc::vec![S::ZERO; len])
    }
}

fn split<'a, S>(arena: &'a mut [S], l: &Layout) -> Parts<'a, S> {
    let (grads, rest) = arena.split_at_mut(l.grads);
    let (velocity, rest) = rest.split_at_mut(l.velocity);
    let (anchor, rest) = rest.split_at_mut(l.anchor);
    let (acts, rest) = rest.split_at_mut(l.acts);
    let (d0, rest) = rest.split_at_mut(l.delta);
    let (d1, rest) = rest.split_at_mut(l.delta);
    let (cols, rest) = rest.split_at_mut(l.cols);
    let row = &mut rest[..l.row];
    Parts {
        grads,
        velocity,
        anchor,
        acts,
        delta: (d0, d1),
        cols,
        row,
    }
}

/// Copies `n` samples, normalised, into the input slot (slot 0) of `acts`.
fn load<S: Scalar>(
    plan: &Plan,
    acts: &mut [S],
    data: &impl Dataset,
    n: usize,
    index: impl Fn(usize) -> usize,
) {
    let len = plan.input_len();
    for (k, x) in acts[..n * len].chunks_exact_mut(len).enumerate() {
        match data.sample(index(k)).values {
            Values::Bytes(pixels) => {
                for (v, &p) in x.iter_mut().zip(pixels) {
                    *v = S::from_pixel(p);
                }
            }
            Values::Floats(features) => {
                for (v, &f) in x.iter_mut().zip(features) {
                    *v = S::from_f32(f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Samples;
    use crate::kernels::Portable;
    use crate::kernels::host::Host;
    use crate::scalar::Fixed;

    #[test]
    fn device_mlp_memory_is_exact() {
        // 784-32-10 in Q16.16, in place: 25,450 parameters, activations 784 + 32 + 10,
        // two delta buffers of the widest output (32) and one gradient row (32).
        let spec = ModelSpec::mlp(&[784, 32, 10]).unwrap();
        let cfg = TrainConfig {
            batch_size: 1,
            momentum: 0.0,
            ..TrainConfig::default()
        };
        let m = memory::<Fixed, Portable>(&spec, &cfg);
        assert_eq!(
            m,
            Memory {
                parameters: 101_800,
                gradients: 0,
                optimizer_state: 0,
                activations: 3_304,
                scratch: 384
            }
        );
        assert_eq!(m.total(), 105_488);
        assert_eq!(
            Trainer::<Fixed, &mut [Fixed], Portable>::arena_len(&spec, &cfg) * 4,
            m.total() - m.parameters
        );
    }

    #[test]
    fn reference_cnn_memory_counts_every_buffer() {
        let (spec, cfg) = (ModelSpec::reference_cnn(), TrainConfig::default());
        // The fused block: no convolution output, its delta or im2col
        // matrix, only which position of each pooling window won (two bits a
        // pooled value); the scratch is two pooled-output deltas and the
        // fused stage's 320 gradients. The host folds its steps: no gradients.
        let m = memory::<f32, Host>(&spec, &cfg);
        assert_eq!(
            (m.parameters, m.gradients, m.optimizer_state),
            (2_168_920, 0, 2_168_920)
        );
        assert_eq!(m.activations, 32 * (784 + 5_408 + 352 + 100 + 10) * 4);
        assert_eq!(m.scratch, (32 * 2 * 5_408 + 320) * 4);
        let host = Trainer::<f32, std::vec::Vec<f32>, Host>::arena_len(&spec, &cfg);
        assert_eq!(host * 4, m.total() - m.parameters);
        // The portable backend keeps the gradients.
        let portable = memory::<f32, Portable>(&spec, &cfg);
        assert_eq!(portable.gradients, m.parameters);
        assert_eq!(portable.total(), m.total() + m.parameters);
    }

    #[test]
    fn a_device_cnn_fits_its_ram_on_the_fused_block() {
        // 4 filters 3x3, pooling, dense 10 on 28x28x1, in Q16.16, in place:
        // the fused block keeps the pooled output (676 values) and its winners
        // (11 words a filter), no convolution output or im2col matrix.
        let spec: ModelSpec = "28x28x1 conv:4x3 relu maxpool:2 flatten dense:10"
            .parse()
            .unwrap();
        let cfg = TrainConfig {
            batch_size: 1,
            momentum: 0.0,
            ..TrainConfig::default()
        };
        let m = memory::<Fixed, Portable>(&spec, &cfg);
        assert_eq!(m.parameters, (40 + 6_770) * 4);
        assert_eq!(m.activations, (784 + 676 + 44 + 10) * 4);
        // Two deltas of the pooled output, the widest gradient row (10) or
        // the fused stage's 40 gradients.
        assert_eq!(m.scratch, (2 * 676 + 40) * 4);
        assert!(m.total() < 40 * 1024, "{m:?}");
    }

    type HostTrainer = Trainer<f32, std::vec::Vec<f32>, Host>;

    #[test]
    fn persisted_momentum_carries_over_until_the_layout_changes() {
        let spec = ModelSpec::mlp(&[90, 7, 3]).unwrap();
        let data = noise::<90>(16, 3, 5);
        let mut init = std::vec![0.0f32; spec.param_count()];
        crate::model::init_params(&Plan::new(&spec), &mut init, &mut Rng::new(2));
        let cfg = |momentum_state| TrainConfig {
            batch_size: 4,
            momentum_state,
            ..TrainConfig::default()
        };
        // The second of two fits from the same weights, on one trainer.
        let second_fit = |trainer: &mut HostTrainer, between: &dyn Fn(&mut HostTrainer)| {
            let mut p = init.clone();
            trainer.fit(&mut p, &data, 1).unwrap();
            between(trainer);
            let mut p = init.clone();
            trainer.fit(&mut p, &data, 1).unwrap();
            p
        };
        let fresh = {
            let mut p = init.clone();
            HostTrainer::new(&spec, &cfg(MomentumState::Round))
                .unwrap()
                .fit(&mut p, &data, 1)
                .unwrap();
            p
        };
        let nothing = |_: &mut HostTrainer| {};
        let round = second_fit(
            &mut Trainer::new(&spec, &cfg(MomentumState::Round)).unwrap(),
            &nothing,
        );
        assert_eq!(round, fresh, "momentum restarts every fit");
        let persist = cfg(MomentumState::Persist);
        let kept = second_fit(&mut Trainer::new(&spec, &persist).unwrap(), &nothing);
        assert_ne!(kept, fresh, "the first fit's velocity carried over");
        // Evaluating on the same trainer leaves the velocity alone...
        let evaluated = second_fit(&mut Trainer::new(&spec, &persist).unwrap(), &|t| {
            t.evaluate(&init, &data).unwrap();
        });
        assert_eq!(evaluated, kept);
        // ...but settings that move the arena's buffers start it again from zero.
        let relaid = second_fit(&mut Trainer::new(&spec, &persist).unwrap(), &|t| {
            t.set_config(&TrainConfig {
                momentum: 0.0,
                ..persist
            })
            .unwrap();
            t.set_config(&persist).unwrap();
        });
        assert_eq!(relaid, fresh);
    }

    /// Random images and labels, the same for every run of a test. Every
    /// other image is flat in its first half (as digits are blank at their
    /// edges, but not zero, so that the inputs carry gradient): pooling windows
    /// there tie, and ties must be routed alike.
    fn noise<const P: usize>(n: usize, classes: u8, seed: u64) -> Samples<P> {
        let mut rng = Rng::new(seed);
        Samples(
            (0..n)
                .map(|i| {
                    let mut px = [0u8; P];
                    px.iter_mut().for_each(|p| *p = rng.next_u32() as u8);
                    if i % 2 == 1 {
                        px[..P / 2].fill(200);
                    }
                    (px, (rng.next_u32() % u32::from(classes)) as u8)
                })
                .collect(),
        )
    }

    /// The host backend (SIMD fused block, SGEMM, step folded into each
    /// product) trains as the portable loops the devices run do: the same
    /// parameters to float rounding after two epochs, for every optimizer
    /// setting, on nets with a fused stage (filters a multiple of the kernel's
    /// 16 lanes or not, pooling that drops an odd edge, more windows than one
    /// word holds the winners of), one whose second
    /// convolution stays unfused, and an MLP.
    #[test]
    fn host_and_portable_kernels_train_alike() {
        let nets = [
            "15x14x1 conv:20x3 relu maxpool:2 flatten dense:6 relu dense:3",
            "15x14x1 conv:16x3 relu maxpool:2 flatten dense:3",
            "15x14x1 conv:3x3 relu maxpool:2 conv:4x3 relu flatten dense:3",
            "15x14x1 conv:6x5:s2:same relu avgpool:2 conv:4x3:p1 maxpool:3:s2 dropout:0.3 gap dense:3",
            "210 dense:7 relu dropout:0.5 dense:3",
            "mlp:210-7-3",
        ]
        .map(|s| s.parse::<ModelSpec>());
        let data = noise::<210>(13, 3, 7);
        let base = TrainConfig {
            epochs: 2,
            batch_size: 4,
            lr: 0.05,
            ..TrainConfig::default()
        };
        let configs = [
            base,
            TrainConfig {
                momentum: 0.0,
                ..base
            },
            TrainConfig {
                proximal_mu: 0.5,
                ..base
            },
            TrainConfig {
                momentum: 0.0,
                proximal_mu: 0.5,
                ..base
            },
            TrainConfig {
                batch_size: 1,
                momentum: 0.0,
                ..base
            },
            TrainConfig {
                batch_size: 1,
                momentum: 0.0,
                proximal_mu: 0.5,
                ..base
            },
        ];
        for spec in nets {
            let spec = spec.unwrap();
            let mut init = std::vec![0.0f32; spec.param_count()];
            crate::model::init_params(&Plan::new(&spec), &mut init, &mut Rng::new(3));
            for cfg in configs {
                fn run<K: Kernels<f32>>(
                    spec: &ModelSpec,
                    cfg: &TrainConfig,
                    init: &[f32],
                    data: &Samples<210>,
                ) -> (std::vec::Vec<f32>, Stats, Stats) {
                    let mut params = init.to_vec();
                    let mut t = Trainer::<f32, _, K>::new(spec, cfg).unwrap();
                    let fit = t.fit(&mut params, data, 11).unwrap();
                    (params, fit, t.evaluate(init, data).unwrap())
                }
                let (fast, fast_fit, fast_eval) = run::<Host>(&spec, &cfg, &init, &data);
                let (slow, slow_fit, slow_eval) = run::<Portable>(&spec, &cfg, &init, &data);
                assert_eq!(fast_eval.correct, slow_eval.correct, "{cfg:?}");
                assert!((fast_fit.loss() - slow_fit.loss()).abs() < 1e-4, "{cfg:?}");
                assert_ne!(fast, init, "training changed the model");
                for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                    assert!(
                        (f - s).abs() <= 1e-4 * (1.0 + s.abs()),
                        "{cfg:?} param {i}: {f} vs {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn arena_and_inputs_are_checked() {
        let spec = ModelSpec::mlp(&[4, 3, 2]).unwrap();
        let cfg = TrainConfig::default();
        let mut small = [0.0f32; 10];
        assert!(matches!(
            Trainer::<f32, _, Host>::with_arena(&spec, &cfg, &mut small[..]),
            Err(Error::BufferLength { .. })
        ));
        let bad = TrainConfig {
            batch_size: 0,
            ..cfg
        };
        assert!(matches!(
            Trainer::<f32, _, Host>::new(&spec, &bad),
            Err(Error::BadConfig(_))
        ));
        let mut t = Trainer::<f32, _, Host>::new(&spec, &cfg).unwrap();
        let mislabelled = Samples(std::vec![([1, 2, 3, 4], 7)]);
        let mut params = std::vec![0.0f32; spec.param_count()];
        assert_eq!(
            t.fit(&mut params, &mislabelled, 0),
            Err(Error::LabelOutOfRange {
                label: 7,
                classes: 2
            })
        );
        assert!(matches!(
            t.evaluate(&params[1..], &mislabelled),
            Err(Error::BufferLength { .. })
        ));
    }

    #[test]
    fn training_is_deterministic_given_a_seed() {
        let spec = ModelSpec::mlp(&[4, 3, 2]).unwrap();
        let tiny: std::vec::Vec<_> = (0..8u8)
            .map(|i| {
                if i % 2 == 0 {
                    ([255, 0, 0, 255], 0)
                } else {
                    ([0, 255, 255, 0], 1)
                }
            })
            .collect();
        let tiny = Samples(tiny);
        let cfg = TrainConfig {
            batch_size: 3,
            epochs: 20,
            lr: 0.1,
            ..TrainConfig::default()
        };
        let run = |seed| {
            let mut params = std::vec![0.0f32; spec.param_count()];
            crate::model::init_params(&Plan::new(&spec), &mut params, &mut Rng::new(1));
            let stats = Trainer::<f32, _, Host>::new(&spec, &cfg)
                .unwrap()
                .fit(&mut params, &tiny, seed)
                .unwrap();
            (params, stats)
        };
        let (a, stats) = run(5);
        assert_eq!(a, run(5).0);
        assert_ne!(a, run(6).0);
        assert_eq!(stats.correct, 8, "a separable toy set is learned");
    }

    #[test]
    fn fedprox_holds_the_model_near_the_global_one() {
        let spec = ModelSpec::mlp(&[4, 3, 2]).unwrap();
        let one = Samples(std::vec![([255, 0, 255, 0], 1); 4]);
        let drift = |mu: f32, batch: u32, momentum: f32| {
            let cfg = TrainConfig {
                batch_size: batch,
                momentum,
                epochs: 30,
                lr: 0.05,
                proximal_mu: mu,
                ..TrainConfig::default()
            };
            let mut params = std::vec![0.1f32; spec.param_count()];
            Trainer::<f32, _, Host>::new(&spec, &cfg)
                .unwrap()
                .fit(&mut params, &one, 1)
                .unwrap();
            params.iter().map(|p| (p - 0.1).abs()).sum::<f32>()
        };
        for (batch, momentum) in [(2, 0.9), (1, 0.0)] {
            let (free, held) = (drift(0.0, batch, momentum), drift(5.0, batch, momentum));
            assert!(
                held < 0.5 * free,
                "batch {batch}: drift {held} with mu vs {free} without"
            );
        }
    }
}
