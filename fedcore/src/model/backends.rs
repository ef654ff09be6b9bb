//! The backends ([`crate::kernels`]) held to each other: every layer's output and every
//! parameter gradient of the host backend against the portable loops', and
//! the fused block against the three layers it stands for, in f32 and Q16.16.

use std::vec::Vec;

use crate::kernels::host::Host;
use crate::kernels::{Kernels, Portable};
use crate::model::network::{init_params, training_pass};
use crate::model::{Fusion, ModelSpec, Plan};
use crate::rng::Rng;
use crate::scalar::Fixed;
use crate::scalar::Scalar;

const BATCH: usize = 5;

/// Nets that between them hold every layer type, with the fused block and
/// without (one-channel input or not), strided, padded and 1x1 to 7x7.
const NETS: [&str; 6] = [
    "13x12x1 conv:20x3 relu maxpool:2 flatten dense:6 relu dense:3",
    "13x12x1 conv:16x3 relu maxpool:2 conv:5x3 relu maxpool:2 flatten dense:3",
    "12x12x3 conv:6x5:s2:same relu avgpool:2:s1 conv:4x1 maxpool:3:s2 dropout:0.3 gap dense:3",
    "12x12x2 conv:4x7:same relu conv:3x3:s2:p1 relu avgpool:3 flatten dense:4",
    "30 dense:9 relu dropout:0.5 dense:4 relu dense:3",
    "9x9x1 conv:3x3:p1 relu maxpool:2 gap dense:2",
];

/// Every activation and every parameter gradient after one forward and
/// backward pass of `plan` on backend `K`.
fn pass<S: Scalar, K: Kernels<S>>(plan: &Plan, params: &[S], pixels: &[u8]) -> (Vec<S>, Vec<S>) {
    let label = |k: usize| (k % plan.classes()) as u8;
    let (_, acts, grads) = training_pass::<S, K>(plan, params, pixels, label, BATCH, 3);
    (acts, grads)
}

fn setup(spec: &ModelSpec, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let plan = Plan::new(spec);
    let mut rng = Rng::new(seed);
    let mut params = std::vec![0.0f32; plan.param_count()];
    init_params(&plan, &mut params, &mut rng);
    for p in params.iter_mut() {
        *p += 0.05 * (rng.uniform() - 0.5);
    }
    let pixels = (0..BATCH * plan.input_len())
        .map(|i| if i % 7 < 2 { 200 } else { rng.next_u32() as u8 })
        .collect();
    (params, pixels)
}

fn assert_close(what: &str, host: &[f32], portable: &[f32], tol: f32) {
    assert_eq!(host.len(), portable.len(), "{what}");
    for (i, (h, p)) in host.iter().zip(portable).enumerate() {
        assert!(
            (h - p).abs() <= tol * (1.0 + p.abs()),
            "{what} [{i}]: host {h}, portable {p}"
        );
    }
}

#[test]
fn host_and_portable_agree_layer_by_layer() {
    for (n, net) in NETS.iter().enumerate() {
        let spec: ModelSpec = net.parse().unwrap();
        let plan = Plan::new(&spec);
        let (params, pixels) = setup(&spec, n as u64);
        let (host_acts, host_grads) = pass::<f32, Host>(&plan, &params, &pixels);
        let (acts, grads) = pass::<f32, Portable>(&plan, &params, &pixels);
        for st in plan.stages() {
            if st.fusion == Fusion::Absorbed || st.act_in == st.act_out {
                continue;
            }
            let slot = st.act_out * BATCH..(st.act_out + st.written_len()) * BATCH;
            let what = std::format!("{net}: {} output", st.layer);
            assert_close(&what, &host_acts[slot.clone()], &acts[slot], 1e-5);
            let span = st.params..st.params + st.weight_count() + st.bias_count();
            let what = std::format!("{net}: {} gradients", st.layer);
            assert_close(&what, &host_grads[span.clone()], &grads[span], 1e-4);
        }
    }
}

/// The fused block computes what its three layers do, forward and backward,
/// on both backends and in fixed point.
#[test]
fn the_fused_block_is_its_three_layers() {
    fn check<S: Scalar, K: Kernels<S>>(tol: f32) {
        for (n, net) in NETS.iter().enumerate() {
            let spec: ModelSpec = net.parse().unwrap();
            let (fused, unfused) = (Plan::new(&spec), Plan::unfused(&spec));
            if fused.fused_params() == 0 {
                continue;
            }
            let (params, pixels) = setup(&spec, 10 + n as u64);
            let params: Vec<S> = params.iter().map(|&p| S::from_f32(p)).collect();
            let (fused_acts, fused_grads) = pass::<S, K>(&fused, &params, &pixels);
            let (acts, grads) = pass::<S, Portable>(&unfused, &params, &pixels);
            let f32s = |v: &[S]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let logits = |plan: &Plan, acts: &[S]| {
                f32s(&acts[plan.logits_slot() * BATCH..][..BATCH * plan.classes()])
            };
            let what = std::format!("{net} on {}/{}", K::NAME, S::NAME);
            assert_close(
                &what,
                &logits(&fused, &fused_acts),
                &logits(&unfused, &acts),
                tol,
            );
            assert_close(&what, &f32s(&fused_grads), &f32s(&grads), 10.0 * tol);
        }
    }
    check::<f32, Portable>(1e-5);
    check::<f32, Host>(1e-5);
    check::<Fixed, Portable>(2e-3);
}
