//! UART1: the board's console, where the image reports its boot, its rounds
//! and its faults (the link on UART0 carries only the protocol).

use core::fmt::{self, Write as _};

use crate::mmio::UartRegisters;

const UART1: UartRegisters = UartRegisters::at(0x4000_5000);

/// Enables the console.
pub fn start() {
    UART1.enable(115_200, 1);
}

struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            UART1.put(b);
        }
        Ok(())
    }
}

/// Writes one line, prefixed with `firmware: `.
pub fn line(args: fmt::Arguments<'_>) {
    let _ = writeln!(Console, "firmware: {args}");
}
