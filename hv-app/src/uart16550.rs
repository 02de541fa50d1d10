//! A polled 16550 UART driver over [`PortIo`].
//!
//! Register offsets and bits are those of the NS16550A / TI PC16550D
//! datasheet: the divisor latch gives `1.8432 MHz / 16 / divisor` baud.

use core::fmt;

use crate::port::PortIo;
use crate::{Error, Result};

/// I/O base of COM1 on a PC.
pub const COM1_BASE: u16 = 0x3f8;

/// Baud rate of divisor 1: the 1.8432 MHz UART clock divided by 16.
pub const MAX_BAUD: u32 = 115_200;

/// Register offsets from the base port.
mod reg {
    /// Transmit holding (write) / receive buffer (read); divisor latch low
    /// with DLAB set.
    pub const DATA: u16 = 0;
    /// Interrupt enable; divisor latch high with DLAB set.
    pub const IER: u16 = 1;
    /// FIFO control (write).
    pub const FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
}

/// LCR bit 7: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// LCR: 8 data bits (bits 1:0 = 11), 1 stop bit (bit 2 = 0), no parity
/// (bit 3 = 0).
const LCR_8N1: u8 = 0b11;
/// FCR: FIFO enable (bit 0), clear receive (bit 1) and transmit (bit 2)
/// FIFOs, receive trigger at 14 bytes (bits 7:6 = 11).
const FCR_ENABLE_CLEAR_14: u8 = 0xc7;
/// MCR: DTR (bit 0) and RTS (bit 1); OUT2 stays clear since the driver
/// polls and wants no interrupt.
const MCR_DTR_RTS: u8 = 0b11;
/// LSR bit 0: a received byte is waiting.
const LSR_DATA_READY: u8 = 1 << 0;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// LSR bit 6: the transmitter is empty (holding and shift registers, and
/// the FIFO).
const LSR_TX_EMPTY: u8 = 1 << 6;

/// How many times [`Uart16550::write_byte`] polls the line status before it
/// writes anyway, so that a missing or stuck UART cannot hang the caller.
pub const TX_POLL_LIMIT: u32 = 1 << 16;

/// The divisor latch value for `baud`: `115200 / baud`, which must be exact
/// and fit 16 bits.
pub const fn divisor(baud: u32) -> Result<u16> {
    if baud == 0 || MAX_BAUD % baud != 0 || MAX_BAUD / baud > u16::MAX as u32 {
        return Err(Error::InvalidBaudRate(baud));
    }
    Ok((MAX_BAUD / baud) as u16)
}

/// A 16550 UART at an I/O base, driven by polling.
#[derive(Debug)]
pub struct Uart16550<P> {
    io: P,
    base: u16,
}

impl<P: PortIo> Uart16550<P> {
    /// A UART at `base` reached through `io`. Nothing is written until
    /// [`init`](Self::init).
    pub const fn new(io: P, base: u16) -> Self {
        Self { io, base }
    }

    /// Programs `baud`, 8 data bits, no parity, 1 stop bit, FIFOs on and
    /// interrupts off.
    pub fn init(&mut self, baud: u32) -> Result<()> {
        let [lo, hi] = divisor(baud)?.to_le_bytes();
        let b = self.base;
        self.io.outb(b + reg::IER, 0);
        self.io.outb(b + reg::LCR, LCR_DLAB);
        self.io.outb(b + reg::DATA, lo);
        self.io.outb(b + reg::IER, hi);
        self.io.outb(b + reg::LCR, LCR_8N1);
        self.io.outb(b + reg::FCR, FCR_ENABLE_CLEAR_14);
        self.io.outb(b + reg::MCR, MCR_DTR_RTS);
        Ok(())
    }

    /// Sends one byte once the transmitter is empty (or after
    /// [`TX_POLL_LIMIT`] polls).
    pub fn write_byte(&mut self, byte: u8) {
        for _ in 0..TX_POLL_LIMIT {
            if self.io.inb(self.base + reg::LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.io.outb(self.base + reg::DATA, byte);
    }

    /// Waits until every byte written has left the UART (LSR bit 6), or
    /// [`TX_POLL_LIMIT`] polls: before powering off, so that an emulator
    /// that stops at once still has the last line.
    pub fn flush(&mut self) {
        for _ in 0..TX_POLL_LIMIT {
            if self.io.inb(self.base + reg::LSR) & LSR_TX_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }

    /// A received byte, if one is waiting.
    pub fn try_read_byte(&mut self) -> Option<u8> {
        if self.io.inb(self.base + reg::LSR) & LSR_DATA_READY != 0 {
            Some(self.io.inb(self.base + reg::DATA))
        } else {
            None
        }
    }
}

impl<P: PortIo> fmt::Write for Uart16550<P> {
    /// Sends `s`, turning each `\n` into `\r\n` for terminals.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use core::fmt::Write;

    use super::*;
    use crate::port::fake::{Access, FakePorts};

    #[test]
    fn divisors_from_the_datasheet_table() {
        // PC16550D table 2 (1.8432 MHz crystal): 115200 -> 1, 38400 -> 3,
        // 9600 -> 12, 50 -> 2304.
        assert_res_eq!(divisor(115_200), Ok(1));
        assert_res_eq!(divisor(38_400), Ok(3));
        assert_res_eq!(divisor(9_600), Ok(12));
        assert_res_eq!(divisor(50), Ok(2304));
        assert_res_eq!(divisor(0), Err(Error::InvalidBaudRate(0)));
        assert_res_eq!(divisor(230_400), Err(Error::InvalidBaudRate(230_400)));
        assert_res_eq!(divisor(7), Err(Error::InvalidBaudRate(7)));
        assert_res_eq!(divisor(1), Err(Error::InvalidBaudRate(1)));
    }

    #[test]
    fn init_programs_115200_8n1_on_com1() {
        let mut uart = Uart16550::new(FakePorts::new(|_| 0), COM1_BASE);
        uart.init(115_200).unwrap();
        assert_eq!(
            uart.io.writes(),
            vec![
                (0x3f9, 0x00, 1), // IER: no interrupts
                (0x3fb, 0x80, 1), // LCR: DLAB
                (0x3f8, 0x01, 1), // DLL
                (0x3f9, 0x00, 1), // DLM
                (0x3fb, 0x03, 1), // LCR: 8N1, DLAB off
                (0x3fa, 0xc7, 1), // FCR
                (0x3fc, 0x03, 1), // MCR: DTR | RTS
            ]
        );
    }

    #[test]
    fn init_splits_a_16_bit_divisor() {
        let mut uart = Uart16550::new(FakePorts::new(|_| 0), 0x2f8);
        uart.init(50).unwrap(); // divisor 2304 = 0x0900
        let w = uart.io.writes();
        assert_eq!(w[2], (0x2f8, 0x00, 1));
        assert_eq!(w[3], (0x2f9, 0x09, 1));
    }

    #[test]
    fn bad_baud_writes_nothing() {
        let mut uart = Uart16550::new(FakePorts::new(|_| 0), COM1_BASE);
        assert_res_eq!(uart.init(1000), Err(Error::InvalidBaudRate(1000)));
        assert!(uart.io.log.is_empty());
    }

    #[test]
    fn write_waits_for_thr_empty() {
        // LSR reads 0 twice, then 0x20 (THRE).
        let mut polls = 0;
        let mut uart = Uart16550::new(
            FakePorts::new(move |port| {
                assert_eq!(port, 0x3fd);
                polls += 1;
                if polls > 2 { 0x20 } else { 0 }
            }),
            COM1_BASE,
        );
        uart.write_byte(b'A');
        assert_eq!(
            uart.io.log,
            vec![
                Access::In(0x3fd, 1),
                Access::In(0x3fd, 1),
                Access::In(0x3fd, 1),
                Access::Out(0x3f8, u32::from(b'A'), 1),
            ]
        );
    }

    #[test]
    fn write_gives_up_polling_a_stuck_uart() {
        let mut uart = Uart16550::new(FakePorts::new(|_| 0), COM1_BASE);
        uart.write_byte(b'x');
        assert_eq!(uart.io.log.len(), TX_POLL_LIMIT as usize + 1);
        assert_eq!(uart.io.writes(), vec![(0x3f8, u32::from(b'x'), 1)]);
    }

    #[test]
    fn flush_waits_for_transmitter_empty() {
        // LSR 0x20 (THRE only: the FIFO is empty, the shift register not)
        // twice, then 0x60 (THRE and TEMT).
        let mut polls = 0;
        let mut uart = Uart16550::new(
            FakePorts::new(move |_| {
                polls += 1;
                if polls > 2 { 0x60 } else { 0x20 }
            }),
            COM1_BASE,
        );
        uart.flush();
        assert_eq!(uart.io.log, vec![Access::In(0x3fd, 1); 3]);
        let mut stuck = Uart16550::new(FakePorts::new(|_| 0x20), COM1_BASE);
        stuck.flush();
        assert_eq!(stuck.io.log.len(), TX_POLL_LIMIT as usize);
        assert!(stuck.io.writes().is_empty());
    }

    #[test]
    fn newline_becomes_crlf() {
        let mut uart = Uart16550::new(FakePorts::new(|_| 0x20), COM1_BASE);
        write!(uart, "a\nb").unwrap();
        let sent: Vec<u8> = uart.io.writes().iter().map(|w| w.1 as u8).collect();
        assert_eq!(sent, b"a\r\nb");
    }

    #[test]
    fn read_only_when_data_ready() {
        let mut uart = Uart16550::new(
            FakePorts::new(|port| if port == 0x3fd { 0x01 } else { b'z' }),
            COM1_BASE,
        );
        assert_eq!(uart.try_read_byte(), Some(b'z'));
        let mut idle = Uart16550::new(FakePorts::new(|_| 0x60), COM1_BASE);
        assert_eq!(idle.try_read_byte(), None);
        assert_eq!(idle.io.log, vec![Access::In(0x3fd, 1)]);
    }
}
