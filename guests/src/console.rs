//! The guest console: a polled 16550 UART at COM1 and the `print!` /
//! `println!` macros.
//!
//! Register offsets and bits follow the NS16550A / TI PC16550D datasheet.
//! There is no lock: a guest runs on one CPU with interrupts off, and an
//! exception handler that prints while a line is half written just
//! interleaves its text.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::port::{inb, outb};

/// I/O base of COM1.
pub const COM1_BASE: u16 = 0x3f8;

/// Transmit holding register (write); divisor latch low with DLAB set.
const DATA: u16 = 0;
/// Interrupt enable; divisor latch high with DLAB set.
const IER: u16 = 1;
/// FIFO control (write).
const FCR: u16 = 2;
/// Line control.
const LCR: u16 = 3;
/// Modem control.
const MCR: u16 = 4;
/// Line status.
const LSR: u16 = 5;

/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// LCR: 8 data bits, no parity, 1 stop bit.
const LCR_8N1: u8 = 0b11;
/// FCR: enable and clear both FIFOs, receive trigger at 14 bytes.
const FCR_ENABLE_CLEAR: u8 = 0xc7;
/// MCR: DTR and RTS; OUT2 stays clear (no interrupts wanted).
const MCR_DTR_RTS: u8 = 0b11;
/// LSR bit 5: transmit holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Divisor latch value for 115200 baud (1.8432 MHz / 16 / 1).
const DIVISOR_115200: u16 = 1;

/// How often a byte polls the line status before it is written anyway, so
/// that a missing UART cannot hang the guest.
pub const TX_POLL_LIMIT: u32 = 1 << 16;

/// Set once [`init`] has programmed the UART.
static READY: AtomicBool = AtomicBool::new(false);

/// Programs COM1 for 115200 baud 8N1, FIFOs on, interrupts off. The runtime
/// calls it before the guest's main function; later calls do nothing.
pub fn init() {
    if READY.swap(true, Ordering::Relaxed) {
        return;
    }
    let [lo, hi] = DIVISOR_115200.to_le_bytes();
    outb(COM1_BASE + IER, 0);
    outb(COM1_BASE + LCR, LCR_DLAB);
    outb(COM1_BASE + DATA, lo);
    outb(COM1_BASE + IER, hi);
    outb(COM1_BASE + LCR, LCR_8N1);
    outb(COM1_BASE + FCR, FCR_ENABLE_CLEAR);
    outb(COM1_BASE + MCR, MCR_DTR_RTS);
    // Start on a fresh line whatever the firmware printed before (SeaBIOS
    // leaves "Booting from ROM.." unterminated), so that every guest line
    // begins at column 0.
    _print(format_args!("\n"));
}

/// Sends one byte once the transmitter is empty (or after
/// [`TX_POLL_LIMIT`] polls).
pub fn write_byte(byte: u8) {
    for _ in 0..TX_POLL_LIMIT {
        if inb(COM1_BASE + LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1_BASE + DATA, byte);
}

/// The COM1 console as a [`fmt::Write`] sink; `\n` goes out as `\r\n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
        Ok(())
    }
}

/// Formats `args` to the console; used by [`print!`](crate::print) and
/// [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Console::write_str never fails.
    let _ = fmt::Write::write_fmt(&mut Console, args);
}

/// Prints to the COM1 console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the COM1 console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
