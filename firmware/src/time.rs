//! The board's time: the CMSDK timer's counter, and a SysTick that wakes the
//! core every 10 ms.
//!
//! Time is read from TIMER0's 32-bit down-counter at the board's 25 MHz
//! clock, never from counted SysTick interrupts (those are lost when QEMU's
//! host is busy; the counter is exact). SysTick only wakes the core from WFI,
//! so that a wait with a deadline ends, and folds the counter into a 64-bit
//! total often enough that a 32-bit wrap (every 171 s) is never missed.
//!
//! Under `qemu-system-arm -icount shift=0` every instruction advances the
//! board's clock by 1 ns, so a tick is 40 instructions: [`Clock`] reports the
//! ticks each piece of work took, from which the runner states instructions.

use core::cell::Cell;

use critical_section::Mutex;
use fedcore::device::Work;

use crate::console;
use crate::mmio::Reg;
use crate::stack;

/// The board's peripheral clock (QEMU's mps2 SYSCLK).
pub const TICKS_PER_SECOND: u64 = crate::mmio::BOARD_CLOCK_HZ as u64;
const TICKS_PER_MS: u64 = TICKS_PER_SECOND / 1000;

const TIMER0: usize = 0x4000_0000;
const CTRL: Reg = Reg::at(TIMER0);
const VALUE: Reg = Reg::at(TIMER0 + 0x04);
const RELOAD: Reg = Reg::at(TIMER0 + 0x08);

/// The counter's last reading and the ticks counted up to it.
static TOTAL: Mutex<Cell<(u32, u64)>> = Mutex::new(Cell::new((u32::MAX, 0)));

/// Starts the counter and the 10 ms wake-up.
pub fn start(mut systick: cortex_m::peripheral::SYST) {
    RELOAD.write(u32::MAX);
    VALUE.write(u32::MAX);
    CTRL.write(1);
    systick.set_clock_source(cortex_m::peripheral::syst::SystClkSource::Core);
    systick.set_reload((TICKS_PER_SECOND / 100 - 1) as u32);
    systick.clear_current();
    systick.enable_interrupt();
    systick.enable_counter();
}

/// Ticks of the 25 MHz clock since [`start`].
pub fn ticks() -> u64 {
    critical_section::with(|cs| {
        let cell = TOTAL.borrow(cs);
        let (last, total) = cell.get();
        let now = VALUE.read();
        // A down-counter: what it lost since the last reading.
        let total = total + u64::from(last.wrapping_sub(now));
        cell.set((now, total));
        total
    })
}

/// Milliseconds since [`start`].
pub fn now_ms() -> u64 {
    ticks() / TICKS_PER_MS
}

/// The SysTick exception: folds the counter in (and, by existing, ends a WFI).
pub fn on_systick() {
    ticks();
}

/// The device loop's clock; it reports the ticks each round's training and
/// evaluation took, and the stack's high-water mark, on the console.
pub struct Clock {
    started: u64,
}

impl Clock {
    /// A clock for the device loop.
    pub fn new() -> Self {
        Clock { started: 0 }
    }
}

impl fedcore::device::Clock for Clock {
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    fn begin(&mut self, _work: Work, _round: u32) {
        self.started = ticks();
    }

    fn end(&mut self, work: Work, round: u32) {
        let spent = ticks().saturating_sub(self.started);
        let what = match work {
            Work::Training => "train",
            Work::Evaluating => "evaluate",
        };
        console::line(format_args!(
            "round {round}: {what} {spent} ticks; stack high-water {} bytes",
            stack::high_water()
        ));
    }
}
