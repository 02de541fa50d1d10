//! The local APIC timer as pure arithmetic on caller-supplied time
//! (SDM 11.5.4).

const NS_PER_SEC: u128 = 1_000_000_000;

/// A point in time, supplied by the caller on every access that may depend
/// on it.
///
/// `ns` is any monotonic nanosecond clock (it drives the one-shot and
/// periodic modes through the configured APIC bus frequency). `tsc` is the
/// guest's time-stamp counter at the same instant (host TSC plus the vCPU's
/// TSC offset); only the TSC-deadline mode reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ApicTime {
    /// Monotonic time in nanoseconds.
    pub ns: u64,
    /// Guest TSC value.
    pub tsc: u64,
}

impl ApicTime {
    /// A time with both clocks given.
    pub const fn new(ns: u64, tsc: u64) -> Self {
        Self { ns, tsc }
    }

    /// A time for callers that never use the TSC-deadline mode (TSC = 0).
    pub const fn from_ns(ns: u64) -> Self {
        Self { ns, tsc: 0 }
    }
}

/// When the timer next needs attention ([`poll_timer`] should be called).
///
/// [`poll_timer`]: crate::VLocalApic::poll_timer
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerDeadline {
    /// At this value of [`ApicTime::ns`].
    Ns(u64),
    /// When the guest TSC ([`ApicTime::tsc`]) reaches this value.
    Tsc(u64),
}

/// Timer mode, LVT timer bits 18:17 (SDM Table 11-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerMode {
    /// 00b: count down once from the initial count.
    OneShot,
    /// 01b: count down and reload from the initial count.
    Periodic,
    /// 10b: fire when the TSC reaches `IA32_TSC_DEADLINE`.
    TscDeadline,
}

impl TimerMode {
    /// Decodes bits 18:17 of an LVT timer value; 11b is reserved (`None`).
    pub const fn from_lvt(lvt: u32) -> Option<Self> {
        match (lvt >> 17) & 0b11 {
            0 => Some(Self::OneShot),
            1 => Some(Self::Periodic),
            2 => Some(Self::TscDeadline),
            _ => None,
        }
    }

    /// The value of bits 18:17 for this mode, in place.
    pub const fn lvt_bits(self) -> u32 {
        (self as u32) << 17
    }
}

/// Divisor selected by a divide configuration register value (bits 3, 1
/// and 0; SDM Figure 11-10): 000b=2, 001b=4, 010b=8, 011b=16, 100b=32,
/// 101b=64, 110b=128, 111b=1.
pub const fn divisor(divide_config: u32) -> u32 {
    let code = ((divide_config >> 1) & 0b100) | (divide_config & 0b11);
    if code == 0b111 { 1 } else { 2 << code }
}

/// Writable bits of the divide configuration register.
pub const DIVIDE_CONFIG_MASK: u32 = 0b1011;

/// An armed one-shot or periodic countdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Countdown {
    /// Time at which the counter held `anchor_count`.
    anchor_ns: u64,
    /// Counter value at `anchor_ns` (non-zero).
    anchor_count: u32,
    /// Divisor in force since `anchor_ns`.
    divisor: u32,
    /// Expirations already reported since `anchor_ns`.
    fired: u64,
}

/// The timer registers and countdown state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timer {
    bus_freq_hz: u64,
    initial_count: u32,
    divide_config: u32,
    tsc_deadline: u64,
    countdown: Option<Countdown>,
}

/// What [`Timer::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    None,
    Expired,
}

impl Timer {
    pub(crate) const fn new(bus_freq_hz: u64) -> Self {
        Self {
            bus_freq_hz,
            initial_count: 0,
            divide_config: 0,
            tsc_deadline: 0,
            countdown: None,
        }
    }

    /// Back to the reset state: counts, divide configuration and deadline 0.
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.bus_freq_hz);
    }

    pub(crate) fn initial_count(&self) -> u32 {
        self.initial_count
    }

    pub(crate) fn divide_config(&self) -> u32 {
        self.divide_config
    }

    pub(crate) fn tsc_deadline(&self) -> u64 {
        self.tsc_deadline
    }

    /// Counter decrements since the anchor at `now_ns`.
    fn counts_since(&self, cd: &Countdown, now_ns: u64) -> u128 {
        let elapsed = now_ns.saturating_sub(cd.anchor_ns) as u128;
        elapsed * self.bus_freq_hz as u128 / (NS_PER_SEC * cd.divisor as u128)
    }

    /// Earliest time at which `counts` decrements have happened.
    fn time_of_count(&self, cd: &Countdown, counts: u128) -> u64 {
        let ticks = counts * cd.divisor as u128 * NS_PER_SEC;
        let ns = ticks.div_ceil(self.bus_freq_hz as u128);
        u64::try_from(ns)
            .ok()
            .and_then(|ns| ns.checked_add(cd.anchor_ns))
            .unwrap_or(u64::MAX)
    }

    /// Number of expirations that have happened by `now_ns`.
    fn expirations(&self, cd: &Countdown, mode: TimerMode, now_ns: u64) -> u64 {
        let c = self.counts_since(cd, now_ns);
        let first = cd.anchor_count as u128;
        if c < first {
            0
        } else if mode == TimerMode::Periodic && self.initial_count != 0 {
            let n = (c - first) / self.initial_count as u128 + 1;
            u64::try_from(n).unwrap_or(u64::MAX)
        } else {
            1
        }
    }

    /// The current count register at `now_ns`.
    pub(crate) fn current_count(&self, mode: TimerMode, now_ns: u64) -> u32 {
        let Some(cd) = &self.countdown else {
            return 0;
        };
        let c = self.counts_since(cd, now_ns);
        let first = cd.anchor_count as u128;
        if c < first {
            (first - c) as u32
        } else if mode == TimerMode::Periodic && self.initial_count != 0 {
            let init = self.initial_count as u128;
            (init - (c - first) % init) as u32
        } else {
            0
        }
    }

    /// A write to the initial count register.
    pub(crate) fn write_initial_count(&mut self, mode: TimerMode, value: u32, now_ns: u64) {
        if mode == TimerMode::TscDeadline {
            // SDM 11.5.4.1: ignored in TSC-deadline mode.
            return;
        }
        self.initial_count = value;
        self.countdown = (value != 0).then(|| Countdown {
            anchor_ns: now_ns,
            anchor_count: value,
            divisor: divisor(self.divide_config),
            fired: 0,
        });
    }

    /// A write to the divide configuration register. Any pending expiry
    /// must have been settled by [`Timer::poll`] at `now_ns` first; the
    /// countdown goes on from its current value at the new rate.
    pub(crate) fn write_divide_config(&mut self, mode: TimerMode, value: u32, now_ns: u64) {
        self.divide_config = value & DIVIDE_CONFIG_MASK;
        let current = self.current_count(mode, now_ns);
        if let Some(cd) = &mut self.countdown {
            if current == 0 {
                // An expired one-shot that has been reported: stays idle.
                self.countdown = None;
            } else {
                *cd = Countdown {
                    anchor_ns: now_ns,
                    anchor_count: current,
                    divisor: divisor(self.divide_config),
                    fired: 0,
                };
            }
        }
    }

    /// A change of timer mode disarms the timer (SDM 11.5.4.1); like KVM,
    /// the initial count and the deadline are cleared as well.
    pub(crate) fn disarm(&mut self) {
        self.countdown = None;
        self.initial_count = 0;
        self.tsc_deadline = 0;
    }

    /// A write to `IA32_TSC_DEADLINE`: only meaningful in TSC-deadline mode,
    /// ignored otherwise (SDM 11.5.4.1). 0 disarms.
    pub(crate) fn write_tsc_deadline(&mut self, mode: TimerMode, value: u64) {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// Settles expirations up to `now`; reports whether the timer expired
    /// (several missed periods count as one expiry).
    pub(crate) fn poll(&mut self, mode: TimerMode, now: ApicTime) -> Expiry {
        if mode == TimerMode::TscDeadline {
            if self.tsc_deadline != 0 && now.tsc >= self.tsc_deadline {
                // The timer disarms itself and clears the MSR.
                self.tsc_deadline = 0;
                return Expiry::Expired;
            }
            return Expiry::None;
        }
        let Some(cd) = self.countdown else {
            return Expiry::None;
        };
        let n = self.expirations(&cd, mode, now.ns);
        if n <= cd.fired {
            return Expiry::None;
        }
        match mode {
            TimerMode::Periodic => {
                if let Some(cd) = &mut self.countdown {
                    cd.fired = n;
                }
            }
            _ => self.countdown = None,
        }
        Expiry::Expired
    }

    /// Whether the timer can expire at all (a countdown runs, or a TSC
    /// deadline is set in TSC-deadline mode).
    pub(crate) fn is_armed(&self, mode: TimerMode) -> bool {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline != 0
        } else {
            self.countdown.is_some()
        }
    }

    /// When the next expiry is due, if the timer is armed.
    pub(crate) fn next_deadline(&self, mode: TimerMode) -> Option<TimerDeadline> {
        if mode == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0).then_some(TimerDeadline::Tsc(self.tsc_deadline));
        }
        let cd = self.countdown.as_ref()?;
        let counts = if mode == TimerMode::Periodic && cd.fired > 0 {
            cd.anchor_count as u128 + cd.fired as u128 * self.initial_count as u128
        } else {
            cd.anchor_count as u128
        };
        Some(TimerDeadline::Ns(self.time_of_count(cd, counts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GHZ: u64 = 1_000_000_000;

    #[test]
    fn divide_configuration_encodings() {
        // SDM Figure 11-10: bits 3,1,0.
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (cfg, div) in table {
            assert_eq!(divisor(cfg), div, "{cfg:#06b}");
            // Bit 2 is reserved and does not change the divisor.
            assert_eq!(divisor(cfg | 0b100), div);
        }
    }

    #[test]
    fn timer_mode_bits() {
        assert_eq!(TimerMode::from_lvt(0x000F0), Some(TimerMode::OneShot));
        assert_eq!(TimerMode::from_lvt(0x200F0), Some(TimerMode::Periodic));
        assert_eq!(TimerMode::from_lvt(0x400F0), Some(TimerMode::TscDeadline));
        assert_eq!(TimerMode::from_lvt(0x600F0), None);
        assert_eq!(TimerMode::Periodic.lvt_bits(), 0x20000);
        assert_eq!(TimerMode::TscDeadline.lvt_bits(), 0x40000);
    }

    #[test]
    fn one_shot_counts_down_at_bus_rate_over_divisor() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::OneShot;
        t.write_divide_config(m, 0b0000, 0); // divide by 2
        t.write_initial_count(m, 1000, 10_000);
        assert_eq!(t.current_count(m, 10_000), 1000);
        assert_eq!(t.current_count(m, 10_500), 750);
        assert_eq!(t.current_count(m, 10_001), 1000);
        assert_eq!(t.current_count(m, 10_002), 999);
        assert_eq!(t.current_count(m, 11_998), 1);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(12_000)));
        assert_eq!(t.poll(m, ApicTime::from_ns(11_999)), Expiry::None);
        assert_eq!(t.current_count(m, 12_000), 0);
        assert_eq!(t.poll(m, ApicTime::from_ns(12_000)), Expiry::Expired);
        assert_eq!(t.poll(m, ApicTime::from_ns(50_000)), Expiry::None);
        assert_eq!(t.next_deadline(m), None);
        assert_eq!(t.initial_count(), 1000);
    }

    #[test]
    fn bus_frequency_scales_the_count() {
        // 100 MHz bus, divide by 1: one count every 10 ns.
        let mut t = Timer::new(100_000_000);
        let m = TimerMode::OneShot;
        t.write_divide_config(m, 0b1011, 0);
        t.write_initial_count(m, 100, 0);
        assert_eq!(t.current_count(m, 500), 50);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(1000)));
    }

    #[test]
    fn periodic_reloads() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::Periodic;
        t.write_divide_config(m, 0b1011, 0); // divide by 1
        t.write_initial_count(m, 100, 1000);
        assert_eq!(t.current_count(m, 1050), 50);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(1100)));
        assert_eq!(t.poll(m, ApicTime::from_ns(1100)), Expiry::Expired);
        assert_eq!(t.current_count(m, 1100), 100);
        assert_eq!(t.current_count(m, 1130), 70);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(1200)));
        assert_eq!(t.poll(m, ApicTime::from_ns(1150)), Expiry::None);
        // Missing three periods: one expiry, next deadline after now.
        assert_eq!(t.poll(m, ApicTime::from_ns(1420)), Expiry::Expired);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(1500)));
        assert_eq!(t.current_count(m, 1420), 80);
    }

    #[test]
    fn zero_initial_count_stops() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::Periodic;
        t.write_initial_count(m, 100, 0);
        t.write_initial_count(m, 0, 50);
        assert_eq!(t.current_count(m, 60), 0);
        assert_eq!(t.next_deadline(m), None);
        assert_eq!(t.poll(m, ApicTime::from_ns(10_000)), Expiry::None);
    }

    #[test]
    fn divide_change_continues_from_current_count() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::OneShot;
        t.write_divide_config(m, 0b1011, 0); // /1
        t.write_initial_count(m, 1000, 0);
        t.write_divide_config(m, 0b0000, 400); // /2 from count 600
        assert_eq!(t.current_count(m, 400), 600);
        assert_eq!(t.current_count(m, 600), 500);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(1600)));
    }

    #[test]
    fn tsc_deadline() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::TscDeadline;
        // Ignored outside TSC-deadline mode.
        t.write_tsc_deadline(TimerMode::OneShot, 5000);
        assert_eq!(t.tsc_deadline(), 0);
        t.write_tsc_deadline(m, 5000);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Tsc(5000)));
        // Initial count writes are ignored, current count reads 0.
        t.write_initial_count(m, 1234, 0);
        assert_eq!(t.initial_count(), 0);
        assert_eq!(t.current_count(m, 100), 0);
        assert_eq!(t.poll(m, ApicTime::new(1_000_000, 4999)), Expiry::None);
        assert_eq!(t.poll(m, ApicTime::new(0, 5000)), Expiry::Expired);
        assert_eq!(t.tsc_deadline(), 0);
        assert_eq!(t.poll(m, ApicTime::new(0, 9000)), Expiry::None);
        // Writing 0 disarms.
        t.write_tsc_deadline(m, 7000);
        t.write_tsc_deadline(m, 0);
        assert_eq!(t.poll(m, ApicTime::new(0, 9000)), Expiry::None);
    }

    #[test]
    fn long_counts_do_not_overflow() {
        let mut t = Timer::new(GHZ);
        let m = TimerMode::OneShot;
        t.write_divide_config(m, 0b1010, 0); // /128
        t.write_initial_count(m, u32::MAX, u64::MAX - 10);
        assert_eq!(t.next_deadline(m), Some(TimerDeadline::Ns(u64::MAX)));
        assert_eq!(t.current_count(m, u64::MAX), u32::MAX);
    }
}
