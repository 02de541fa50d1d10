//! Per-VM exit counters.

use core::fmt;

use axvcpu::{ExitCounters, ExitReasonKind};

/// What happened in a VM: every vCPU exit by reason, plus counts of the
/// work the VM settled itself.
///
/// Displayed as one `name: count` line per non-zero counter: first `exits`
/// (the total), then each exit reason by its [`ExitReasonKind`] name
/// (`IoWrite: 12`), then the settled categories by field name
/// (`mmio_writes: 3`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Every exit of every vCPU of the VM, by reason.
    pub exits: ExitCounters,
    /// Emulated MMIO loads (decoded from a nested page fault, or reported
    /// by the vCPU as `MmioRead`).
    pub mmio_reads: u64,
    /// Emulated MMIO stores.
    pub mmio_writes: u64,
    /// Port reads no device claims (answered with all ones).
    pub unclaimed_port_reads: u64,
    /// Port writes no device claims (ignored).
    pub unclaimed_port_writes: u64,
    /// `RDMSR`s no device claims (answered with 0).
    pub unclaimed_msr_reads: u64,
    /// `WRMSR`s no device claims (ignored).
    pub unclaimed_msr_writes: u64,
    /// Nested page faults settled by allocating a page of lazily allocated
    /// RAM.
    pub lazy_page_faults: u64,
    /// Nested page faults on a page that was already mapped with the
    /// access's rights when the VM looked (a fault raced with the mapping):
    /// the guest simply retries.
    pub spurious_page_faults: u64,
    /// Accesses a device refused (bad width or offset, running past its
    /// end): reads got all ones, writes were dropped.
    pub device_errors: u64,
}

impl ExitStats {
    /// All counters at zero.
    pub const fn new() -> Self {
        Self {
            exits: ExitCounters::new(),
            mmio_reads: 0,
            mmio_writes: 0,
            unclaimed_port_reads: 0,
            unclaimed_port_writes: 0,
            unclaimed_msr_reads: 0,
            unclaimed_msr_writes: 0,
            lazy_page_faults: 0,
            spurious_page_faults: 0,
            device_errors: 0,
        }
    }

    /// The count of exits of `kind`.
    pub const fn exits_of(&self, kind: ExitReasonKind) -> u64 {
        self.exits.get(kind)
    }

    /// The settled-in-VM categories as `(name, count)`, every one, in a
    /// fixed order.
    pub fn settled(&self) -> [(&'static str, u64); 9] {
        [
            ("mmio_reads", self.mmio_reads),
            ("mmio_writes", self.mmio_writes),
            ("unclaimed_port_reads", self.unclaimed_port_reads),
            ("unclaimed_port_writes", self.unclaimed_port_writes),
            ("unclaimed_msr_reads", self.unclaimed_msr_reads),
            ("unclaimed_msr_writes", self.unclaimed_msr_writes),
            ("lazy_page_faults", self.lazy_page_faults),
            ("spurious_page_faults", self.spurious_page_faults),
            ("device_errors", self.device_errors),
        ]
    }

    /// Sets every counter back to zero.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exits: {}", self.exits.total())?;
        for (name, count) in self.exits.iter() {
            writeln!(f, "{name}: {count}")?;
        }
        for (name, count) in self.settled() {
            if count != 0 {
                writeln!(f, "{name}: {count}")?;
            }
        }
        Ok(())
    }
}
