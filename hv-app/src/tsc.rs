//! A microsecond clock from the TSC, calibrated once against the PIT
//! (`hv_app::timing`), for the delays of SMP bring-up.

use core::hint::spin_loop;

use hv_app::Result;
use hv_app::apic::Clock;
use hv_app::timing::{Tsc, calibrate_tsc};

use crate::pio::Pio;

/// How long the calibration measures: 10 ms of PIT channel 2.
const CALIBRATION_US: u64 = 10_000;
/// Most polls of the PIT's output before calibration gives up (a port read
/// takes about 1 us on hardware, so this is seconds, never a hang).
const MAX_POLLS: u64 = 10_000_000;

/// The time stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and only reads the
    // counter (CR4.TSD is clear: hv-app runs at CPL 0 anyway). The
    // intrinsic is safe in newer Rust; the block keeps older ones building.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// A [`Clock`] over the TSC.
#[derive(Debug, Clone, Copy)]
pub struct TscClock {
    tsc: Tsc,
}

impl TscClock {
    /// Measures the TSC frequency with PIT channel 2 (10 ms).
    pub fn calibrate() -> Result<Self> {
        // SAFETY: the PIT's channel 2 and port B belong to hv-app (no one
        // else uses the speaker timer); calibrate_tsc restores port B.
        let mut io = unsafe { Pio::new() };
        let hz = calibrate_tsc(&mut io, rdtsc, CALIBRATION_US, MAX_POLLS)?;
        Ok(Self { tsc: Tsc { hz } })
    }

    /// A clock assuming [`Tsc::FALLBACK`]'s frequency (delays at least as
    /// long as asked on any slower TSC).
    pub const fn fallback() -> Self {
        Self { tsc: Tsc::FALLBACK }
    }

    /// The TSC frequency in Hz.
    pub const fn hz(&self) -> u64 {
        self.tsc.hz
    }
}

impl Clock for TscClock {
    fn now_us(&mut self) -> u64 {
        self.tsc.micros(rdtsc())
    }

    fn delay_us(&mut self, us: u64) {
        let start = rdtsc();
        let ticks = self.tsc.ticks(us);
        while rdtsc().wrapping_sub(start) < ticks {
            spin_loop();
        }
    }
}

/// The time source of VMs' timer devices (HPET counter, local APIC timer):
/// nanoseconds from the TSC, whose frequency is measured once.
#[derive(Debug, Clone, Copy)]
pub struct VmClock {
    hz: u64,
}

impl axdevice::Clock for VmClock {
    fn now_ns(&self) -> u64 {
        (u128::from(rdtsc()) * 1_000_000_000 / u128::from(self.hz.max(1))) as u64
    }

    fn tsc(&self) -> u64 {
        rdtsc()
    }

    /// The host's local APIC timer ([`crate::host_timer`], Type-1 only), at
    /// the first TSC value whose [`now_ns`](axdevice::Clock::now_ns) is at
    /// least `at_ns` (rounded up, so the VM's timer is due when it fires).
    fn set_wakeup(&self, at_ns: Option<u64>) {
        let hz = u128::from(self.hz.max(1));
        crate::host_timer::arm(at_ns.map(|ns| {
            u64::try_from((u128::from(ns) * hz).div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
        }));
    }
}

static HZ: spin::Once<u64> = spin::Once::new();

/// Sets the TSC frequency from a source that knows it (Type-1.5: Linux's
/// `tsc_khz`, handed over by the module) instead of measuring it; only
/// before the first [`tsc_hz`].
pub fn set_tsc_hz(hz: u64) {
    HZ.call_once(|| hz);
}

/// The TSC frequency in Hz, calibrated on first use (10 ms).
pub fn tsc_hz() -> u64 {
    *HZ.call_once(|| {
        TscClock::calibrate()
            .unwrap_or_else(|e| {
                log::warn!("VM clock: {e}; assuming a 4 GHz TSC");
                TscClock::fallback()
            })
            .hz()
    })
}

/// The VMs' clock (see [`tsc_hz`]).
pub fn vm_clock() -> alloc::sync::Arc<dyn axdevice::Clock> {
    alloc::sync::Arc::new(VmClock { hz: tsc_hz() })
}
