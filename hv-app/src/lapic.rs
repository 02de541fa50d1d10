//! The BSP's local APIC through its xAPIC MMIO page: enough to send the
//! INIT and STARTUP IPIs of SMP bring-up (`hv_app::apic` has the logic).

use core::arch::asm;

use hv_app::apic::{ApicBase, IA32_APIC_BASE, ICR_SEND_PENDING, Icr, IpiSender, reg};
use hv_app::paging::{Leaf, find_leaf, uncacheable};
use hv_app::{Error, Result};

use crate::cpu;
use crate::phys::IDENTITY_MAP_END;

/// SVR bit 8: the APIC is software-enabled.
const SVR_ENABLE: u32 = 1 << 8;
/// The spurious-interrupt vector hv-app programs (low 4 bits set, as P6
/// family APICs require).
const SPURIOUS_VECTOR: u32 = 0xff;

/// This CPU's `IA32_APIC_BASE`.
pub fn apic_base() -> ApicBase {
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC, which
    // every x86_64 CPU has.
    ApicBase(unsafe { cpu::rdmsr(IA32_APIC_BASE) })
}

/// Checks that the page at `addr` is identity mapped and makes it
/// uncacheable (PCD and PWT in the
/// entry that maps it: PAT entry 3, UC) and flushes its TLB entry. The boot
/// map covers the first 4 GiB with write-back 2 MiB pages; MMIO must not be
/// cached. Only this CPU's TLB is flushed: call it before the APs start
/// (they load CR3 afresh).
pub fn map_uncacheable(addr: u64) -> Result<Leaf> {
    let cr3 = cpu::control_regs().cr3;
    let read = |entry_addr: u64| -> Result<u64> {
        if entry_addr % 8 != 0 || entry_addr == 0 || entry_addr + 8 > IDENTITY_MAP_END {
            return Err(Error::OutOfBounds {
                addr: entry_addr,
                len: 8,
            });
        }
        // SAFETY: a page table entry of the active tables, identity mapped
        // below 4 GiB, 8-byte aligned.
        Ok(unsafe { core::ptr::read_volatile(entry_addr as *const u64) })
    };
    let leaf = find_leaf(read, cr3, addr)?;
    if leaf.translate(addr) != addr {
        return Err(Error::Unsupported(
            "the page tables do not identity-map the local APIC page",
        ));
    }
    let wanted = uncacheable(leaf.entry);
    if wanted != leaf.entry {
        // SAFETY: the entry maps the MMIO page (and the rest of its 2 MiB
        // or 4 KiB page, the APIC's region) to the same frame; only its
        // memory type changes. The TLB entry is flushed right after.
        unsafe {
            core::ptr::write_volatile(leaf.entry_addr as *mut u64, wanted);
            asm!("invlpg [{0}]", in(reg) addr, options(nostack, preserves_flags));
        }
    }
    Ok(Leaf {
        entry: wanted,
        ..leaf
    })
}

/// A local APIC's xAPIC register page.
#[derive(Debug)]
pub struct XApic {
    base: u64,
}

impl XApic {
    /// The register page at `base`.
    ///
    /// # Safety
    ///
    /// `base` is this CPU's xAPIC page (APIC enabled, not in x2APIC mode),
    /// identity mapped and uncacheable, and this handle is the only one
    /// writing the ICR.
    pub const unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    fn read(&self, offset: u32) -> u32 {
        // SAFETY: `new`'s contract: an aligned 32-bit register in the
        // mapped APIC page.
        unsafe { core::ptr::read_volatile((self.base + u64::from(offset)) as *const u32) }
    }

    fn write(&mut self, offset: u32, value: u32) {
        // SAFETY: as in `read`; writes to these registers only have the
        // effects this module asks for.
        unsafe { core::ptr::write_volatile((self.base + u64::from(offset)) as *mut u32, value) }
    }

    /// The APIC ID register (bits 31-24).
    pub fn id(&self) -> u32 {
        self.read(reg::ID) >> 24
    }

    /// The version register's version field (0x10-0x15: integrated APIC).
    pub fn version(&self) -> u32 {
        self.read(reg::VERSION) & 0xff
    }

    /// Software-enables the APIC (SVR bit 8) if it is not; returns whether
    /// it had to. Interrupts stay off on hv-app's CPUs, so the spurious
    /// vector is never delivered.
    pub fn software_enable(&mut self) -> bool {
        let svr = self.read(reg::SVR);
        if svr & SVR_ENABLE != 0 {
            return false;
        }
        self.write(reg::SVR, (svr & !0xff) | SVR_ENABLE | SPURIOUS_VECTOR);
        true
    }

    /// Clears and reads the error status register (write, then read, SDM
    /// vol. 3A section 11.5.3).
    pub fn error_status(&mut self) -> u32 {
        self.write(reg::ESR, 0);
        self.read(reg::ESR)
    }
}

impl IpiSender for XApic {
    fn send(&mut self, icr: Icr) {
        self.write(reg::ICR_HIGH, icr.high);
        self.write(reg::ICR_LOW, icr.low);
    }

    fn pending(&mut self) -> bool {
        self.read(reg::ICR_LOW) & ICR_SEND_PENDING != 0
    }
}
