//! The board's memory map, touched in one place: a 32-bit register, the CMSDK
//! UART's register block, and the regions a loader filled before reset.
//!
//! Written by hand: the MPS2 boards' CMSDK peripherals have no maintained
//! peripheral-access crate, and the firmware touches a dozen registers of
//! three of them. Every volatile access of the image goes through here.
#![allow(unsafe_code)]

/// A device register at a fixed address of the board's memory map.
#[derive(Clone, Copy)]
pub struct Reg(usize);

impl Reg {
    /// The register at `address`.
    pub const fn at(address: usize) -> Self {
        Reg(address)
    }

    /// Reads it.
    pub fn read(self) -> u32 {
        // SAFETY: the address is one of the board's peripheral registers
        // (constants of the memory map), always mapped, 4-byte aligned, and
        // reading it has no effect beyond the peripheral's own.
        unsafe { core::ptr::read_volatile(self.0 as *const u32) }
    }

    /// Writes it.
    pub fn write(self, value: u32) {
        // SAFETY: as for `read`; the register holds no Rust object.
        unsafe { core::ptr::write_volatile(self.0 as *mut u32, value) }
    }
}

/// The board's peripheral clock (QEMU's mps2 SYSCLK), in Hz.
pub const BOARD_CLOCK_HZ: u32 = 25_000_000;

/// STATE: the transmit holding register is full.
pub const TX_FULL: u32 = 1 << 0;
/// STATE: a received byte waits.
pub const RX_FULL: u32 = 1 << 1;
/// CTRL: transmitter on.
pub const TX_ENABLE: u32 = 1 << 0;
/// CTRL: receiver on.
pub const RX_ENABLE: u32 = 1 << 1;
/// CTRL: interrupt on a received byte.
pub const RX_INTERRUPT: u32 = 1 << 3;
/// INTSTATUS/INTCLEAR: the receive interrupt.
pub const RX_INTERRUPT_STATUS: u32 = 1 << 1;

/// A CMSDK APB UART's registers.
#[derive(Clone, Copy)]
pub struct UartRegisters {
    data: Reg,
    state: Reg,
    ctrl: Reg,
    intclear: Reg,
    bauddiv: Reg,
}

impl UartRegisters {
    /// The UART at `base`.
    pub const fn at(base: usize) -> Self {
        UartRegisters {
            data: Reg::at(base),
            state: Reg::at(base + 0x04),
            ctrl: Reg::at(base + 0x08),
            intclear: Reg::at(base + 0x0C),
            bauddiv: Reg::at(base + 0x10),
        }
    }

    /// Enables it at `baud` (QEMU does not pace by baud, but refuses a divider under 16).
    pub fn enable(self, baud: u32, ctrl: u32) {
        self.bauddiv.write((BOARD_CLOCK_HZ / baud.max(1)).max(16));
        self.ctrl.write(ctrl);
    }

    /// Its status bits.
    pub fn state(self) -> u32 {
        self.state.read()
    }

    /// Sets its control bits.
    pub fn control(self, bits: u32) {
        self.ctrl.write(bits);
    }

    /// Clears the interrupts in `bits`.
    pub fn clear_interrupts(self, bits: u32) {
        self.intclear.write(bits);
    }

    /// The received byte.
    pub fn take(self) -> u8 {
        self.data.read() as u8
    }

    /// Sends one byte, waiting while the transmitter is full.
    pub fn put(self, byte: u8) {
        while self.state.read() & TX_FULL != 0 {}
        self.data.write(u32::from(byte));
    }
}

/// A region of the board's memory that a loader filled before reset (flash,
/// external RAM), viewed as bytes for the life of the image.
pub fn region(address: usize, len: usize) -> &'static [u8] {
    // SAFETY: callers pass regions of the board's memory map that are RAM or
    // ROM outside every section the image links (the loader's regions), so
    // nothing in the image writes them while this view lives.
    unsafe { core::slice::from_raw_parts(address as *const u8, len) }
}
