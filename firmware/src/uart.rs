//! The CMSDK APB UART: UART0 carries the federation's link.
//!
//! Receiving is interrupt-driven: the RX interrupt moves each byte into a
//! 256-byte ring, and a read with nothing waiting sleeps in WFI until a byte or
//! the 10 ms SysTick wakes the core (polling would burn a host core under
//! QEMU). When the ring is full the interrupt disables itself rather than
//! drop a byte (the UART holds the next one; QEMU waits for the guest), and
//! the reader re-enables it once it has made room. Sending polls TXFULL.

use core::cell::RefCell;

use critical_section::Mutex;
use heapless::Deque;

use crate::mmio::{
    RX_ENABLE, RX_FULL, RX_INTERRUPT, RX_INTERRUPT_STATUS, TX_ENABLE, UartRegisters,
};
use crate::time;

/// UART0: the link.
pub const UART0: UartRegisters = UartRegisters::at(0x4000_4000);
/// UART0's RX interrupt on the MPS2 boards.
pub const UART0_RX_IRQ: i16 = 0;

/// Bytes received and not yet read.
static RING: Mutex<RefCell<Deque<u8, 256>>> = Mutex::new(RefCell::new(Deque::new()));

/// The UART0 RX interrupt: moves what has arrived into the ring.
pub fn on_rx_interrupt() {
    critical_section::with(|cs| {
        let mut ring = RING.borrow_ref_mut(cs);
        UART0.clear_interrupts(RX_INTERRUPT_STATUS);
        while UART0.state() & RX_FULL != 0 {
            if ring.is_full() {
                // Leave the byte in the UART and stop the interrupt until read.
                UART0.control(TX_ENABLE | RX_ENABLE);
                return;
            }
            let _ = ring.push_back(UART0.take());
        }
    });
}

/// The link, as the device loop sees it.
pub struct Link(());

/// A UART cannot fail on this board: the error type has no values.
#[derive(Debug)]
pub enum Never {}

impl core::fmt::Display for Never {
    fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {}
    }
}

/// The interrupt number as the NVIC API wants it.
#[derive(Clone, Copy)]
struct Irq(u16);

// SAFETY: 0 is UART0's RX interrupt line on the MPS2 boards' NVIC.
#[allow(unsafe_code)]
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

impl Link {
    /// Enables UART0 with its RX interrupt. An interrupt enabled while a byte
    /// already waits never fires under QEMU, so it is pended once by hand.
    pub fn start(baud: u32) -> Self {
        UART0.enable(baud, TX_ENABLE | RX_ENABLE | RX_INTERRUPT);
        let line = Irq(UART0_RX_IRQ as u16);
        #[allow(unsafe_code)]
        // SAFETY: the handler only touches the ring through a critical
        // section; enabling it cannot break a critical section in progress.
        unsafe {
            cortex_m::peripheral::NVIC::unmask(line)
        };
        cortex_m::peripheral::NVIC::pend(line);
        Link(())
    }

    fn take(&mut self, buf: &mut [u8]) -> usize {
        critical_section::with(|cs| {
            let mut ring = RING.borrow_ref_mut(cs);
            let mut n = 0;
            while n < buf.len() {
                match ring.pop_front() {
                    Some(b) => buf[n] = b,
                    None => break,
                }
                n += 1;
            }
            if n > 0 {
                // Room again: let the interrupt move what the UART holds.
                UART0.control(TX_ENABLE | RX_ENABLE | RX_INTERRUPT);
                cortex_m::peripheral::NVIC::pend(Irq(UART0_RX_IRQ as u16));
            }
            n
        })
    }
}

impl fedcore::device::Uart for Link {
    type Error = Never;

    fn write(&mut self, bytes: &[u8]) -> Result<(), Never> {
        for &b in bytes {
            UART0.put(b);
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout_ms: u64) -> Result<usize, Never> {
        let until = time::now_ms().saturating_add(timeout_ms);
        loop {
            let n = self.take(buf);
            if n > 0 || time::now_ms() >= until {
                return Ok(n);
            }
            // Sleep with interrupts masked so a byte that arrives between the
            // check and the WFI still wakes it (WFI wakes on a pending one).
            cortex_m::interrupt::free(|_| {
                if critical_section::with(|cs| RING.borrow_ref(cs).is_empty()) {
                    cortex_m::asm::wfi();
                }
            });
        }
    }
}
