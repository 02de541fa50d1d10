//! The PC's pair of Intel 8259A programmable interrupt controllers: the
//! master at ports 0x20/0x21 and the slave, cascaded on master IRQ 2, at
//! 0xA0/0xA1.

use alloc::{format, string::String, sync::Arc};

use axaddrspace::AccessWidth;
use spin::Mutex;

use crate::device::{BaseDevice, IrqSink, PortDevice, PortRange};
use crate::error::{Error, Result};

/// Master 8259A command port (its data port is `+ 1`).
pub const PIC_MASTER_PORT: u16 = 0x20;
/// Slave 8259A command port (its data port is `+ 1`).
pub const PIC_SLAVE_PORT: u16 = 0xa0;
/// The master input the slave is cascaded on.
const CASCADE_IRQ: u8 = 2;

/// Where an initialization sequence stands: the next data-port write is
/// ICW2, ICW3 or ICW4, or an OCW1 when no sequence is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone, Copy)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input line levels, to turn level changes into edges.
    lines: u8,
    vector_base: u8,
    init: Init,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    /// OCW3 RIS: a command-port read returns the ISR (else the IRR).
    read_isr: bool,
    special_mask: bool,
}

impl Chip {
    const fn new() -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0xff,
            lines: 0,
            vector_base: 0,
            init: Init::Ready,
            needs_icw4: false,
            single: false,
            auto_eoi: false,
            read_isr: false,
            special_mask: false,
        }
    }

    /// ICW1 (command port, bit 4 set).
    fn icw1(&mut self, val: u8) {
        // 8259A datasheet: ICW1 clears the IMR, gives IR7 the lowest
        // priority, clears special mask mode and selects IRR for reads;
        // edge sensing restarts (the IRR is cleared here, as on PC chipsets).
        self.imr = 0;
        self.isr = 0;
        self.irr = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.auto_eoi = false;
        self.needs_icw4 = val & 1 != 0;
        self.single = val & 2 != 0;
        self.init = Init::Icw2;
    }

    /// A data-port write: the next ICW, or OCW1 (the mask).
    fn data_write(&mut self, val: u8) {
        self.init = match self.init {
            Init::Ready => {
                self.imr = val;
                Init::Ready
            }
            Init::Icw2 => {
                self.vector_base = val & 0xf8;
                if !self.single {
                    Init::Icw3
                } else if self.needs_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            // ICW3 (cascade wiring) is fixed on a PC: master IRQ 2.
            Init::Icw3 if self.needs_icw4 => Init::Icw4,
            Init::Icw3 => Init::Ready,
            Init::Icw4 => {
                self.auto_eoi = val & 2 != 0;
                Init::Ready
            }
        };
    }

    /// The highest-priority in-service level (0 is highest), if any.
    fn highest_isr(&self) -> Option<u8> {
        (self.isr != 0).then(|| self.isr.trailing_zeros() as u8)
    }

    /// The level this chip would interrupt with: the highest unmasked
    /// request above every in-service level (special mask mode lets a
    /// lower level through while a higher one is in service).
    fn pending(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        if req == 0 {
            return None;
        }
        let level = req.trailing_zeros() as u8;
        match self.highest_isr() {
            Some(isr) if !self.special_mask && isr <= level => None,
            _ => Some(level),
        }
    }

    fn set_line(&mut self, level: u8, high: bool) {
        let bit = 1 << level;
        if high && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
            // Edge mode: a request that went away before the acknowledge
            // leaves the IRR like on real chips (the datasheet requires
            // the line to stay high until the first INTA).
            self.irr &= !bit;
        }
    }

    /// INTA: moves `level` from IRR to ISR (unless auto-EOI).
    fn ack(&mut self, level: u8) {
        let bit = 1 << level;
        self.irr &= !bit;
        if !self.auto_eoi {
            self.isr |= bit;
        }
    }
}

#[derive(Debug)]
struct Pair {
    master: Chip,
    slave: Chip,
}

impl Pair {
    /// The cascade input of the master is level sensitive: its request
    /// follows the slave's output.
    fn sync_cascade(&mut self) {
        let bit = 1 << CASCADE_IRQ;
        if self.slave.pending().is_some() {
            self.master.irr |= bit;
            self.master.lines |= bit;
        } else {
            self.master.irr &= !bit;
            self.master.lines &= !bit;
        }
    }
}

/// The two 8259As of a PC, as one shared model. [`Pic8259::port_devices`]
/// gives the two port devices to add to a device set.
///
/// Done: the ICW1-ICW4 sequence (vector base from ICW2, single mode,
/// auto-EOI from ICW4), OCW1 mask read/write, OCW2 non-specific and
/// specific EOI, OCW3 IRR/ISR read select and special mask mode, edge
/// triggered inputs through [`IrqSink`], fixed priority with the slave on
/// master IRQ 2, and [`pending_vector`](Self::pending_vector) /
/// [`ack`](Self::ack) for the VM's injection path.
///
/// **Not done** (each is [`Error::Unsupported`]): OCW2 rotation and set
/// priority commands, OCW3 poll mode. The ELCR (level mode) is not modelled.
pub struct Pic8259 {
    state: Mutex<Pair>,
}

impl Default for Pic8259 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic8259 {
    /// Both chips fresh from reset: all inputs masked, not initialized.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(Pair {
                master: Chip::new(),
                slave: Chip::new(),
            }),
        }
    }

    /// The port devices for the master (0x20-0x21) and the slave (0xA0-0xA1).
    pub fn port_devices(self: &Arc<Self>) -> [Arc<PicPorts>; 2] {
        [
            Arc::new(PicPorts::new(self.clone(), false)),
            Arc::new(PicPorts::new(self.clone(), true)),
        ]
    }

    /// The vector of the highest-priority unmasked pending request, if the
    /// pair is asserting its output.
    pub fn pending_vector(&self) -> Option<u8> {
        let s = self.state.lock();
        let level = s.master.pending()?;
        if level == CASCADE_IRQ && !s.master.single {
            let sl = s.slave.pending()?;
            Some(s.slave.vector_base | sl)
        } else {
            Some(s.master.vector_base | level)
        }
    }

    /// The CPU's interrupt acknowledge: takes the pending request into
    /// service and returns its vector.
    pub fn ack(&self) -> Option<u8> {
        let mut s = self.state.lock();
        let level = s.master.pending()?;
        if level == CASCADE_IRQ && !s.master.single {
            let sl = s.slave.pending()?;
            s.slave.ack(sl);
            s.master.ack(level);
            Some(s.slave.vector_base | sl)
        } else {
            s.master.ack(level);
            Some(s.master.vector_base | level)
        }
    }

    /// The interrupt mask of the master (low byte) and slave (high byte).
    pub fn masks(&self) -> u16 {
        let s = self.state.lock();
        u16::from(s.master.imr) | (u16::from(s.slave.imr) << 8)
    }

    fn read(&self, slave: bool, data: bool) -> u8 {
        let s = self.state.lock();
        let c = if slave { &s.slave } else { &s.master };
        match (data, c.read_isr) {
            (true, _) => c.imr,
            (false, true) => c.isr,
            (false, false) => c.irr,
        }
    }

    fn write(&self, name: &str, slave: bool, data: bool, val: u8) -> Result {
        let mut s = self.state.lock();
        let c = if slave { &mut s.slave } else { &mut s.master };
        let unsupported = |what| Error::Unsupported {
            dev: name.into(),
            what,
        };
        if data {
            c.data_write(val);
        } else if val & 0x10 != 0 {
            c.icw1(val);
        } else if val & 0x08 != 0 {
            // OCW3.
            if val & 0x04 != 0 {
                return Err(unsupported("OCW3 poll mode"));
            }
            if val & 0x02 != 0 {
                c.read_isr = val & 0x01 != 0;
            }
            if val & 0x40 != 0 {
                c.special_mask = val & 0x20 != 0;
            }
        } else {
            // OCW2: R SL EOI in bits 7:5, level in 2:0.
            match val >> 5 {
                0b001 => {
                    if let Some(l) = c.highest_isr() {
                        c.isr &= !(1 << l);
                    }
                }
                0b011 => c.isr &= !(1 << (val & 7)),
                0b000 | 0b010 => {} // no operation
                _ => return Err(unsupported("OCW2 rotation / set priority")),
            }
        }
        s.sync_cascade();
        Ok(())
    }
}

impl IrqSink for Pic8259 {
    /// ISA IRQ 0-7 go to the master, 8-15 to the slave; others are ignored.
    fn set_irq_level(&self, irq: u32, high: bool) {
        let mut s = self.state.lock();
        match irq {
            0..=7 => s.master.set_line(irq as u8, high),
            8..=15 => {
                s.slave.set_line(irq as u8 - 8, high);
                s.sync_cascade();
            }
            _ => {}
        }
    }
}

/// The two ports of one chip of a [`Pic8259`].
pub struct PicPorts {
    name: String,
    pic: Arc<Pic8259>,
    slave: bool,
    port: u16,
}

impl PicPorts {
    fn new(pic: Arc<Pic8259>, slave: bool) -> Self {
        let port = if slave {
            PIC_SLAVE_PORT
        } else {
            PIC_MASTER_PORT
        };
        Self {
            name: format!(
                "pic8259-{}@{port:#x}",
                if slave { "slave" } else { "master" }
            ),
            pic,
            slave,
            port,
        }
    }

    fn is_data(&self, port: u16, width: AccessWidth) -> Result<bool> {
        if width != AccessWidth::Byte {
            return Err(Error::BadWidth {
                dev: self.name.clone(),
                offset: u64::from(port.wrapping_sub(self.port)),
                width,
            });
        }
        Ok(port != self.port)
    }
}

impl BaseDevice for PicPorts {
    fn name(&self) -> &str {
        &self.name
    }
}

impl PortDevice for PicPorts {
    fn port_range(&self) -> PortRange {
        PortRange::new(self.port, 2)
    }

    fn port_read(&self, port: u16, width: AccessWidth) -> Result<u64> {
        let data = self.is_data(port, width)?;
        Ok(u64::from(self.pic.read(self.slave, data)))
    }

    fn port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result {
        let data = self.is_data(port, width)?;
        self.pic.write(&self.name, self.slave, data, val as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic() -> (Arc<Pic8259>, [Arc<PicPorts>; 2]) {
        let p = Arc::new(Pic8259::new());
        let d = p.port_devices();
        (p, d)
    }

    fn out(d: &PicPorts, port: u16, v: u8) {
        d.port_write(port, AccessWidth::Byte, u64::from(v)).unwrap();
    }

    fn inb(d: &PicPorts, port: u16) -> u8 {
        d.port_read(port, AccessWidth::Byte).unwrap() as u8
    }

    /// The sequence Linux and most kernels use: vectors 0x20 and 0x28.
    fn init(d: &[Arc<PicPorts>; 2]) {
        let [m, s] = d;
        out(m, 0x20, 0x11); // ICW1: edge, cascade, ICW4 needed
        out(s, 0xa0, 0x11);
        out(m, 0x21, 0x20); // ICW2
        out(s, 0xa1, 0x28);
        out(m, 0x21, 0x04); // ICW3: slave on IR2
        out(s, 0xa1, 0x02); // ICW3: slave ID 2
        out(m, 0x21, 0x01); // ICW4: 8086 mode
        out(s, 0xa1, 0x01);
    }

    #[test]
    fn ranges_and_reset_state() {
        let (p, [m, s]) = pic();
        assert_eq!(m.port_range(), PortRange::new(0x20, 2));
        assert_eq!(s.port_range(), PortRange::new(0xa0, 2));
        assert_eq!(p.masks(), 0xffff);
        assert_eq!(inb(&m, 0x21), 0xff);
        p.set_irq_level(0, true);
        assert_eq!(p.pending_vector(), None, "masked at reset");
    }

    #[test]
    fn icw_sequence_then_mask_writes() {
        let (p, d) = pic();
        init(&d);
        assert_eq!(p.masks(), 0, "ICW1 clears the IMR");
        out(&d[0], 0x21, 0xfb);
        out(&d[1], 0xa1, 0xff);
        assert_eq!(inb(&d[0], 0x21), 0xfb);
        assert_eq!(inb(&d[1], 0xa1), 0xff);
        assert_eq!(p.masks(), 0xfffb);
    }

    #[test]
    fn priority_ack_and_eoi() {
        let (p, d) = pic();
        let [m, s] = &d;
        init(&d);
        p.set_irq_level(4, true);
        p.set_irq_level(1, true);
        // OCW3 read IRR.
        out(m, 0x20, 0x0a);
        assert_eq!(inb(m, 0x20), 0b0001_0010);
        assert_eq!(p.pending_vector(), Some(0x21), "IRQ 1 beats IRQ 4");
        assert_eq!(p.ack(), Some(0x21));
        // IRQ 4 waits while IRQ 1 is in service.
        assert_eq!(p.pending_vector(), None);
        out(m, 0x20, 0x0b); // OCW3 read ISR
        assert_eq!(inb(m, 0x20), 0b0000_0010);
        out(m, 0x20, 0x20); // OCW2 non-specific EOI
        assert_eq!(inb(m, 0x20), 0);
        assert_eq!(p.ack(), Some(0x24));
        out(m, 0x20, 0x64); // specific EOI, level 4
        assert_eq!(inb(m, 0x20), 0);
        // A slave interrupt goes through the cascade.
        p.set_irq_level(12, true);
        assert_eq!(p.pending_vector(), Some(0x2c));
        out(m, 0x21, 0x04); // mask the cascade
        assert_eq!(p.pending_vector(), None);
        out(m, 0x21, 0x00);
        assert_eq!(p.ack(), Some(0x2c));
        out(s, 0xa0, 0x0b);
        assert_eq!(inb(s, 0xa0), 0b0001_0000);
        out(s, 0xa0, 0x20);
        out(m, 0x20, 0x20);
        assert_eq!(inb(m, 0x20), 0);
        assert_eq!(p.pending_vector(), None);
        // A still-high line gives no new edge.
        assert_eq!(p.ack(), None);
    }

    #[test]
    fn unsupported_commands_and_widths_are_errors() {
        let (_, [m, _]) = pic();
        assert!(matches!(
            m.port_write(0x20, AccessWidth::Byte, 0x0c),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            m.port_write(0x20, AccessWidth::Byte, 0xa0),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            m.port_read(0x20, AccessWidth::Word),
            Err(Error::BadWidth { .. })
        ));
    }
}
