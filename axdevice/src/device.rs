//! The device traits: a device on an MMIO range, a port range or an MSR
//! range, a per-vCPU device, and the interrupt line a device drives.

use axaddrspace::{AccessWidth, GuestPhysAddr};

use crate::error::{DeviceKind, Error, Result, Span};

/// A range of guest physical addresses claimed by an MMIO device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRange {
    /// First guest physical address of the range.
    pub base: GuestPhysAddr,
    /// Length of the range in bytes.
    pub size: usize,
}

impl MmioRange {
    /// A range of `size` bytes starting at `base`.
    pub const fn new(base: GuestPhysAddr, size: usize) -> Self {
        Self { base, size }
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: GuestPhysAddr) -> bool {
        let a = addr.as_usize();
        let b = self.base.as_usize();
        a >= b && a - b < self.size
    }
}

/// A range of I/O ports claimed by a port device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Number of ports in the range.
    pub len: u16,
}

impl PortRange {
    /// A range of `len` ports starting at `start`.
    pub const fn new(start: u16, len: u16) -> Self {
        Self { start, len }
    }

    /// Whether `port` lies in the range.
    pub const fn contains(&self, port: u16) -> bool {
        port >= self.start && port - self.start < self.len
    }
}

/// A range of MSR indices claimed by an MSR device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsrRange {
    /// First MSR index of the range.
    pub start: u32,
    /// Number of MSRs in the range.
    pub len: u32,
}

impl MsrRange {
    /// A range of `len` MSRs starting at `start`.
    pub const fn new(start: u32, len: u32) -> Self {
        Self { start, len }
    }

    /// Whether `msr` lies in the range.
    pub const fn contains(&self, msr: u32) -> bool {
        msr >= self.start && msr - self.start < self.len
    }
}

/// Validates a `(start, len)` range of an address space whose last address
/// is `max` and turns it into an inclusive [`Span`].
pub(crate) fn make_span(
    kind: DeviceKind,
    dev: &str,
    start: u64,
    len: u64,
    max: u64,
) -> Result<Span> {
    if len == 0 {
        return Err(Error::EmptyRange {
            kind,
            dev: dev.into(),
        });
    }
    match start.checked_add(len - 1) {
        Some(last) if last <= max => Ok(Span { first: start, last }),
        _ => Err(Error::RangeOverflow {
            kind,
            dev: dev.into(),
            start,
            len,
        }),
    }
}

/// What every device has: a name, used in logs and errors.
pub trait BaseDevice {
    /// A short human-readable name, e.g. `"uart16550@0x3f8"`.
    fn name(&self) -> &str;
}

/// A device on a range of guest physical addresses.
///
/// One instance may be reached by several vCPUs running on several
/// physical CPUs at once, so the methods take `&self` and the device keeps
/// its state behind interior mutability (e.g. a `spin::Mutex`).
///
/// The accessed address is absolute; the device subtracts its base. The
/// [`DeviceSet`](crate::DeviceSet) only calls a device for accesses that lie
/// entirely inside its range, and masks values to the access width.
pub trait MmioDevice: BaseDevice + Send + Sync {
    /// The guest physical range this device claims. Read once, when the
    /// device is added to a device set.
    fn mmio_range(&self) -> MmioRange;
    /// Reads `width` bytes at `addr`.
    fn mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64>;
    /// Writes the low `width` bytes of `val` at `addr`.
    fn mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result;
}

/// A device on a range of I/O ports. Shared like [`MmioDevice`].
///
/// Port accesses are 1, 2 or 4 bytes wide; the device set rejects
/// [`AccessWidth::Qword`] before calling the device.
pub trait PortDevice: BaseDevice + Send + Sync {
    /// The ports this device claims. Read once, when the device is added.
    fn port_range(&self) -> PortRange;
    /// Reads `width` bytes at `port`.
    fn port_read(&self, port: u16, width: AccessWidth) -> Result<u64>;
    /// Writes the low `width` bytes of `val` at `port`.
    fn port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result;
}

/// A device on a range of model-specific registers. Shared like
/// [`MmioDevice`]. MSR accesses are always 64 bits wide.
pub trait MsrDevice: BaseDevice + Send + Sync {
    /// The MSRs this device claims. Read once, when the device is added.
    fn msr_range(&self) -> MsrRange;
    /// Reads MSR `msr`.
    fn msr_read(&self, msr: u32) -> Result<u64>;
    /// Writes `val` to MSR `msr`.
    fn msr_write(&self, msr: u32, val: u64) -> Result;
}

/// Index of a vCPU inside its VM.
pub type VCpuId = usize;

/// A device that exists once per vCPU, such as the local APIC.
///
/// Each instance is **owned by one vCPU** and only touched by the thread
/// running that vCPU, so the methods take `&mut self` and need no lock; the
/// device must be `Send` because a vCPU may move between physical CPUs.
/// Anything that concerns other vCPUs (an IPI, an INIT) is returned to the
/// VM as a request rather than done by the device.
///
/// A per-vCPU device may claim an MMIO range (the xAPIC page), an MSR range
/// (the x2APIC MSRs) or both. The default methods claim nothing and answer
/// [`Error::Unsupported`].
pub trait VCpuDevice: BaseDevice + Send {
    /// The guest physical range this device claims, if any.
    fn mmio_range(&self) -> Option<MmioRange> {
        None
    }
    /// The MSRs this device claims, if any.
    fn msr_range(&self) -> Option<MsrRange> {
        None
    }
    /// Reads `width` bytes at `addr` on behalf of vCPU `vcpu`.
    fn mmio_read(&mut self, vcpu: VCpuId, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        let _ = (vcpu, addr, width);
        Err(Error::Unsupported {
            dev: self.name().into(),
            what: "MMIO reads",
        })
    }
    /// Writes the low `width` bytes of `val` at `addr` on behalf of vCPU `vcpu`.
    fn mmio_write(
        &mut self,
        vcpu: VCpuId,
        addr: GuestPhysAddr,
        width: AccessWidth,
        val: u64,
    ) -> Result {
        let _ = (vcpu, addr, width, val);
        Err(Error::Unsupported {
            dev: self.name().into(),
            what: "MMIO writes",
        })
    }
    /// Reads MSR `msr` on behalf of vCPU `vcpu`.
    fn msr_read(&mut self, vcpu: VCpuId, msr: u32) -> Result<u64> {
        let _ = (vcpu, msr);
        Err(Error::Unsupported {
            dev: self.name().into(),
            what: "MSR reads",
        })
    }
    /// Writes `val` to MSR `msr` on behalf of vCPU `vcpu`.
    fn msr_write(&mut self, vcpu: VCpuId, msr: u32, val: u64) -> Result {
        let _ = (vcpu, msr, val);
        Err(Error::Unsupported {
            dev: self.name().into(),
            what: "MSR writes",
        })
    }
}

/// Where a device drives its interrupt line: the VM implements it (routing
/// the line through its PIC/IOAPIC model to a vCPU's local APIC).
///
/// Lines are level-style: a device calls [`set_irq_level`] with `true` when
/// its interrupt condition starts and `false` when it ends, and only on a
/// change. An edge-triggered controller sees the rising edge.
///
/// A device may call this while holding its own lock, so the implementation
/// must not call back into the device.
///
/// [`set_irq_level`]: IrqSink::set_irq_level
pub trait IrqSink: Send + Sync {
    /// Sets interrupt line `irq` (e.g. ISA IRQ 4 for COM1) high or low.
    fn set_irq_level(&self, irq: u32, high: bool);
}
