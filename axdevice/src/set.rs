//! Routing of an access to the device that claims it.

use alloc::{boxed::Box, string::String, sync::Arc, vec::Vec};

use axaddrspace::{AccessWidth, GuestPhysAddr};

use crate::device::{MmioDevice, MsrDevice, PortDevice, VCpuDevice, VCpuId, make_span};
use crate::error::{DeviceKind, Error, Result, Span};

/// Last address of each address space.
const MMIO_MAX: u64 = u64::MAX;
const PORT_MAX: u64 = u16::MAX as u64;
const MSR_MAX: u64 = u32::MAX as u64;

struct Entry<T> {
    span: Span,
    name: String,
    value: T,
}

/// Disjoint ranges of one address space, sorted by start, looked up by
/// binary search (`O(log n)`).
struct RangeTable<T> {
    kind: DeviceKind,
    entries: Vec<Entry<T>>,
}

impl<T> RangeTable<T> {
    const fn new(kind: DeviceKind) -> Self {
        Self {
            kind,
            entries: Vec::new(),
        }
    }

    /// Checks that `span` overlaps no registered range; returns the index
    /// where it is to be inserted.
    fn check_free(&self, name: &str, span: Span) -> Result<usize> {
        // Registered ranges are sorted and disjoint, so only the last range
        // starting before `span` and the first one starting at or after it
        // can overlap.
        let idx = self.entries.partition_point(|e| e.span.first < span.first);
        let neighbours = idx.checked_sub(1).into_iter().chain(Some(idx));
        for i in neighbours {
            if let Some(e) = self.entries.get(i)
                && e.span.overlaps(&span)
            {
                return Err(Error::Overlap {
                    kind: self.kind,
                    new_dev: name.into(),
                    new: span,
                    existing_dev: e.name.clone(),
                    existing: e.span,
                });
            }
        }
        Ok(idx)
    }

    fn insert(&mut self, name: &str, span: Span, value: T) -> Result {
        let idx = self.check_free(name, span)?;
        self.entries.insert(
            idx,
            Entry {
                span,
                name: name.into(),
                value,
            },
        );
        Ok(())
    }

    fn remove(&mut self, start: u64) -> Option<T> {
        let idx = self
            .entries
            .binary_search_by_key(&start, |e| e.span.first)
            .ok()?;
        Some(self.entries.remove(idx).value)
    }

    #[inline]
    fn lookup(&self, addr: u64) -> Option<&Entry<T>> {
        let idx = self.entries.partition_point(|e| e.span.first <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        (addr <= e.span.last).then_some(e)
    }

    /// The entry claiming an access of `width` bytes (at least 1) at
    /// `addr`, if the access lies entirely inside it: the hot path of
    /// [`Self::lookup_access`], without building an error.
    #[inline]
    fn find_access(&self, addr: u64, width: usize) -> Option<&Entry<T>> {
        let e = self.lookup(addr)?;
        // `addr >= first`, so `last - addr` cannot underflow.
        ((width as u64).wrapping_sub(1) <= e.span.last - addr).then_some(e)
    }

    /// The entry claiming an access of `width` bytes at `addr`; the access
    /// must lie entirely inside it ([`Self::lookup_access`] names the
    /// failure).
    #[inline]
    fn get_access(&self, addr: u64, width: usize) -> Result<&Entry<T>> {
        match self.find_access(addr, width) {
            Some(e) => Ok(e),
            None => self.lookup_access(addr, width),
        }
    }

    /// The entry claiming an access of `width` bytes at `addr`; the access
    /// must lie entirely inside it.
    #[cold]
    #[inline(never)]
    fn lookup_access(&self, addr: u64, width: usize) -> Result<&Entry<T>> {
        let e = self.lookup(addr).ok_or_else(|| {
            log::trace!("unclaimed {} access at {addr:#x}", self.kind);
            Error::Unclaimed {
                kind: self.kind,
                addr,
            }
        })?;
        // `addr >= first`, so `last - addr` cannot underflow.
        if (width as u64) - 1 > e.span.last - addr {
            return Err(Error::CrossesEnd {
                kind: self.kind,
                dev: e.name.clone(),
                addr,
                width,
                range: e.span,
            });
        }
        Ok(e)
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.value)
    }
}

/// The devices of one VM, routed by MMIO address, port number or MSR index.
///
/// Built when the VM is created (`add_*` take `&mut self`), then shared by
/// all its vCPUs (`handle_*` take `&self`). Each address space keeps its
/// ranges sorted, so a lookup is a binary search. Ranges are read from a
/// device once, when it is added: a device whose range moves (a PCI BAR)
/// must be removed and added again.
pub struct DeviceSet {
    mmio: RangeTable<Arc<dyn MmioDevice>>,
    port: RangeTable<Arc<dyn PortDevice>>,
    msr: RangeTable<Arc<dyn MsrDevice>>,
}

impl Default for DeviceSet {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceSet {
    /// An empty device set.
    pub const fn new() -> Self {
        Self {
            mmio: RangeTable::new(DeviceKind::Mmio),
            port: RangeTable::new(DeviceKind::Port),
            msr: RangeTable::new(DeviceKind::Msr),
        }
    }

    /// Adds an MMIO device. Fails if its range is empty, runs past the end
    /// of the address space, or overlaps another MMIO device's range.
    pub fn add_mmio(&mut self, dev: Arc<dyn MmioDevice>) -> Result {
        let r = dev.mmio_range();
        let span = make_span(
            DeviceKind::Mmio,
            dev.name(),
            r.base.as_usize() as u64,
            r.size as u64,
            MMIO_MAX,
        )?;
        let name = String::from(dev.name());
        self.mmio.insert(&name, span, dev)
    }

    /// Adds a port device. Fails like [`add_mmio`](Self::add_mmio).
    pub fn add_port(&mut self, dev: Arc<dyn PortDevice>) -> Result {
        let r = dev.port_range();
        let span = make_span(
            DeviceKind::Port,
            dev.name(),
            r.start.into(),
            r.len.into(),
            PORT_MAX,
        )?;
        let name = String::from(dev.name());
        self.port.insert(&name, span, dev)
    }

    /// Adds an MSR device. Fails like [`add_mmio`](Self::add_mmio).
    pub fn add_msr(&mut self, dev: Arc<dyn MsrDevice>) -> Result {
        let r = dev.msr_range();
        let span = make_span(
            DeviceKind::Msr,
            dev.name(),
            r.start.into(),
            r.len.into(),
            MSR_MAX,
        )?;
        let name = String::from(dev.name());
        self.msr.insert(&name, span, dev)
    }

    /// Removes the MMIO device whose range starts at `base`.
    pub fn remove_mmio(&mut self, base: GuestPhysAddr) -> Option<Arc<dyn MmioDevice>> {
        self.mmio.remove(base.as_usize() as u64)
    }

    /// Removes the port device whose range starts at `start`.
    pub fn remove_port(&mut self, start: u16) -> Option<Arc<dyn PortDevice>> {
        self.port.remove(start.into())
    }

    /// Removes the MSR device whose range starts at `start`.
    pub fn remove_msr(&mut self, start: u32) -> Option<Arc<dyn MsrDevice>> {
        self.msr.remove(start.into())
    }

    /// The MMIO device claiming `addr`, if any.
    pub fn find_mmio(&self, addr: GuestPhysAddr) -> Option<&Arc<dyn MmioDevice>> {
        self.mmio.lookup(addr.as_usize() as u64).map(|e| &e.value)
    }

    /// The position of the MMIO device claiming `addr`, if any: a hint for
    /// [`handle_mmio_read_at`](Self::handle_mmio_read_at) and
    /// [`handle_mmio_write_at`](Self::handle_mmio_write_at), which spares
    /// them the lookup when the caller found the device already (to decide
    /// that a fault is an MMIO access).
    #[inline]
    pub fn find_mmio_index(&self, addr: GuestPhysAddr) -> Option<usize> {
        let a = addr.as_usize() as u64;
        let idx = self.mmio.entries.partition_point(|e| e.span.first <= a);
        let i = idx.checked_sub(1)?;
        (a <= self.mmio.entries.get(i)?.span.last).then_some(i)
    }

    /// The MMIO entry at position `hint` if it claims the whole access,
    /// else the lookup of [`RangeTable::get_access`].
    #[inline]
    fn mmio_entry_at(
        &self,
        hint: usize,
        addr: GuestPhysAddr,
        width: AccessWidth,
    ) -> Result<&Entry<Arc<dyn MmioDevice>>> {
        let a = addr.as_usize() as u64;
        match self.mmio.entries.get(hint) {
            Some(e)
                if e.span.first <= a
                    && a <= e.span.last
                    && (width.size() as u64) - 1 <= e.span.last - a =>
            {
                Ok(e)
            }
            _ => self.mmio.get_access(a, width.size()),
        }
    }

    /// [`handle_mmio_read`](Self::handle_mmio_read) with the device's
    /// position from [`find_mmio_index`](Self::find_mmio_index); a wrong
    /// or stale `hint` only costs the lookup.
    #[inline]
    pub fn handle_mmio_read_at(
        &self,
        hint: usize,
        addr: GuestPhysAddr,
        width: AccessWidth,
    ) -> Result<u64> {
        let e = self.mmio_entry_at(hint, addr, width)?;
        Ok(e.value.mmio_read(addr, width)? & width.mask())
    }

    /// [`handle_mmio_write`](Self::handle_mmio_write) with the device's
    /// position from [`find_mmio_index`](Self::find_mmio_index).
    #[inline]
    pub fn handle_mmio_write_at(
        &self,
        hint: usize,
        addr: GuestPhysAddr,
        width: AccessWidth,
        val: u64,
    ) -> Result {
        let e = self.mmio_entry_at(hint, addr, width)?;
        e.value.mmio_write(addr, width, val & width.mask())
    }

    /// The port device claiming `port`, if any.
    pub fn find_port(&self, port: u16) -> Option<&Arc<dyn PortDevice>> {
        self.port.lookup(port.into()).map(|e| &e.value)
    }

    /// The MSR device claiming `msr`, if any.
    pub fn find_msr(&self, msr: u32) -> Option<&Arc<dyn MsrDevice>> {
        self.msr.lookup(msr.into()).map(|e| &e.value)
    }

    /// The MMIO devices, in address order.
    pub fn mmio_devices(&self) -> impl Iterator<Item = &Arc<dyn MmioDevice>> {
        self.mmio.values()
    }

    /// The port devices, in port order.
    pub fn port_devices(&self) -> impl Iterator<Item = &Arc<dyn PortDevice>> {
        self.port.values()
    }

    /// The MSR devices, in index order.
    pub fn msr_devices(&self) -> impl Iterator<Item = &Arc<dyn MsrDevice>> {
        self.msr.values()
    }

    /// Number of devices of all kinds.
    pub fn len(&self) -> usize {
        self.mmio.entries.len() + self.port.entries.len() + self.msr.entries.len()
    }

    /// Whether the set holds no device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Routes a guest MMIO read. [`Error::Unclaimed`] if no device claims
    /// `addr`, [`Error::CrossesEnd`] if the access runs past the device's
    /// range. The result is masked to `width`.
    #[inline]
    pub fn handle_mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        let e = self.mmio.get_access(addr.as_usize() as u64, width.size())?;
        Ok(e.value.mmio_read(addr, width)? & width.mask())
    }

    /// Routes a guest MMIO write of the low `width` bytes of `val`.
    #[inline]
    pub fn handle_mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result {
        let e = self.mmio.get_access(addr.as_usize() as u64, width.size())?;
        e.value.mmio_write(addr, width, val & width.mask())
    }

    /// The port device for an access, if there is one and the access is
    /// valid for it: the hot path of [`Self::port_entry`].
    #[inline]
    fn port_access(&self, port: u16, width: AccessWidth) -> Option<&Entry<Arc<dyn PortDevice>>> {
        match self.port.find_access(port.into(), width.size()) {
            Some(e) if width != AccessWidth::Qword => Some(e),
            _ => None,
        }
    }

    #[cold]
    #[inline(never)]
    fn port_entry(&self, port: u16, width: AccessWidth) -> Result<&Entry<Arc<dyn PortDevice>>> {
        let e = self.port.lookup_access(port.into(), width.size())?;
        if width == AccessWidth::Qword {
            return Err(Error::BadWidth {
                dev: e.name.clone(),
                offset: u64::from(port) - e.span.first,
                width,
            });
        }
        Ok(e)
    }

    /// Routes a guest `in`. Errors like
    /// [`handle_mmio_read`](Self::handle_mmio_read), plus
    /// [`Error::BadWidth`] for a [`AccessWidth::Qword`] access (x86 port I/O
    /// is at most 4 bytes wide).
    #[inline]
    pub fn handle_port_read(&self, port: u16, width: AccessWidth) -> Result<u64> {
        let e = match self.port_access(port, width) {
            Some(e) => e,
            None => self.port_entry(port, width)?,
        };
        Ok(e.value.port_read(port, width)? & width.mask())
    }

    /// Routes a guest `out` of the low `width` bytes of `val`.
    #[inline]
    pub fn handle_port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result {
        let e = match self.port_access(port, width) {
            Some(e) => e,
            None => self.port_entry(port, width)?,
        };
        e.value.port_write(port, width, val & width.mask())
    }

    /// Routes a guest `rdmsr`.
    #[inline]
    pub fn handle_msr_read(&self, msr: u32) -> Result<u64> {
        self.msr.get_access(msr.into(), 1)?.value.msr_read(msr)
    }

    /// Routes a guest `wrmsr`.
    pub fn handle_msr_write(&self, msr: u32, val: u64) -> Result {
        self.msr
            .get_access(msr.into(), 1)?
            .value
            .msr_write(msr, val)
    }
}

/// The per-vCPU devices of one vCPU (e.g. its local APIC), routed like a
/// [`DeviceSet`] but owned by that vCPU: the `handle_*` methods take
/// `&mut self`.
pub struct VCpuDeviceSet {
    devices: Vec<Box<dyn VCpuDevice>>,
    mmio: RangeTable<usize>,
    msr: RangeTable<usize>,
}

impl Default for VCpuDeviceSet {
    fn default() -> Self {
        Self::new()
    }
}

impl VCpuDeviceSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            devices: Vec::new(),
            mmio: RangeTable::new(DeviceKind::Mmio),
            msr: RangeTable::new(DeviceKind::Msr),
        }
    }

    /// Adds a per-vCPU device, registering its MMIO and MSR ranges (if any).
    /// Fails, adding nothing, if a range is invalid or overlaps another
    /// per-vCPU device's range of the same kind.
    pub fn add(&mut self, dev: Box<dyn VCpuDevice>) -> Result {
        let idx = self.devices.len();
        let mmio = dev
            .mmio_range()
            .map(|r| {
                make_span(
                    DeviceKind::Mmio,
                    dev.name(),
                    r.base.as_usize() as u64,
                    r.size as u64,
                    MMIO_MAX,
                )
            })
            .transpose()?;
        let msr = dev
            .msr_range()
            .map(|r| {
                make_span(
                    DeviceKind::Msr,
                    dev.name(),
                    r.start.into(),
                    r.len.into(),
                    MSR_MAX,
                )
            })
            .transpose()?;
        // Check both before inserting either, so a failure adds nothing.
        if let Some(span) = mmio {
            self.mmio.check_free(dev.name(), span)?;
        }
        if let Some(span) = msr {
            self.msr.check_free(dev.name(), span)?;
        }
        if let Some(span) = mmio {
            self.mmio.insert(dev.name(), span, idx)?;
        }
        if let Some(span) = msr {
            self.msr.insert(dev.name(), span, idx)?;
        }
        self.devices.push(dev);
        Ok(())
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the set holds no device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Whether a device of this set claims guest physical address `addr`.
    pub fn claims_mmio(&self, addr: GuestPhysAddr) -> bool {
        self.mmio.lookup(addr.as_usize() as u64).is_some()
    }

    /// Whether a device of this set claims MSR `msr`.
    pub fn claims_msr(&self, msr: u32) -> bool {
        self.msr.lookup(msr.into()).is_some()
    }

    /// Routes an MMIO read of vCPU `vcpu`; errors like
    /// [`DeviceSet::handle_mmio_read`].
    pub fn handle_mmio_read(
        &mut self,
        vcpu: VCpuId,
        addr: GuestPhysAddr,
        width: AccessWidth,
    ) -> Result<u64> {
        let idx = self
            .mmio
            .get_access(addr.as_usize() as u64, width.size())?
            .value;
        Ok(self.devices[idx].mmio_read(vcpu, addr, width)? & width.mask())
    }

    /// Routes an MMIO write of vCPU `vcpu`.
    pub fn handle_mmio_write(
        &mut self,
        vcpu: VCpuId,
        addr: GuestPhysAddr,
        width: AccessWidth,
        val: u64,
    ) -> Result {
        let idx = self
            .mmio
            .get_access(addr.as_usize() as u64, width.size())?
            .value;
        self.devices[idx].mmio_write(vcpu, addr, width, val & width.mask())
    }

    /// Routes an `rdmsr` of vCPU `vcpu`.
    pub fn handle_msr_read(&mut self, vcpu: VCpuId, msr: u32) -> Result<u64> {
        let idx = self.msr.get_access(msr.into(), 1)?.value;
        self.devices[idx].msr_read(vcpu, msr)
    }

    /// Routes a `wrmsr` of vCPU `vcpu`.
    pub fn handle_msr_write(&mut self, vcpu: VCpuId, msr: u32, val: u64) -> Result {
        let idx = self.msr.get_access(msr.into(), 1)?.value;
        self.devices[idx].msr_write(vcpu, msr, val)
    }
}
