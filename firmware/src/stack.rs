//! The stack, guarded and measured.
//!
//! The linker places the static memory at the bottom of the RAM budget and
//! the stack above it, growing down toward it: on its own, an overflow would
//! silently overwrite the parameters. So at boot the image
//! - moves the thread onto the process stack (PSP, same address, so nothing
//!   moves) and gives exceptions their own 1 KiB handler stack (MSP), so a
//!   fault can still be reported when the thread stack is exhausted;
//! - makes the 1 KiB just above the static memory a no-access MPU region:
//!   the first push into it is a MemManage fault, reported on the console,
//!   and the image stops (as flip-link arranges with a layout trick, here
//!   with the MPU the Cortex-M3/M4 have);
//! - paints the free stack with a pattern, so [`high_water`] can tell the
//!   deepest it has been.
#![allow(unsafe_code)]

use cortex_m::register::{control, msp, psp};

/// Bytes of the no-access guard (a power of two, aligned to itself).
const GUARD: usize = 1024;
const PAINT: u32 = 0xC5C5_C5C5;

/// The handler stack (MSP), for exceptions and faults.
#[repr(C, align(8))]
struct HandlerStack([u8; 1024]);
static mut HANDLER_STACK: HandlerStack = HandlerStack([0; 1024]);

unsafe extern "C" {
    /// End of the static memory (cortex-m-rt's linker script).
    static __sheap: u8;
    /// Top of the RAM budget, where the stack starts.
    static _stack_start: u8;
}

/// The thread stack's lowest usable address (just above the guard).
static mut FLOOR: usize = 0;

/// Bytes between the guard and the top of RAM.
pub fn size() -> usize {
    top() - floor()
}

fn top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

fn floor() -> usize {
    // SAFETY: written once in `guard` before anything reads it.
    unsafe { core::ptr::addr_of!(FLOOR).read() }
}

/// Guards and paints the stack; called first thing at boot, from the thread.
pub fn guard(mpu: &mut cortex_m::peripheral::MPU, scb: &mut cortex_m::peripheral::SCB) {
    let heap = core::ptr::addr_of!(__sheap) as usize;
    let guard = (heap + GUARD - 1) & !(GUARD - 1);
    // SAFETY: runs once, before any reader.
    unsafe { core::ptr::addr_of_mut!(FLOOR).write(guard + GUARD) };

    // SAFETY: the thread keeps its stack pointer value, now in PSP; exceptions
    // get a stack of their own that nothing else uses. No reference to the
    // handler stack is made, only its end address taken.
    unsafe {
        psp::write(msp::read());
        let mut c = control::read();
        c.set_spsel(control::Spsel::Psp);
        control::write(c);
        let end = core::ptr::addr_of!(HANDLER_STACK) as usize + 1024;
        #[allow(deprecated)]
        msp::write(end as u32);
    }

    // PMSAv7: region 0 at `guard`, 1 KiB (SIZE field 9: 2^(9+1)), no access
    // (AP 0), never executable; the default map stays for everything else.
    // SAFETY: the region covers only the gap between the static memory and
    // the stack, which nothing uses.
    unsafe {
        mpu.rnr.write(0);
        mpu.rbar.write(guard as u32);
        mpu.rasr.write((1 << 28) | (9 << 1) | 1);
        mpu.ctrl.write((1 << 2) | 1);
    }
    cortex_m::asm::dsb();
    cortex_m::asm::isb();
    scb.enable(cortex_m::peripheral::scb::Exception::MemoryManagement);

    // Paint from the floor up to a little below where the thread is now.
    let here = psp::read() as usize - 64;
    let mut at = floor();
    while at < here {
        // SAFETY: free stack below the current frame, word aligned, unused.
        unsafe { (at as *mut u32).write_volatile(PAINT) };
        at += 4;
    }
}

/// The most stack the thread has used since boot, in bytes.
pub fn high_water() -> usize {
    let mut at = floor();
    let top = top();
    while at < top {
        // SAFETY: inside the stack region, word aligned.
        if unsafe { (at as *const u32).read_volatile() } != PAINT {
            break;
        }
        at += 4;
    }
    top - at
}

/// Recurses until the stack runs into its guard (the `stack-overflow-probe`
/// build, which shows the fault is caught); the MemManage handler ends the run.
#[cfg(feature = "stack-overflow-probe")]
pub fn overflow() {
    crate::console::line(format_args!("probe: recursing until the stack overflows"));
    fn deeper(depth: u32) -> u32 {
        if depth == u32::MAX {
            return 0;
        }
        let frame = [depth; 64];
        // black_box: the frame and the recursion stay as written.
        core::hint::black_box(&frame);
        deeper(depth + 1).wrapping_add(core::hint::black_box(frame[3]))
    }
    core::hint::black_box(deeper(0));
}
