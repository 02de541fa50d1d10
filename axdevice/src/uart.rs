//! A 16550A UART (the PC serial port), after the National Semiconductor
//! PC16550D datasheet.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the
//! [`UartBackend`], so LSR.THRE and LSR.TEMT always read 1. Received bytes
//! come from [`Uart16550::push_input`] into a bounded queue that plays the
//! part of the receiver FIFO, or from the backend's
//! [`read_byte`](UartBackend::read_byte), one byte at a time, when the guest
//! polls an empty receiver.

use alloc::{collections::VecDeque, format, string::String, sync::Arc};

use axaddrspace::AccessWidth;
use spin::Mutex;

use crate::console::UartBackend;
use crate::device::{BaseDevice, IrqSink, PortDevice, PortRange};
use crate::error::{Error, Result};

/// Base port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Base port of COM2.
pub const COM2_BASE: u16 = 0x2f8;
/// Base port of COM3.
pub const COM3_BASE: u16 = 0x3e8;
/// Base port of COM4.
pub const COM4_BASE: u16 = 0x2e8;
/// ISA IRQ of COM1 (and COM3).
pub const COM1_IRQ: u32 = 4;
/// ISA IRQ of COM2 (and COM4).
pub const COM2_IRQ: u32 = 3;
/// Number of ports a 16550 occupies.
pub const UART_PORTS: u16 = 8;
/// Default capacity of the receive queue, in bytes.
pub const DEFAULT_RX_CAPACITY: usize = 256;

// Register offsets.
const RBR_THR_DLL: usize = 0;
const IER_DLM: usize = 1;
const IIR_FCR: usize = 2;
const LCR: usize = 3;
const MCR: usize = 4;
const LSR: usize = 5;
const MSR: usize = 6;
// Offset 7 is SCR, the `_` arm of the register matches.

// IER bits.
const IER_ERBFI: u8 = 0x01;
const IER_ETBEI: u8 = 0x02;
const IER_ELSI: u8 = 0x04;
const IER_EDSSI: u8 = 0x08;

// IIR values (bits 3:0) and the FIFO-enabled bits 7:6.
const IIR_NO_INT: u8 = 0x01;
const IIR_LINE_STATUS: u8 = 0x06;
const IIR_RX_DATA: u8 = 0x04;
const IIR_RX_TIMEOUT: u8 = 0x0c;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_MODEM_STATUS: u8 = 0x00;
const IIR_FIFO_ENABLED: u8 = 0xc0;

// FCR bits.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_CLEAR_TX: u8 = 0x04;
/// FCR bits kept: FIFO enable, DMA mode, receiver trigger level.
const FCR_KEPT: u8 = 0xc9;

const LCR_DLAB: u8 = 0x80;

const MCR_LOOP: u8 = 0x10;
const MCR_WRITABLE: u8 = 0x1f;

// LSR bits.
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

// MSR bits.
const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_RI: u8 = 0x40;
/// Modem inputs outside loopback: CTS, DSR and DCD asserted, as on a
/// connected terminal.
const MSR_EXTERNAL: u8 = 0xb0;

/// Divisor latch after reset: 12, i.e. 9600 baud from 1.8432 MHz.
const DEFAULT_DIVISOR: u16 = 12;

struct UartState {
    ier: u8,
    lcr: u8,
    mcr: u8,
    fcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// LSR error bits (OE) waiting to be read.
    lsr_errors: u8,
    /// MSR delta bits (3:0) waiting to be read.
    msr_delta: u8,
    rx: VecDeque<u8>,
    rx_capacity: usize,
    /// The THR-empty interrupt condition (cleared by an IIR read reporting
    /// it and by a THR write).
    thr_ipending: bool,
    /// Last level given to the interrupt line.
    irq_high: bool,
}

impl UartState {
    fn new(rx_capacity: usize) -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            fcr: 0,
            scr: 0,
            dll: DEFAULT_DIVISOR as u8,
            dlm: (DEFAULT_DIVISOR >> 8) as u8,
            lsr_errors: 0,
            msr_delta: 0,
            rx: VecDeque::new(),
            rx_capacity,
            thr_ipending: false,
            irq_high: false,
        }
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    /// Receiver FIFO trigger level selected by FCR bits 7:6.
    fn rx_trigger(&self) -> usize {
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
        LSR_THRE | LSR_TEMT | self.lsr_errors | dr
    }

    /// MSR bits 7:4. In loopback they follow MCR: RTS->CTS, DTR->DSR,
    /// OUT1->RI, OUT2->DCD.
    fn modem_inputs(&self) -> u8 {
        if self.loopback() {
            let m = self.mcr;
            ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
        } else {
            MSR_EXTERNAL
        }
    }

    /// Interrupt identification (IIR bits 3:0) of the highest-priority
    /// pending, enabled interrupt.
    fn pending(&self) -> Option<u8> {
        if self.ier & IER_ELSI != 0 && self.lsr_errors != 0 {
            Some(IIR_LINE_STATUS)
        } else if self.ier & IER_ERBFI != 0 && !self.rx.is_empty() {
            // With FIFOs, data below the trigger level is reported as a
            // character timeout: no more characters are coming, so the
            // four-character timeout has (instantly) elapsed.
            if self.fifo_enabled() && self.rx.len() < self.rx_trigger() {
                Some(IIR_RX_TIMEOUT)
            } else {
                Some(IIR_RX_DATA)
            }
        } else if self.ier & IER_ETBEI != 0 && self.thr_ipending {
            Some(IIR_THR_EMPTY)
        } else if self.ier & IER_EDSSI != 0 && self.msr_delta != 0 {
            Some(IIR_MODEM_STATUS)
        } else {
            None
        }
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        self.pending().unwrap_or(IIR_NO_INT) | fifo
    }

    /// A byte arrives at the receiver; false (and LSR.OE set) if the
    /// queue is full.
    fn receive(&mut self, b: u8) -> bool {
        if self.rx.len() >= self.rx_capacity {
            self.lsr_errors |= LSR_OE;
            false
        } else {
            self.rx.push_back(b);
            true
        }
    }

    fn set_mcr(&mut self, val: u8) {
        let old = self.modem_inputs();
        self.mcr = val & MCR_WRITABLE;
        let new = self.modem_inputs();
        let changed = old ^ new;
        // CTS (bit 4) -> DCTS (bit 0), DSR (5) -> DDSR (1), DCD (7) -> DDCD (3).
        self.msr_delta |= (changed >> 4) & (MSR_DCTS | MSR_DDSR | MSR_DDCD);
        // TERI: RI went from 1 to 0.
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_delta |= MSR_TERI;
        }
    }

    fn write_fcr(&mut self, val: u8) {
        let mut val = val;
        // Changing the FIFO enable bit resets both FIFOs.
        if (val ^ self.fcr) & FCR_ENABLE != 0 {
            val |= FCR_CLEAR_RX | FCR_CLEAR_TX;
        }
        if val & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        // The transmit FIFO is always empty: nothing to clear.
        self.fcr = val & FCR_KEPT;
    }
}

/// A 16550A UART on 8 I/O ports.
///
/// Registers (offset from the base; DLAB is LCR bit 7):
///
/// | offset | read | write |
/// |---|---|---|
/// | 0 | RBR (DLAB=0) / DLL (DLAB=1) | THR (DLAB=0) / DLL (DLAB=1) |
/// | 1 | IER (DLAB=0) / DLM (DLAB=1) | IER / DLM |
/// | 2 | IIR | FCR |
/// | 3 | LCR | LCR |
/// | 4 | MCR | MCR |
/// | 5 | LSR | ignored (factory test) |
/// | 6 | MSR | ignored |
/// | 7 | SCR | SCR |
///
/// Accesses wider than a byte are split into byte accesses at consecutive
/// offsets, as the ISA bus does. The interrupt line is re-evaluated after
/// every access and after [`push_input`](Self::push_input), and driven
/// through the [`IrqSink`] given to [`with_irq`](Self::with_irq). Like QEMU,
/// the line is not gated by MCR.OUT2.
pub struct Uart16550 {
    name: String,
    base: u16,
    backend: Arc<dyn UartBackend>,
    irq: Option<(Arc<dyn IrqSink>, u32)>,
    state: Mutex<UartState>,
}

impl Uart16550 {
    /// A UART at ports `base..base + 8`, sending its output to `backend`,
    /// with no interrupt line and a receive queue of
    /// [`DEFAULT_RX_CAPACITY`] bytes.
    pub fn new(base: u16, backend: Arc<dyn UartBackend>) -> Self {
        Self {
            name: format!("uart16550@{base:#x}"),
            base,
            backend,
            irq: None,
            state: Mutex::new(UartState::new(DEFAULT_RX_CAPACITY)),
        }
    }

    /// A UART at COM1 (ports `0x3f8..0x400`), no interrupt line yet.
    pub fn com1(backend: Arc<dyn UartBackend>) -> Self {
        Self::new(COM1_BASE, backend)
    }

    /// Drives interrupt line `irq` of `sink` (e.g. [`COM1_IRQ`]).
    pub fn with_irq(mut self, sink: Arc<dyn IrqSink>, irq: u32) -> Self {
        self.irq = Some((sink, irq));
        self
    }

    /// Sets the capacity of the receive queue (bytes beyond it are dropped
    /// with LSR.OE set).
    pub fn with_rx_capacity(mut self, capacity: usize) -> Self {
        self.state.get_mut().rx_capacity = capacity;
        self
    }

    /// First port of the UART.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// Feeds bytes to the receiver, as if they arrived on the serial line.
    ///
    /// Returns how many were taken. Once the receive queue is full the rest
    /// are dropped and LSR.OE (overrun, bit 1) is set. In loopback mode the
    /// serial input is disconnected: nothing is taken and no error is
    /// flagged, so the caller may offer the bytes again later.
    pub fn push_input(&self, bytes: &[u8]) -> usize {
        let mut st = self.state.lock();
        if st.loopback() {
            return 0;
        }
        let mut taken = 0;
        for &b in bytes {
            if !st.receive(b) {
                break;
            }
            taken += 1;
        }
        if taken < bytes.len() {
            log::debug!(
                "{}: receive queue full, {} byte(s) dropped",
                self.name,
                bytes.len() - taken
            );
        }
        self.update_irq(&mut st);
        taken
    }

    /// Resets the UART to its power-on state (PC16550D table IV), emptying
    /// the receive queue and lowering the interrupt line.
    pub fn reset(&self) {
        let mut st = self.state.lock();
        let (cap, irq_high) = (st.rx_capacity, st.irq_high);
        *st = UartState::new(cap);
        st.irq_high = irq_high;
        self.update_irq(&mut st);
    }

    /// The baud rate divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        let st = self.state.lock();
        u16::from_le_bytes([st.dll, st.dlm])
    }

    /// Whether the UART currently asserts its interrupt line.
    pub fn irq_asserted(&self) -> bool {
        self.state.lock().irq_high
    }

    /// Number of received bytes the guest has not read yet.
    pub fn pending_input(&self) -> usize {
        self.state.lock().rx.len()
    }

    fn update_irq(&self, st: &mut UartState) {
        let high = st.pending().is_some();
        if high != st.irq_high {
            st.irq_high = high;
            if let Some((sink, irq)) = &self.irq {
                sink.set_irq_level(*irq, high);
            }
        }
    }

    /// The guest polls the receiver: if the receive queue is empty, take
    /// one byte of the backend's input, if any. Not in loopback, where the
    /// serial input is disconnected.
    fn poll_backend(&self, st: &mut UartState) {
        if st.rx.is_empty()
            && !st.loopback()
            && let Some(b) = self.backend.read_byte()
        {
            st.receive(b);
        }
    }

    fn read_reg(&self, st: &mut UartState, off: usize) -> u8 {
        match off {
            RBR_THR_DLL if st.dlab() => st.dll,
            RBR_THR_DLL => {
                self.poll_backend(st);
                st.rx.pop_front().unwrap_or(0)
            }
            IER_DLM if st.dlab() => st.dlm,
            IER_DLM => st.ier,
            IIR_FCR => {
                let iir = st.iir();
                // Reading IIR when it reports THR empty clears that source.
                if iir & 0x0f == IIR_THR_EMPTY {
                    st.thr_ipending = false;
                }
                iir
            }
            LCR => st.lcr,
            MCR => st.mcr,
            LSR => {
                self.poll_backend(st);
                let lsr = st.lsr();
                st.lsr_errors = 0;
                lsr
            }
            MSR => {
                let msr = st.modem_inputs() | st.msr_delta;
                st.msr_delta = 0;
                msr
            }
            _ => st.scr,
        }
    }

    fn write_reg(&self, st: &mut UartState, off: usize, val: u8) {
        match off {
            RBR_THR_DLL if st.dlab() => st.dll = val,
            RBR_THR_DLL => {
                // Writing THR clears the THR-empty interrupt; the byte is
                // sent at once, so THR is empty again and the interrupt
                // comes back. The line drops and rises in between, giving an
                // edge-triggered controller a new edge (as QEMU does).
                st.thr_ipending = false;
                self.update_irq(st);
                if st.loopback() {
                    st.receive(val);
                } else {
                    self.backend.write_byte(val);
                }
                st.thr_ipending = true;
            }
            IER_DLM if st.dlab() => st.dlm = val,
            IER_DLM => {
                let changed = (st.ier ^ val) & 0x0f;
                st.ier = val & 0x0f;
                // Enabling ETBEI while THR is empty (always) raises the
                // THR-empty interrupt; disabling it drops the condition.
                if changed & IER_ETBEI != 0 {
                    st.thr_ipending = st.ier & IER_ETBEI != 0;
                }
            }
            IIR_FCR => st.write_fcr(val),
            LCR => st.lcr = val,
            MCR => st.set_mcr(val),
            LSR | MSR => {}
            _ => st.scr = val,
        }
    }

    /// Offset of an access of `width` at `port`, checked to lie inside the
    /// 8 registers.
    #[inline]
    fn offset(&self, port: u16, width: AccessWidth) -> Result<usize> {
        let off = usize::from(port.wrapping_sub(self.base));
        if off + width.size() <= usize::from(UART_PORTS) {
            Ok(off)
        } else {
            Err(self.offset_error(off, width))
        }
    }

    #[cold]
    #[inline(never)]
    fn offset_error(&self, off: usize, width: AccessWidth) -> Error {
        if off >= usize::from(UART_PORTS) {
            Error::BadOffset {
                dev: self.name.clone(),
                offset: off as u64,
            }
        } else {
            Error::BadWidth {
                dev: self.name.clone(),
                offset: off as u64,
                width,
            }
        }
    }
}

impl BaseDevice for Uart16550 {
    fn name(&self) -> &str {
        &self.name
    }
}

impl PortDevice for Uart16550 {
    fn port_range(&self) -> PortRange {
        PortRange::new(self.base, UART_PORTS)
    }

    fn port_read(&self, port: u16, width: AccessWidth) -> Result<u64> {
        let off = self.offset(port, width)?;
        let mut st = self.state.lock();
        let mut val = 0u64;
        for i in 0..width.size() {
            val |= u64::from(self.read_reg(&mut st, off + i)) << (8 * i);
        }
        self.update_irq(&mut st);
        Ok(val)
    }

    fn port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result {
        let off = self.offset(port, width)?;
        let mut st = self.state.lock();
        if width == AccessWidth::Byte {
            // The usual case: one register.
            self.write_reg(&mut st, off, val as u8);
        } else {
            for i in 0..width.size() {
                self.write_reg(&mut st, off + i, (val >> (8 * i)) as u8);
            }
        }
        self.update_irq(&mut st);
        Ok(())
    }
}
