//! The result lines of the `bench` guest (the exit-cost benchmark), pure
//! code so that the host can test the format `cargo xtask bench` parses.
//!
//! One line per kind of round trip:
//!
//! ```text
//! bench: cpuid iters=1000 cycles=123456 per=123.5
//! bench: self_ipi unsupported (no virtual LAPIC yet)
//! bench: done
//! ```
//!
//! `cycles` is the RDTSC difference around `iters` iterations; `per` is
//! `cycles / iters` rounded to one decimal (half up), with integer
//! arithmetic only.

use core::fmt;

/// The prefix of every result line.
pub const PREFIX: &str = "bench:";

/// The line that ends a complete run.
pub const DONE: &str = "bench: done";

/// One timed loop: `iters` iterations of one kind took `cycles` TSC ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// The kind of round trip (`cpuid`, `pio_out`, ...).
    pub kind: &'static str,
    /// Iterations timed.
    pub iters: u64,
    /// TSC ticks for all of them.
    pub cycles: u64,
}

impl Measurement {
    /// Ticks per iteration in tenths, rounded half up; 0 for no iterations.
    pub const fn per_tenths(&self) -> u64 {
        if self.iters == 0 {
            return 0;
        }
        let t = self.cycles as u128 * 10 + self.iters as u128 / 2;
        (t / self.iters as u128) as u64
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = self.per_tenths();
        write!(
            f,
            "{PREFIX} {} iters={} cycles={} per={}.{}",
            self.kind,
            self.iters,
            self.cycles,
            per / 10,
            per % 10
        )
    }
}

/// A kind the guest cannot run where it is, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    /// The kind of round trip.
    pub kind: &'static str,
    /// Why it was skipped.
    pub why: &'static str,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX} {} unsupported ({})", self.kind, self.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let m = Measurement {
            kind: "cpuid",
            iters: 1000,
            cycles: 123_456,
        };
        assert_eq!(
            m.to_string(),
            "bench: cpuid iters=1000 cycles=123456 per=123.5"
        );
        let u = Unsupported {
            kind: "self_ipi",
            why: "no virtual LAPIC yet",
        };
        assert_eq!(
            u.to_string(),
            "bench: self_ipi unsupported (no virtual LAPIC yet)"
        );
    }

    #[test]
    fn per_iteration_rounds_half_up_in_tenths() {
        let per = |cycles, iters| {
            Measurement {
                kind: "k",
                iters,
                cycles,
            }
            .per_tenths()
        };
        assert_eq!(per(2000, 1000), 20);
        assert_eq!(per(2004, 1000), 20); // 2.004 -> 2.0
        assert_eq!(per(2050, 1000), 21); // 2.05 -> 2.1
        assert_eq!(per(7, 3), 23); // 2.333 -> 2.3
        assert_eq!(per(5, 0), 0);
        assert_eq!(per(u64::MAX / 10, 1), u64::MAX / 10 * 10);
    }
}
