//! The High Precision Event Timer (IA-PC HPET specification 1.0a): the
//! capability and configuration registers, a 64-bit main counter running in
//! real time, and three comparators whose configuration is stored.

use alloc::{format, string::String, sync::Arc};

use axaddrspace::{AccessWidth, GuestPhysAddr};
use spin::Mutex;

use crate::device::{BaseDevice, MmioDevice, MmioRange};
use crate::error::{Error, Result};

/// A monotonic clock in nanoseconds, supplied by the VM (the host's TSC on
/// hardware, a fake clock in tests).
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin; never goes backwards.
    fn now_ns(&self) -> u64;
    /// The guest's time stamp counter at the same instant (the local
    /// APIC's TSC-deadline mode compares against it). Defaults to
    /// [`now_ns`](Self::now_ns), a 1 GHz TSC.
    fn tsc(&self) -> u64 {
        self.now_ns()
    }
    /// Asks the host to interrupt the guest at `at_ns` (on the
    /// [`now_ns`](Self::now_ns) scale), or, with `None`, no longer: a VM
    /// calls it before entering a vCPU whenever the next deadline of its
    /// timer devices changes, so that a guest spinning without VM exits (an
    /// idle loop) still gets its timer interrupt on time. The wake-up
    /// should repeat until it is changed (a periodic host timer): the VM
    /// does not ask again if one came too early or was lost. The default
    /// does nothing: timers then fire at the next exit.
    fn set_wakeup(&self, at_ns: Option<u64>) {
        let _ = at_ns;
    }
}

/// Register offsets (HPET spec 1.0a, table 2).
mod reg {
    pub const GCAP_ID: usize = 0x000;
    pub const GEN_CONF: usize = 0x010;
    pub const GINTR_STA: usize = 0x020;
    pub const MAIN_CNT: usize = 0x0f0;
    pub const TIMER0: usize = 0x100;
    pub const TIMER_STRIDE: usize = 0x20;
    pub const T_CONF: usize = 0x00;
    pub const T_COMPARATOR: usize = 0x08;
    pub const T_FSB_ROUTE: usize = 0x10;
}

/// GEN_CONF bit 0: the main counter runs and timers may interrupt.
pub const HPET_ENABLE_CNF: u64 = 1 << 0;
/// GEN_CONF bit 1: legacy replacement routing (timer 0 on IRQ 0, timer 1 on IRQ 8).
pub const HPET_LEG_RT_CNF: u64 = 1 << 1;
/// GCAP_ID bit 13: the main counter is 64 bits wide.
pub const HPET_COUNT_SIZE_CAP: u64 = 1 << 13;
/// GCAP_ID bit 15: legacy replacement routing is supported.
pub const HPET_LEG_RT_CAP: u64 = 1 << 15;
/// Tn_CONF bit 4 (read-only): the timer supports periodic mode.
pub const HPET_TN_PER_INT_CAP: u64 = 1 << 4;
/// Tn_CONF bit 5 (read-only): the comparator is 64 bits wide.
pub const HPET_TN_SIZE_CAP: u64 = 1 << 5;

/// Writable bits of Tn_CONF: INT_TYPE (1), INT_ENB (2), TYPE (3),
/// VAL_SET (6), 32MODE (8), INT_ROUTE (13:9), FSB_EN (14).
const TN_CONF_WRITABLE: u64 = 0b0111_1111_0100_1110;
/// Tn_CONF bits 63:32: the I/O APIC inputs the timer may be routed to
/// (IRQ 2 and IRQ 8).
const TN_INT_ROUTE_CAP: u64 = (1 << 2) | (1 << 8);

#[derive(Debug, Clone, Copy, Default)]
struct Timer {
    conf: u64,
    comparator: u64,
    fsb_route: u64,
}

#[derive(Debug)]
struct State {
    gen_conf: u64,
    gintr_sta: u64,
    /// Main counter value at `since_ns` (while enabled), or its frozen
    /// value (while halted).
    counter: u64,
    since_ns: u64,
    timers: [Timer; Hpet::NUM_TIMERS],
}

/// An HPET block at a 1 KiB MMIO window.
///
/// - GCAP_ID: revision 1, [`NUM_TIMERS`](Self::NUM_TIMERS) timers, 64-bit
///   counter, legacy replacement capable, vendor 0x8086, period
///   [`PERIOD_FS`](Self::PERIOD_FS) femtoseconds (100 MHz).
/// - GEN_CONF: ENABLE starts/stops the main counter; LEG_RT is stored.
/// - GINTR_STA: write 1 to clear (nothing sets it, see below).
/// - Main counter: advances in real time from the [`Clock`] while enabled;
///   writable (it is meant to be written while halted).
/// - Tn_CONF / Tn_COMPARATOR / Tn_FSB_ROUTE: stored with the read-only
///   capability bits (timer 0 is periodic capable; all are 64-bit).
///
/// **Not done:** comparator matches raise no interrupt (guests that use the
/// HPET only as a clock source, like NimbOS and ArceOS, do not need one).
///
/// Registers are 64 bits: they can be read and written with 8-byte accesses
/// at 8-byte aligned offsets, or as two 4-byte halves. Other widths or
/// alignments are [`Error::BadWidth`]; an offset past the last timer reads 0
/// and ignores writes (reserved space).
pub struct Hpet {
    name: String,
    base: GuestPhysAddr,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Hpet {
    /// Where PCs put the HPET.
    pub const DEFAULT_BASE: usize = 0xfed0_0000;
    /// Size of the register window.
    pub const SIZE: usize = 0x400;
    /// Number of comparators.
    pub const NUM_TIMERS: usize = 3;
    /// Main counter tick period in femtoseconds: 10 ns, a 100 MHz counter.
    pub const PERIOD_FS: u64 = 10_000_000;
    /// The PCI vendor ID reported in GCAP_ID (Intel, as on QEMU).
    pub const VENDOR_ID: u64 = 0x8086;

    /// An HPET at `base` whose counter follows `clock`.
    pub fn new(base: GuestPhysAddr, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now_ns();
        let mut timers = [Timer::default(); Self::NUM_TIMERS];
        for (i, t) in timers.iter_mut().enumerate() {
            t.conf = Self::timer_caps(i);
            t.comparator = u64::MAX;
        }
        Self {
            name: format!("hpet@{:#x}", base.as_usize()),
            base,
            clock,
            state: Mutex::new(State {
                gen_conf: 0,
                gintr_sta: 0,
                counter: 0,
                since_ns: now,
                timers,
            }),
        }
    }

    /// The GCAP_ID register value.
    pub const fn capabilities() -> u64 {
        (Self::PERIOD_FS << 32)
            | (Self::VENDOR_ID << 16)
            | HPET_LEG_RT_CAP
            | HPET_COUNT_SIZE_CAP
            | (((Self::NUM_TIMERS as u64) - 1) << 8)
            | 1
    }

    fn timer_caps(i: usize) -> u64 {
        let per = if i == 0 { HPET_TN_PER_INT_CAP } else { 0 };
        (TN_INT_ROUTE_CAP << 32) | HPET_TN_SIZE_CAP | per
    }

    /// Current main counter value.
    pub fn counter(&self) -> u64 {
        let s = self.state.lock();
        self.counter_locked(&s)
    }

    fn counter_locked(&self, s: &State) -> u64 {
        if s.gen_conf & HPET_ENABLE_CNF == 0 {
            return s.counter;
        }
        let delta = self.clock.now_ns().saturating_sub(s.since_ns);
        let ticks = (u128::from(delta) * 1_000_000 / u128::from(Self::PERIOD_FS)) as u64;
        s.counter.wrapping_add(ticks)
    }

    /// Splits an access into (8-byte aligned register offset, shift of the
    /// accessed half, mask of the accessed bits).
    fn locate(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<(usize, u32, u64)> {
        let off = addr.as_usize().wrapping_sub(self.base.as_usize());
        if off >= Self::SIZE {
            return Err(Error::BadOffset {
                dev: self.name.clone(),
                offset: off as u64,
            });
        }
        match width {
            AccessWidth::Qword if off % 8 == 0 => Ok((off, 0, u64::MAX)),
            AccessWidth::Dword if off % 4 == 0 => {
                Ok((off & !7, (off as u32 & 4) * 8, u64::from(u32::MAX)))
            }
            _ => Err(Error::BadWidth {
                dev: self.name.clone(),
                offset: off as u64,
                width,
            }),
        }
    }

    fn read_reg(&self, s: &State, off: usize) -> u64 {
        match off {
            reg::GCAP_ID => Self::capabilities(),
            reg::GEN_CONF => s.gen_conf,
            reg::GINTR_STA => s.gintr_sta,
            reg::MAIN_CNT => self.counter_locked(s),
            _ => match Self::timer_reg(off) {
                Some((n, reg::T_CONF)) => s.timers[n].conf,
                Some((n, reg::T_COMPARATOR)) => s.timers[n].comparator,
                Some((n, reg::T_FSB_ROUTE)) => s.timers[n].fsb_route,
                _ => 0,
            },
        }
    }

    fn timer_reg(off: usize) -> Option<(usize, usize)> {
        let rel = off.checked_sub(reg::TIMER0)?;
        let n = rel / reg::TIMER_STRIDE;
        (n < Self::NUM_TIMERS).then_some((n, rel % reg::TIMER_STRIDE))
    }

    fn write_reg(&self, s: &mut State, off: usize, old: u64, new: u64) {
        match off {
            reg::GEN_CONF => {
                let now_enabled = new & HPET_ENABLE_CNF != 0;
                let was_enabled = s.gen_conf & HPET_ENABLE_CNF != 0;
                if now_enabled != was_enabled {
                    // Freeze or restart the counter at its current value.
                    s.counter = self.counter_locked(s);
                    s.since_ns = self.clock.now_ns();
                }
                s.gen_conf = new & (HPET_ENABLE_CNF | HPET_LEG_RT_CNF);
            }
            reg::GINTR_STA => s.gintr_sta &= !(new & old),
            reg::MAIN_CNT => {
                s.counter = new;
                s.since_ns = self.clock.now_ns();
            }
            _ => match Self::timer_reg(off) {
                Some((n, reg::T_CONF)) => {
                    let t = &mut s.timers[n];
                    t.conf = Self::timer_caps(n) | (new & TN_CONF_WRITABLE);
                    if n != 0 {
                        // Only timer 0 can be periodic: TYPE_CNF is read-only 0.
                        t.conf &= !(1 << 3);
                    }
                }
                Some((n, reg::T_COMPARATOR)) => {
                    let t = &mut s.timers[n];
                    t.comparator = new;
                    t.conf &= !(1 << 6); // VAL_SET_CNF clears itself.
                }
                Some((n, reg::T_FSB_ROUTE)) => s.timers[n].fsb_route = new,
                // GCAP_ID and reserved space are read-only.
                _ => {}
            },
        }
    }
}

impl BaseDevice for Hpet {
    fn name(&self) -> &str {
        &self.name
    }
}

impl MmioDevice for Hpet {
    fn mmio_range(&self) -> MmioRange {
        MmioRange::new(self.base, Self::SIZE)
    }

    fn mmio_read(&self, addr: GuestPhysAddr, width: AccessWidth) -> Result<u64> {
        let (off, shift, mask) = self.locate(addr, width)?;
        let s = self.state.lock();
        Ok((self.read_reg(&s, off) >> shift) & mask)
    }

    fn mmio_write(&self, addr: GuestPhysAddr, width: AccessWidth, val: u64) -> Result {
        let (off, shift, mask) = self.locate(addr, width)?;
        let mut s = self.state.lock();
        let old = self.read_reg(&s, off);
        let new = (old & !(mask << shift)) | ((val & mask) << shift);
        // GINTR_STA is write-1-to-clear: only the written bits count.
        let new = if off == reg::GINTR_STA {
            (val & mask) << shift
        } else {
            new
        };
        self.write_reg(&mut s, off, old, new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const BASE: usize = Hpet::DEFAULT_BASE;

    fn hpet() -> (Arc<FakeClock>, Hpet) {
        let clock = Arc::new(FakeClock(AtomicU64::new(5_000)));
        let h = Hpet::new(GuestPhysAddr::from(BASE), clock.clone());
        (clock, h)
    }

    fn rd(h: &Hpet, off: usize, w: AccessWidth) -> u64 {
        h.mmio_read(GuestPhysAddr::from(BASE + off), w).unwrap()
    }

    fn wr(h: &Hpet, off: usize, w: AccessWidth, v: u64) {
        h.mmio_write(GuestPhysAddr::from(BASE + off), w, v).unwrap()
    }

    #[test]
    fn capabilities_match_the_spec_layout() {
        let (_, h) = hpet();
        let cap = rd(&h, 0, AccessWidth::Qword);
        assert_eq!(cap & 0xff, 1, "REV_ID must be non-zero");
        assert_eq!(
            (cap >> 8) & 0x1f,
            2,
            "NUM_TIM_CAP is the last timer's index"
        );
        assert_ne!(cap & (1 << 13), 0, "COUNT_SIZE_CAP: 64-bit counter");
        assert_ne!(cap & (1 << 15), 0, "LEG_RT_CAP");
        assert_eq!((cap >> 16) & 0xffff, 0x8086);
        // Period in fs, at most 0x05F5E100 (100 ns) per the spec.
        assert_eq!(cap >> 32, 10_000_000);
        assert!(cap >> 32 <= 0x05f5_e100);
        // The two 4-byte halves give the same value.
        assert_eq!(rd(&h, 0, AccessWidth::Dword), cap & 0xffff_ffff);
        assert_eq!(rd(&h, 4, AccessWidth::Dword), cap >> 32);
        // Read-only.
        wr(&h, 0, AccessWidth::Qword, 0);
        assert_eq!(rd(&h, 0, AccessWidth::Qword), cap);
    }

    #[test]
    fn counter_runs_only_while_enabled_at_100_mhz() {
        let (clock, h) = hpet();
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), 0);
        clock.0.fetch_add(1_000, Ordering::SeqCst);
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), 0, "halted counter");
        wr(
            &h,
            0x10,
            AccessWidth::Qword,
            HPET_ENABLE_CNF | HPET_LEG_RT_CNF,
        );
        assert_eq!(rd(&h, 0x10, AccessWidth::Qword), 3);
        clock.0.fetch_add(1_000_000, Ordering::SeqCst); // 1 ms = 100_000 ticks
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), 100_000);
        assert_eq!(rd(&h, 0xf0, AccessWidth::Dword), 100_000);
        assert_eq!(rd(&h, 0xf4, AccessWidth::Dword), 0);
        // Halting freezes the value.
        wr(&h, 0x10, AccessWidth::Qword, 0);
        clock.0.fetch_add(1_000_000, Ordering::SeqCst);
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), 100_000);
        // Writing the counter while halted, then restarting.
        wr(&h, 0xf4, AccessWidth::Dword, 1);
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), (1 << 32) | 100_000);
        wr(&h, 0x10, AccessWidth::Dword, 1);
        clock.0.fetch_add(30, Ordering::SeqCst);
        assert_eq!(rd(&h, 0xf0, AccessWidth::Qword), (1 << 32) | 100_003);
    }

    #[test]
    fn timers_keep_configuration_and_capabilities() {
        let (_, h) = hpet();
        let t0 = rd(&h, 0x100, AccessWidth::Qword);
        assert_ne!(t0 & HPET_TN_PER_INT_CAP, 0);
        assert_ne!(t0 & HPET_TN_SIZE_CAP, 0);
        assert_eq!(t0 >> 32, (1 << 2) | (1 << 8));
        let t1 = rd(&h, 0x120, AccessWidth::Qword);
        assert_eq!(t1 & HPET_TN_PER_INT_CAP, 0);
        // INT_ENB | TYPE(periodic) | VAL_SET on timer 0; caps stay set.
        wr(&h, 0x100, AccessWidth::Qword, 0b100_1100);
        let t0 = rd(&h, 0x100, AccessWidth::Qword);
        assert_eq!(t0 & 0b100_1100, 0b100_1100);
        assert_ne!(t0 & HPET_TN_PER_INT_CAP, 0);
        wr(&h, 0x108, AccessWidth::Qword, 0x1234_5678_9abc);
        assert_eq!(rd(&h, 0x108, AccessWidth::Qword), 0x1234_5678_9abc);
        assert_eq!(
            rd(&h, 0x100, AccessWidth::Qword) & (1 << 6),
            0,
            "VAL_SET clears"
        );
        // Timer 1 cannot be periodic.
        wr(&h, 0x120, AccessWidth::Qword, 1 << 3);
        assert_eq!(rd(&h, 0x120, AccessWidth::Qword) & (1 << 3), 0);
        // Timer 2's comparator, reserved space past it.
        wr(&h, 0x148, AccessWidth::Dword, 7);
        assert_eq!(rd(&h, 0x148, AccessWidth::Qword), 0xffff_ffff_0000_0007);
        assert_eq!(rd(&h, 0x160, AccessWidth::Qword), 0);
    }

    #[test]
    fn bad_widths_and_offsets_are_errors() {
        let (_, h) = hpet();
        let at = |off| GuestPhysAddr::from(BASE + off);
        assert!(matches!(
            h.mmio_read(at(0xf0), AccessWidth::Byte),
            Err(Error::BadWidth { offset: 0xf0, .. })
        ));
        assert!(matches!(
            h.mmio_read(at(0xf4), AccessWidth::Qword),
            Err(Error::BadWidth { .. })
        ));
        assert!(matches!(
            h.mmio_write(at(0x12), AccessWidth::Dword, 0),
            Err(Error::BadWidth { .. })
        ));
        assert!(matches!(
            h.mmio_read(at(0x400), AccessWidth::Qword),
            Err(Error::BadOffset { offset: 0x400, .. })
        ));
        assert_eq!(h.mmio_range().size, 0x400);
    }
}
