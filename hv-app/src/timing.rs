//! Measuring time without interrupts: the TSC, calibrated against channel 2
//! of the 8254 PIT, whose frequency is fixed.
//!
//! Channel 2's gate and output are wired to port 0x61 (the PC's "port B"),
//! so it can be polled: program it in mode 0 (interrupt on terminal
//! count) with a count, read the TSC, wait until its output goes high,
//! read the TSC again. Intel 8254 datasheet (mode 0, control word);
//! port 0x61 bits as in the IBM PC/AT technical reference.

use crate::port::PortIo;
use crate::{Error, Result};

/// The PIT's input clock, 1.193182 MHz (14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 2's data port.
pub const PIT_CHANNEL2: u16 = 0x42;
/// The PIT's mode/command port.
pub const PIT_COMMAND: u16 = 0x43;
/// Port B: bit 0 gates channel 2, bit 1 enables the speaker, bit 5 reads
/// channel 2's output.
pub const PORT_B: u16 = 0x61;
/// Port B bit 0: channel 2 gate.
pub const PORT_B_GATE2: u8 = 1 << 0;
/// Port B bit 1: speaker data enable.
pub const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port B bit 5: channel 2 output.
pub const PORT_B_OUT2: u8 = 1 << 5;
/// Control word: channel 2 (bits 7-6 = 10), low then high byte (bits 5-4
/// = 11), mode 0 (bits 3-1 = 000), binary (bit 0 = 0).
pub const CH2_MODE0_LOHI: u8 = 0b1011_0000;
/// Longest interval one channel 2 count covers: 65535 ticks, about 54.9 ms.
pub const MAX_PIT_US: u64 = 54_924;
/// The TSC frequency [`Tsc::FALLBACK`] assumes when calibration fails.
/// Faster than most TSCs, so delays computed with it are at least as long
/// as asked on a slower one.
pub const FALLBACK_TSC_HZ: u64 = 4_000_000_000;

/// PIT ticks in `us` microseconds, rounded up; `None` if that is 0 or does
/// not fit channel 2's 16-bit count.
pub const fn pit_ticks(us: u64) -> Option<u16> {
    let ticks = (us as u128 * PIT_HZ as u128).div_ceil(1_000_000);
    if ticks == 0 || ticks > u16::MAX as u128 {
        None
    } else {
        Some(ticks as u16)
    }
}

/// Measures the TSC frequency over `us` microseconds (at most
/// [`MAX_PIT_US`]) of PIT channel 2. `rdtsc` reads the TSC. The output is
/// polled at most `max_polls` times; a PIT that never counts down gives
/// [`Error::Unsupported`] instead of hanging. Port B's gate and speaker
/// bits are put back afterwards.
pub fn calibrate_tsc<P, T>(io: &mut P, mut rdtsc: T, us: u64, max_polls: u64) -> Result<u64>
where
    P: PortIo,
    T: FnMut() -> u64,
{
    let ticks = pit_ticks(us).ok_or(Error::Unsupported(
        "TSC calibration interval does not fit a PIT count",
    ))?;
    let saved = io.inb(PORT_B);
    // Gate on, speaker off: the count runs, nothing beeps.
    io.outb(PORT_B, (saved & !PORT_B_SPEAKER) | PORT_B_GATE2);
    io.outb(PIT_COMMAND, CH2_MODE0_LOHI);
    let [lo, hi] = ticks.to_le_bytes();
    io.outb(PIT_CHANNEL2, lo);
    io.outb(PIT_CHANNEL2, hi);
    let start = rdtsc();
    let mut polls = 0u64;
    let done = loop {
        if io.inb(PORT_B) & PORT_B_OUT2 != 0 {
            break true;
        }
        polls += 1;
        if polls >= max_polls {
            break false;
        }
    };
    let end = rdtsc();
    // Only bits 3-0 of port B are writable.
    io.outb(PORT_B, saved & 0x0f);
    if !done {
        return Err(Error::Unsupported(
            "PIT channel 2 output never rose: cannot calibrate the TSC",
        ));
    }
    let delta = end.wrapping_sub(start);
    let hz = u128::from(delta) * u128::from(PIT_HZ) / u128::from(ticks);
    match u64::try_from(hz) {
        Ok(hz) if hz >= 1_000_000 => Ok(hz),
        _ => Err(Error::Unsupported(
            "the TSC did not advance at 1 MHz or more during calibration",
        )),
    }
}

/// TSC ticks and microseconds, at a known frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tsc {
    /// Ticks per second.
    pub hz: u64,
}

impl Tsc {
    /// The frequency to assume when calibration fails
    /// ([`FALLBACK_TSC_HZ`]).
    pub const FALLBACK: Self = Self {
        hz: FALLBACK_TSC_HZ,
    };

    /// Ticks in `us` microseconds, rounded up (saturating).
    pub const fn ticks(self, us: u64) -> u64 {
        let t = (us as u128 * self.hz as u128).div_ceil(1_000_000);
        if t > u64::MAX as u128 {
            u64::MAX
        } else {
            t as u64
        }
    }

    /// Whole microseconds in `ticks`.
    pub const fn micros(self, ticks: u64) -> u64 {
        if self.hz == 0 {
            return u64::MAX;
        }
        (ticks as u128 * 1_000_000 / self.hz as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use std::vec::Vec;

    /// A PIT whose channel 2 output rises after `polls_to_zero` reads of
    /// port B, and a TSC that advances `tsc_per_poll` on each of them.
    struct FakePit<'a> {
        port_b: u8,
        writes: Vec<(u16, u8)>,
        polls_to_zero: u64,
        tsc: &'a Cell<u64>,
        tsc_per_poll: u64,
    }

    impl PortIo for FakePit<'_> {
        fn inb(&mut self, port: u16) -> u8 {
            assert_eq!(port, PORT_B);
            if self.writes.len() < 4 {
                return self.port_b; // the read before programming
            }
            self.tsc.set(self.tsc.get() + self.tsc_per_poll);
            if self.polls_to_zero == 0 {
                self.port_b | PORT_B_OUT2
            } else {
                self.polls_to_zero -= 1;
                self.port_b
            }
        }
        fn inw(&mut self, _: u16) -> u16 {
            unreachable!("the PIT is driven with byte accesses")
        }
        fn inl(&mut self, _: u16) -> u32 {
            unreachable!("the PIT is driven with byte accesses")
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.writes.push((port, value));
        }
        fn outw(&mut self, _: u16, _: u16) {
            unreachable!("the PIT is driven with byte accesses")
        }
        fn outl(&mut self, _: u16, _: u32) {
            unreachable!("the PIT is driven with byte accesses")
        }
    }

    fn fake(tsc: &Cell<u64>, polls_to_zero: u64, tsc_per_poll: u64) -> FakePit<'_> {
        FakePit {
            // Speaker data on, gate off, refresh bit 4 set.
            port_b: 0x12,
            writes: Vec::new(),
            polls_to_zero,
            tsc,
            tsc_per_poll,
        }
    }

    #[test]
    fn pit_ticks_round_up_and_fit_16_bits() {
        // 10 ms = 11931.82 ticks -> 11932, as Linux's PIT calibration uses.
        assert_eq!(pit_ticks(10_000), Some(11_932));
        assert_eq!(pit_ticks(1), Some(2));
        assert_eq!(pit_ticks(MAX_PIT_US), Some(65_535));
        assert_eq!(pit_ticks(MAX_PIT_US + 1), None);
        assert_eq!(pit_ticks(0), None);
    }

    #[test]
    fn calibration_programs_channel_2_and_measures() {
        // 10 ms; the output rises after 1000 polls; the TSC advances 20_000
        // per poll: 1001 polls x 20_000 = 20_020_000 ticks in 11932 PIT
        // ticks = 2.002 GHz.
        let tsc = Cell::new(0);
        let mut pit = fake(&tsc, 1000, 20_000);
        let hz = calibrate_tsc(&mut pit, || tsc.get(), 10_000, 1 << 20).unwrap();
        assert_eq!(hz, 20_020_000 * PIT_HZ / 11_932);
        assert_eq!(hz / 1_000_000, 2001);
        assert_eq!(
            pit.writes,
            [
                (PORT_B, 0x11),       // gate on, speaker off
                (PIT_COMMAND, 0xb0),  // channel 2, lo/hi, mode 0
                (PIT_CHANNEL2, 0x9c), // 11932 = 0x2E9C
                (PIT_CHANNEL2, 0x2e),
                (PORT_B, 0x02), // back as it was (writable bits)
            ]
        );
    }

    #[test]
    fn a_dead_pit_or_tsc_is_an_error_not_a_hang() {
        let tsc = Cell::new(0);
        let mut pit = fake(&tsc, u64::MAX, 1);
        let r = calibrate_tsc(&mut pit, || tsc.get(), 10_000, 5000);
        assert!(matches!(r, Err(Error::Unsupported(_))));
        assert_eq!(pit.writes.last(), Some(&(PORT_B, 0x02)));
        // The output rises but the TSC stood still.
        let mut pit = fake(&tsc, 3, 0);
        assert!(matches!(
            calibrate_tsc(&mut pit, || 7, 10_000, 5000),
            Err(Error::Unsupported(_))
        ));
        // An interval no count can hold.
        let mut pit = fake(&tsc, 0, 0);
        assert!(calibrate_tsc(&mut pit, || 0, 60_000, 5000).is_err());
        assert!(pit.writes.is_empty());
    }

    #[test]
    fn tsc_conversions() {
        let tsc = Tsc { hz: 2_500_000_000 };
        assert_eq!(tsc.ticks(10_000), 25_000_000);
        assert_eq!(tsc.ticks(200), 500_000);
        assert_eq!(tsc.micros(25_000_000), 10_000);
        assert_eq!(tsc.micros(2_499), 0);
        assert_eq!(Tsc { hz: 3 }.ticks(1), 1); // rounded up
        assert_eq!(Tsc::FALLBACK.ticks(1), 4_000);
        assert_eq!(Tsc { hz: u64::MAX }.ticks(u64::MAX), u64::MAX);
        assert_eq!(Tsc { hz: 0 }.micros(5), u64::MAX);
    }
}
