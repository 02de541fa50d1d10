//! The I/O APIC's register window (Intel 82093AA datasheet): IOREGSEL and
//! IOWIN with the ID, version, arbitration and redirection table registers.

use alloc::{format, string::String};

use axaddrspace::{AccessWidth, GuestPhysAddr};
use spin::Mutex;

use crate::device::{BaseDevice, MmioDevice, MmioRange};
use crate::error::{Error, Result};

/// Redirection entry bit 16: the input is masked.
pub const IOAPIC_RTE_MASKED: u64 = 1 << 16;

#[derive(Debug)]
struct State {
    ioregsel: u32,
    id: u32,
    redir: [u64; IoApic::PINS],
}

/// An I/O APIC at a 4 KiB MMIO window: IOREGSEL (offset 0x00) selects a
/// register, IOWIN (offset 0x10) reads or writes it. Registers: IOAPICID
/// (0x00, ID in bits 27:24), IOAPICVER (0x01: version 0x11, 24 entries),
/// IOAPICARB (0x02), and the 24 redirection entries as 32-bit halves at
/// 0x10 + 2n (low) and 0x11 + 2n (high), masked at reset.
///
/// **Not done:** nothing is delivered: the entries are stored for the guest
/// to read back, but no device input is routed through them yet (NimbOS and
/// ArceOS map the I/O APIC and never program it). Accesses other than
/// aligned 32-bit ones to IOREGSEL/IOWIN are [`Error::BadWidth`] /
/// [`Error::BadOffset`]; an unimplemented register index reads 0.
pub struct IoApic {
    name: String,
    base: GuestPhysAddr,
    state: Mutex<State>,
}

impl IoApic {
    /// Where PCs put the first I/O APIC.
    pub const DEFAULT_BASE: usize = 0xfec0_0000;
    /// Size of the MMIO window.
    pub const SIZE: usize = 0x1000;
    /// Number of inputs (redirection entries).
    pub const PINS: usize = 24;
    /// IOAPICVER: max redirection entry 23 in bits 23:16, version 0x11.
    pub const VERSION: u32 = ((Self::PINS as u32 - 1) << 16) | 0x11;

    /// An I/O APIC at `base` with APIC ID `id`.
    pub fn new(base: GuestPhysAddr, id: u8) -> Self {
        Self {
            name: format!("ioapic@{:#x}", base.as_usize()),
            base,
            state: Mutex::new(State {
                ioregsel: 0,
                id: u32::from(id & 0xf) << 24,
                redir: [IOAPIC_RTE_MASKED; Self::PINS],
            }),
        }
    }

    /// Redirection entry `pin`, if it exists.
    pub fn redirection(&self, pin: usize) -> Option<u64> {
        self.state.lock().redir.get(pin).copied()
    }

    fn offset(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<usize> {
        let off = addr.as_usize().wrapping_sub(self.base.as_usize());
        if off != 0x00 && off != 0x10 {
            return Err(Error::BadOffset {
                dev: self.name.clone(),
                offset: off as u64,
            });
        }
        if width != AccessWidth::Dword {
            return Err(Error::BadWidth {
                dev: self.name.clone(),
                offset: off as u64,
                width,
            });
        }
        Ok(off)
    }
}

impl BaseDevice for IoApic {
    fn name(&self) -> &str {
        &self.name
    }
}

impl MmioDevice for IoApic {
    fn mmio_range(&self) -> MmioRange {
        MmioRange::new(self.base, Self::SIZE)
    }

    fn mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        let off = self.offset(addr, width)?;
        let s = self.state.lock();
        if off == 0 {
            return Ok(u64::from(s.ioregsel));
        }
        let v = match s.ioregsel {
            0x00 => s.id,
            0x01 => Self::VERSION,
            0x02 => s.id,
            r @ 0x10..=0x3f => {
                let e = s.redir[(r as usize - 0x10) / 2];
                if r & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        };
        Ok(u64::from(v))
    }

    fn mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result {
        let off = self.offset(addr, width)?;
        let val = val as u32;
        let mut s = self.state.lock();
        if off == 0 {
            s.ioregsel = val & 0xff;
            return Ok(());
        }
        match s.ioregsel {
            0x00 => s.id = val & 0x0f00_0000,
            r @ 0x10..=0x3f => {
                let e = &mut s.redir[(r as usize - 0x10) / 2];
                if r & 1 == 0 {
                    // Bits 12 (delivery status) and 14 (remote IRR) are read-only.
                    let ro = (1 << 12) | (1 << 14);
                    let low = (u64::from(val) & !ro) | (*e & ro);
                    *e = (*e & !0xffff_ffff) | low;
                } else {
                    *e = (*e & 0xffff_ffff) | (u64::from(val) << 32);
                }
            }
            // The version and arbitration registers are read-only.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: usize = IoApic::DEFAULT_BASE;

    fn sel(a: &IoApic, reg: u32) {
        a.mmio_write(
            GuestPhysAddr::from(BASE),
            AccessWidth::Dword,
            u64::from(reg),
        )
        .unwrap();
    }

    fn win(a: &IoApic) -> u64 {
        a.mmio_read(GuestPhysAddr::from(BASE + 0x10), AccessWidth::Dword)
            .unwrap()
    }

    fn set_win(a: &IoApic, v: u32) {
        a.mmio_write(
            GuestPhysAddr::from(BASE + 0x10),
            AccessWidth::Dword,
            u64::from(v),
        )
        .unwrap();
    }

    #[test]
    fn id_version_and_masked_entries_after_reset() {
        let a = IoApic::new(GuestPhysAddr::from(BASE), 1);
        sel(&a, 0);
        assert_eq!(win(&a), 0x0100_0000);
        sel(&a, 1);
        assert_eq!(win(&a), 0x0017_0011, "24 entries, version 0x11");
        for pin in 0..24 {
            sel(&a, 0x10 + 2 * pin);
            assert_eq!(win(&a), 0x1_0000, "masked at reset");
        }
        // Read-only version.
        sel(&a, 1);
        set_win(&a, 0);
        assert_eq!(win(&a), 0x0017_0011);
        // IOREGSEL reads back.
        assert_eq!(
            a.mmio_read(GuestPhysAddr::from(BASE), AccessWidth::Dword)
                .unwrap(),
            1
        );
    }

    #[test]
    fn redirection_entries_store_both_halves() {
        let a = IoApic::new(GuestPhysAddr::from(BASE), 0);
        sel(&a, 0x12); // pin 1 low
        set_win(&a, 0x0000_d031); // vector 0x31, level; bits 12 and 14 are read-only
        sel(&a, 0x13); // pin 1 high
        set_win(&a, 0x0300_0000); // destination 3
        assert_eq!(a.redirection(1), Some(0x0300_0000_0000_8031));
        sel(&a, 0x12);
        assert_eq!(win(&a), 0x8031, "delivery status and remote IRR stay 0");
        assert_eq!(a.redirection(24), None);
    }

    #[test]
    fn other_offsets_and_widths_are_errors() {
        let a = IoApic::new(GuestPhysAddr::from(BASE), 0);
        assert!(matches!(
            a.mmio_read(GuestPhysAddr::from(BASE + 0x20), AccessWidth::Dword),
            Err(Error::BadOffset { offset: 0x20, .. })
        ));
        assert!(matches!(
            a.mmio_read(GuestPhysAddr::from(BASE + 0x10), AccessWidth::Qword),
            Err(Error::BadWidth { .. })
        ));
    }
}
