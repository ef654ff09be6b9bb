//! The device as a bare-metal image for QEMU's MPS2 Cortex-M boards: fedcore's
//! device loop ([`fedcore::device::Device`]) on the board's UART, timer and
//! memory, nothing of the loop reimplemented.
//!
//! - [`mmio`]: the one place registers and loaded memory are touched;
//! - [`time`]: the timer counter's clock, SysTick wake-ups, cycle reports;
//! - [`uart`]: the CMSDK UART0 link, interrupt-driven RX into a ring, WFI when idle;
//! - [`console`]: UART1, where the image reports;
//! - [`stack`]: the MPU stack guard, the handler stack and the high-water mark.
//!
//! Boot: the stack guard, the console, the provisioning record (the board's
//! name, and its key when the server admits by key) from block RAM at 0x0100_0000, the shard blob from PSRAM at
//! 0x2100_0000 (both placed by QEMU's `-device loader`; checked, refused with
//! a message on mismatch), then the device loop until the server says
//! goodbye; the image then ends QEMU through semihosting with its exit status.
//! All of its memory is static: the arena below is sized by build.rs for the
//! model, and the linker refuses an image that does not fit its RAM budget.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod console;
mod mmio;
mod stack;
mod time;
mod uart;

use cortex_m_rt::{ExceptionFrame, entry, exception};
use cortex_m_semihosting::debug;
use fedcore::data::Blob;
use fedcore::device::provision::mps2::{PROVISION_AT, SHARD_AT, SHARD_MAX};
use fedcore::device::{Device, Firmware, Provision};
use fedcore::model::ModelSpec;
use fedcore::protocol::{Encoding, ParticipantKind};

mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

#[cfg(feature = "f32")]
type S = f32;
#[cfg(not(feature = "f32"))]
type S = fedcore::scalar::Fixed;

/// The link's nominal rate (QEMU does not pace its UART by it).
const BAUD: u32 = 115_200;

/// Parameters and trainer memory: the image's one large buffer, in .bss.
#[allow(unsafe_code)]
static mut ARENA: [S; config::ARENA_LEN] =
    [<S as fedcore::scalar::Scalar>::ZERO; config::ARENA_LEN];

#[entry]
fn main() -> ! {
    let code = match boot_and_run() {
        Ok(()) => debug::EXIT_SUCCESS,
        Err(()) => debug::EXIT_FAILURE,
    };
    debug::exit(code);
    loop {
        cortex_m::asm::wfi();
    }
}

fn boot_and_run() -> Result<(), ()> {
    let Some(mut p) = cortex_m::Peripherals::take() else {
        return Err(());
    };
    stack::guard(&mut p.MPU, &mut p.SCB);
    console::start();
    #[cfg(feature = "stack-overflow-probe")]
    stack::overflow();
    time::start(p.SYST);

    let model: ModelSpec = config::MODEL.parse().map_err(|e| {
        console::line(format_args!(
            "the built-in model {:?} is invalid: {e}",
            config::MODEL
        ));
    })?;
    let provision = Provision::parse(mmio::region(PROVISION_AT, Provision::MAX_LEN))
        .map_err(|e| console::line(format_args!("boot refused: {e}")))?;
    let blob = Blob::parse(mmio::region(SHARD_AT, SHARD_MAX))
        .map_err(|e| console::line(format_args!("boot refused: the shard: {e}")))?;
    console::line(format_args!(
        "{} ({}), {}, {} in {} KiB of RAM (fedcore counts {} bytes; stack {} bytes above its guard)",
        provision.name,
        config::BOARD.name(),
        config::MODEL,
        <S as fedcore::scalar::Scalar>::NAME,
        config::RAM_BYTES / 1024,
        config::FOOTPRINT,
        stack::size(),
    ));
    console::line(format_args!(
        "shard: {} training and {} test samples, checksum verified",
        fedcore::data::Dataset::len(&blob.train),
        fedcore::data::Dataset::len(&blob.test)
    ));

    #[allow(unsafe_code)]
    // SAFETY: the only reference ever made to ARENA, made once here.
    let arena: &'static mut [S] = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    let firmware = Firmware {
        name: provision.name,
        kind: ParticipantKind::Board(config::BOARD),
        key: provision.key,
        model,
        encoding: Encoding::Int8,
        baud: Some(BAUD),
    };
    let link = uart::Link::start(BAUD);
    let mut device: Device<'_, S, _, _, _, { config::MAX_FRAME }> = Device::boot(
        firmware,
        arena,
        link,
        time::Clock::new(),
        blob.train,
        blob.test,
    )
    .map_err(|e| console::line(format_args!("boot refused: {e}")))?;
    console::line(format_args!("saying hello on UART0"));
    let outcome = device.run();
    let c = device.counters();
    console::line(format_args!(
        "stopped: joined {} time(s), {} damaged frames dropped, {} resends asked, {} answered; stack high-water {} bytes",
        c.joins,
        c.frames_rejected,
        c.nacks_sent,
        c.nacks_answered,
        stack::high_water()
    ));
    match outcome {
        Ok(()) => {
            console::line(format_args!("the server said goodbye"));
            Ok(())
        }
        Err(e) => {
            console::line(format_args!("the device stopped: {e}"));
            Err(())
        }
    }
}

#[exception]
fn SysTick() {
    time::on_systick();
}

#[exception]
#[allow(unsafe_code)]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == uart::UART0_RX_IRQ {
        uart::on_rx_interrupt();
    }
}

#[exception]
fn MemoryManagement() {
    console::line(format_args!(
        "stack overflow: the thread stack ({} bytes) ran into its guard; stopped",
        stack::size()
    ));
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[exception]
#[allow(unsafe_code)]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    console::line(format_args!(
        "hard fault at pc {:#010x}; stopped",
        frame.pc()
    ));
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::line(format_args!("panic: {info}"));
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
