//! The device allocates nothing after boot: its loop runs on a thread whose
//! heap allocations are counted by this test binary's global allocator, while
//! it takes part in real rounds (host-server attaching it over a pty).

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A global allocator is `unsafe impl GlobalAlloc` by definition; it only counts
// and forwards to the system allocator.
#![allow(unsafe_code)]

#[path = "../../host-server/tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use fedcore::device::{Device, Firmware, Footprint};
use fedcore::model::ModelSpec;
use fedcore::protocol::Encoding;
use fedcore::scalar::{Fixed, Scalar};
use fedhost::partition::Partition;
use fedhost::share::ShareSpec;
use firmware_sim::line::Line;
use firmware_sim::uart::{BoardClock, SimUart};
use host_server::history::History;
use support::*;

thread_local! {
    /// Whether this thread's allocations are counted, and how many there were.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs a device in `S` for two rounds; returns the allocations its loop made after boot.
fn allocations_after_boot<S: Scalar>(name: &str) -> usize {
    let (out, data) = (
        temp_dir(&format!("{name}-out")),
        temp_dir(&format!("{name}-data")),
    );
    mnist_subset(&data, 2000, 200);
    let line = Line::pty(None).unwrap();
    let path = line.path.to_str().unwrap().to_string();
    let (mut server, _addr) = start_federation(&out, 2, "mlp:784-32-10", 1, &["--serial", &path]);
    let spec = ShareSpec {
        dir: data,
        label_column: None,
        partition: Partition::Iid,
        count: 1,
        seed: 0,
    };
    let local = spec.load(0..1).unwrap().remove(0);
    let port = line.device.try_clone().unwrap();
    let counted = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let model: ModelSpec = "mlp:784-32-10".parse().unwrap();
                let mut arena = vec![S::ZERO; Footprint::arena_len::<S>(&model)];
                let firmware = Firmware {
                    name,
                    kind: fedcore::protocol::ParticipantKind::Device,
                    key: None,
                    model,
                    encoding: Encoding::Int8,
                    baud: None,
                };
                let uart = SimUart::new(port, None, 0.0, 0);
                let mut device: Device<'_, S, _, _, _, 256> = Device::boot(
                    firmware,
                    &mut arena,
                    uart,
                    BoardClock::start(),
                    &local.train,
                    &local.test,
                )
                .unwrap();
                // Boot is over: from here on every allocation on this thread counts.
                COUNTING.with(|c| c.set(true));
                let before = ALLOCATIONS.with(Cell::get);
                let outcome = device.run();
                let after = ALLOCATIONS.with(Cell::get);
                COUNTING.with(|c| c.set(false));
                outcome.unwrap();
                after - before
            })
            .join()
            .unwrap()
    });
    assert!(wait(&mut server, Duration::from_secs(60)));
    let history = History::read(&out.join("history_2.json")).unwrap();
    assert!(
        history
            .rounds
            .iter()
            .all(|r| r.aggregated && r.participants.iter().any(|p| p.fit.is_some())),
        "the device trained in both rounds"
    );
    counted
}

#[test]
fn a_fixed_point_device_allocates_nothing_after_boot() {
    assert_eq!(allocations_after_boot::<Fixed>("noalloc-fixed"), 0);
}

#[test]
fn an_f32_device_allocates_nothing_after_boot() {
    assert_eq!(allocations_after_boot::<f32>("noalloc-f32"), 0);
}
