//! Ports a guest writes to end itself: QEMU's `isa-debug-exit` and the
//! ACPI PM1a control register's sleep enable.

use alloc::{format, string::String};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use axaddrspace::AccessWidth;

use crate::device::{BaseDevice, PortDevice, PortRange};
use crate::error::{Error, Result};

/// Flag marking a stored exit request in [`DebugExit`]'s atomic word.
const EXIT_PENDING: u64 = 1 << 32;

/// QEMU's `isa-debug-exit` device: a write of `v` to its ports asks to end
/// the VM with status `(v << 1) | 1`, so a guest can report success or
/// failure to a test harness (status 1 cannot come from the guest on
/// purpose, which tells it apart from a crash).
///
/// Any width is accepted at any of its ports; reads return 0. The device
/// only records the request; the VM polls
/// [`take_exit_request`](Self::take_exit_request) after each port write and
/// ends itself. The first request wins until it is taken.
pub struct DebugExit {
    name: String,
    range: PortRange,
    request: AtomicU64,
}

impl DebugExit {
    /// QEMU's default port for `isa-debug-exit` (`iobase=0x501`).
    pub const QEMU_PORT: u16 = 0x501;
    /// QEMU's default number of ports (`iosize=2`).
    pub const QEMU_SIZE: u16 = 2;

    /// A debug-exit device on ports `port..port + len`.
    pub fn new(port: u16, len: u16) -> Self {
        Self {
            name: format!("debug-exit@{port:#x}"),
            range: PortRange::new(port, len),
            request: AtomicU64::new(0),
        }
    }

    /// A debug-exit device where QEMU puts it by default (0x501, 2 ports).
    pub fn qemu_default() -> Self {
        Self::new(Self::QEMU_PORT, Self::QEMU_SIZE)
    }

    /// The exit status the guest asked for, if any, clearing the request.
    /// Computed like QEMU in 32 bits: `(v << 1) | 1`, wrapping.
    pub fn take_exit_request(&self) -> Option<u32> {
        let r = self.request.swap(0, Ordering::AcqRel);
        (r & EXIT_PENDING != 0).then_some(r as u32)
    }

    /// Whether an exit request is waiting.
    pub fn exit_requested(&self) -> bool {
        self.request.load(Ordering::Acquire) & EXIT_PENDING != 0
    }
}

impl BaseDevice for DebugExit {
    fn name(&self) -> &str {
        &self.name
    }
}

impl PortDevice for DebugExit {
    fn port_range(&self) -> PortRange {
        self.range
    }

    fn port_read(&self, _port: u16, _width: AccessWidth) -> Result<u64> {
        Ok(0)
    }

    fn port_write(&self, _port: u16, width: AccessWidth, val: u64) -> Result {
        let v = (val & width.mask()) as u32;
        let status = (v << 1) | 1;
        // Keep an earlier request that has not been taken yet.
        let _ = self.request.compare_exchange(
            0,
            EXIT_PENDING | u64::from(status),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        log::debug!("{}: guest asks to exit with status {status:#x}", self.name);
        Ok(())
    }
}

/// SLP_EN, bit 13 of PM1 control: writing 1 enters the sleep state.
const PM1_SLP_EN: u16 = 1 << 13;

/// The ACPI PM1a control register (16 bits): a write with SLP_EN (bit 13)
/// set asks to enter sleep state SLP_TYP (bits 12:10).
///
/// QEMU's firmware tables use SLP_TYP 0 for S5 (soft off), so the common
/// `outw(0x604, 0x2000)` powers a QEMU guest off; the VM maps the type to a
/// state with its own tables. The device records the request; the VM polls
/// [`take_sleep_request`](Self::take_sleep_request). Reads return the last
/// written value with SLP_EN clear (it is write-only). Byte accesses reach
/// either half of the register.
pub struct PowerOff {
    name: String,
    port: u16,
    pm1_cnt: AtomicU16,
    requested: AtomicU16,
    pending: AtomicBool,
}

impl PowerOff {
    /// Port of PM1a control on QEMU's `q35` machine (`0x600` PM base + 4).
    pub const QEMU_PORT: u16 = 0x604;

    /// A PM1a control register at ports `port..port + 2`.
    pub fn new(port: u16) -> Self {
        Self {
            name: format!("acpi-pm1a-cnt@{port:#x}"),
            port,
            pm1_cnt: AtomicU16::new(0),
            requested: AtomicU16::new(0),
            pending: AtomicBool::new(false),
        }
    }

    /// The SLP_TYP value (0..=7) of a sleep request, if one is waiting,
    /// clearing it. Type 0 means power off with QEMU's tables.
    pub fn take_sleep_request(&self) -> Option<u8> {
        self.pending
            .swap(false, Ordering::AcqRel)
            .then(|| self.requested.load(Ordering::Acquire) as u8)
    }

    fn offset(&self, port: u16, width: AccessWidth) -> Result<usize> {
        let off = usize::from(port.wrapping_sub(self.port));
        if off >= 2 {
            return Err(Error::BadOffset {
                dev: self.name.clone(),
                offset: off as u64,
            });
        }
        if off + width.size() > 2 {
            return Err(Error::BadWidth {
                dev: self.name.clone(),
                offset: off as u64,
                width,
            });
        }
        Ok(off)
    }
}

impl BaseDevice for PowerOff {
    fn name(&self) -> &str {
        &self.name
    }
}

impl PortDevice for PowerOff {
    fn port_range(&self) -> PortRange {
        PortRange::new(self.port, 2)
    }

    fn port_read(&self, port: u16, width: AccessWidth) -> Result<u64> {
        let off = self.offset(port, width)?;
        let v = self.pm1_cnt.load(Ordering::Acquire) >> (8 * off);
        Ok(u64::from(v) & width.mask())
    }

    fn port_write(&self, port: u16, width: AccessWidth, val: u64) -> Result {
        let off = self.offset(port, width)?;
        let shift = 8 * off;
        let mask = (width.mask() as u16) << shift;
        let old = self.pm1_cnt.load(Ordering::Acquire);
        let new = (old & !mask) | (((val as u16) << shift) & mask);
        self.pm1_cnt.store(new & !PM1_SLP_EN, Ordering::Release);
        if new & PM1_SLP_EN != 0 {
            let typ = (new >> 10) & 7;
            self.requested.store(typ, Ordering::Release);
            self.pending.store(true, Ordering::Release);
            log::debug!("{}: guest asks for sleep type {typ}", self.name);
        }
        Ok(())
    }
}
