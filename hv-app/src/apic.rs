//! The host's local APIC as SMP bring-up needs it: the `IA32_APIC_BASE`
//! MSR, the interrupt command register (ICR) encodings of INIT and
//! STARTUP IPIs, and the INIT-SIPI-SIPI sequence that wakes an application
//! processor (AP), written over two small seams ([`IpiSender`], [`Clock`])
//! so the sequence and its delays are tested on the host.
//!
//! The sequence is the one of the Intel SDM vol. 3A section 9.4.4.1
//! ("Typical BSP Initialization Sequence") and the MultiProcessor
//! Specification 1.4 appendix B.4: INIT, wait 10 ms, STARTUP, wait 200 us,
//! STARTUP again, wait 200 us, then wait for the AP to report itself
//! (AMD APM vol. 2 section 16.5 describes the same INIT/Startup messages).

use crate::{Error, Result};

/// The `IA32_APIC_BASE` MSR (SDM vol. 3A section 11.4.4, AMD APM vol. 2
/// section 16.3.1).
pub const IA32_APIC_BASE: u32 = 0x1b;
/// The local APIC's physical base after reset.
pub const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;
/// Bytes of the xAPIC register page.
pub const APIC_MMIO_SIZE: u64 = 0x1000;

/// xAPIC register offsets in the MMIO page (SDM vol. 3A table 11-1).
pub mod reg {
    /// Local APIC ID (bits 31-24 in xAPIC mode).
    pub const ID: u32 = 0x20;
    /// Local APIC version (bits 7-0), max LVT entry (bits 23-16).
    pub const VERSION: u32 = 0x30;
    /// Spurious interrupt vector register (bit 8: APIC software enable).
    pub const SVR: u32 = 0xf0;
    /// Error status register (write before reading).
    pub const ESR: u32 = 0x280;
    /// Interrupt command register, bits 31-0 (writing it sends the IPI).
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command register, bits 63-32 (destination in 31-24).
    pub const ICR_HIGH: u32 = 0x310;
}

/// The value of the `IA32_APIC_BASE` MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicBase(pub u64);

impl ApicBase {
    /// Bit 8: this is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// Bit 10: x2APIC mode enabled (EXTD).
    pub const X2APIC: u64 = 1 << 10;
    /// Bit 11: the local APIC is enabled (globally).
    pub const ENABLE: u64 = 1 << 11;
    /// Bits 51-12: the physical base of the register page.
    pub const BASE_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// Whether this CPU is the bootstrap processor.
    pub const fn is_bsp(self) -> bool {
        self.0 & Self::BSP != 0
    }

    /// Whether the APIC is enabled.
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }

    /// Whether x2APIC mode is on (then the MMIO page is not decoded).
    pub const fn x2apic(self) -> bool {
        self.0 & Self::X2APIC != 0
    }

    /// Physical address of the register page.
    pub const fn base(self) -> u64 {
        self.0 & Self::BASE_MASK
    }

    /// The xAPIC register page to use for sending IPIs: fails with
    /// [`Error::Unsupported`] if the APIC is disabled or in x2APIC mode
    /// (hv-app drives the xAPIC MMIO interface only).
    pub fn xapic_base(self) -> Result<u64> {
        if !self.enabled() {
            return Err(Error::Unsupported(
                "the local APIC is disabled in IA32_APIC_BASE",
            ));
        }
        if self.x2apic() {
            return Err(Error::Unsupported(
                "the local APIC is in x2APIC mode (hv-app sends IPIs through the xAPIC page)",
            ));
        }
        Ok(self.base())
    }
}

/// Delivery modes of the ICR (bits 10-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeliveryMode {
    /// The vector, to the destination.
    Fixed = 0b000,
    /// A non-maskable interrupt.
    Nmi = 0b100,
    /// INIT: the destination resets into wait-for-SIPI.
    Init = 0b101,
    /// STARTUP (SIPI): a waiting processor starts in real mode at
    /// `vector << 12`.
    StartUp = 0b110,
}

/// An interrupt command register value (SDM vol. 3A figure 11-12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icr {
    /// Bits 31-0 (written last: the write sends the IPI).
    pub low: u32,
    /// Bits 63-32: the destination APIC ID in bits 31-24 (xAPIC).
    pub high: u32,
}

/// ICR bit 12: delivery status, 1 while the IPI is not yet accepted.
pub const ICR_SEND_PENDING: u32 = 1 << 12;
/// ICR bit 14: level, 1 = assert.
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// ICR bit 15: trigger mode, 1 = level.
pub const ICR_TRIGGER_LEVEL: u32 = 1 << 15;

impl Icr {
    /// An IPI with `mode` and `vector` to the local APIC `apic_id`
    /// (physical destination, no shorthand, level assert, edge).
    pub const fn to_apic(apic_id: u8, mode: DeliveryMode, vector: u8) -> Self {
        Self {
            low: ((mode as u32) << 8) | ICR_LEVEL_ASSERT | vector as u32,
            high: (apic_id as u32) << 24,
        }
    }

    /// INIT to `apic_id`: `0x0000_4500` with the destination in the high
    /// word (SDM example: `0x000C_4500` is the broadcast form).
    pub const fn init(apic_id: u8) -> Self {
        Self::to_apic(apic_id, DeliveryMode::Init, 0)
    }

    /// STARTUP to `apic_id`, starting it at `vector << 12`: `0x0000_46VV`.
    pub const fn startup(apic_id: u8, vector: u8) -> Self {
        Self::to_apic(apic_id, DeliveryMode::StartUp, vector)
    }
}

/// Lowest page a STARTUP IPI may start a CPU at (vector 0 would be the
/// real-mode IVT and BIOS data area).
pub const MIN_START_PAGE: u64 = 0x1000;
/// End of the pages a STARTUP IPI may start a CPU at: vectors 0xA0-0xBF
/// are reserved (MP spec B.4.2) and the rest of the first MiB is ROM, so
/// the page lies in conventional memory below 0xA0000.
pub const START_PAGE_END: u64 = 0xa_0000;

/// The STARTUP vector that starts an AP at `page`: `page >> 12`. Fails with
/// [`Error::BadStartPage`] unless `page` is 4 KiB aligned in
/// `[MIN_START_PAGE, START_PAGE_END)`.
pub const fn sipi_vector(page: u64) -> Result<u8> {
    if page % 0x1000 != 0 || page < MIN_START_PAGE || page >= START_PAGE_END {
        return Err(Error::BadStartPage(page));
    }
    Ok((page >> 12) as u8)
}

/// Sends IPIs through the local APIC: the seam over the ICR.
pub trait IpiSender {
    /// Writes `icr` (high word first, then the low word, which sends it).
    fn send(&mut self, icr: Icr);
    /// Whether the last IPI is still pending (ICR delivery status).
    fn pending(&mut self) -> bool;
}

/// A monotonic microsecond clock with a busy-wait delay.
pub trait Clock {
    /// Microseconds since some fixed point.
    fn now_us(&mut self) -> u64;
    /// Waits at least `us` microseconds.
    fn delay_us(&mut self, us: u64);
}

/// The delays and time limits of the AP start sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTimings {
    /// After INIT: 10 ms (MP spec B.4.1, SDM 9.4.4.1).
    pub after_init_us: u64,
    /// After each STARTUP: 200 us (MP spec B.4.2, SDM 9.4.4.1).
    pub after_sipi_us: u64,
    /// Longest wait for the ICR's delivery status to clear.
    pub icr_timeout_us: u64,
    /// Longest wait for the AP to report itself online after the second
    /// STARTUP.
    pub online_timeout_us: u64,
}

impl StartTimings {
    /// The specifications' delays, 10 ms for an IPI to be accepted and
    /// one second for the AP to get from real mode to its Rust code (an
    /// emulator on a loaded host can be slow).
    pub const STANDARD: Self = Self {
        after_init_us: 10_000,
        after_sipi_us: 200,
        icr_timeout_us: 10_000,
        online_timeout_us: 1_000_000,
    };
}

/// How starting one AP went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApStart {
    /// The AP reported itself, this many microseconds after the second
    /// STARTUP's delay.
    Online {
        /// Time waited.
        waited_us: u64,
    },
    /// An IPI stayed pending in the ICR past the time limit.
    IpiStuck {
        /// Which IPI: `"INIT"`, `"first STARTUP"` or `"second STARTUP"`.
        ipi: &'static str,
    },
    /// The IPIs went out but the AP did not report itself in time.
    NoResponse,
}

/// Waits (with `clock`) until the ICR is idle, at most `timeout_us`.
fn wait_idle<A: IpiSender, C: Clock>(apic: &mut A, clock: &mut C, timeout_us: u64) -> bool {
    let start = clock.now_us();
    loop {
        if !apic.pending() {
            return true;
        }
        if clock.now_us().saturating_sub(start) >= timeout_us {
            return false;
        }
        clock.delay_us(10);
    }
}

/// Wakes the AP with local APIC ID `apic_id` at the page of STARTUP
/// `vector`: INIT, `after_init_us`, STARTUP, `after_sipi_us`, STARTUP,
/// `after_sipi_us` (a CPU that already left wait-for-SIPI ignores the
/// second one), then polls `online` until it is true or
/// `online_timeout_us` passes. Each IPI waits for the previous one to be
/// accepted first.
pub fn start_ap<A, C, F>(
    apic: &mut A,
    clock: &mut C,
    apic_id: u8,
    vector: u8,
    timings: &StartTimings,
    mut online: F,
) -> ApStart
where
    A: IpiSender,
    C: Clock,
    F: FnMut() -> bool,
{
    let steps = [
        ("INIT", Icr::init(apic_id), timings.after_init_us),
        (
            "first STARTUP",
            Icr::startup(apic_id, vector),
            timings.after_sipi_us,
        ),
        (
            "second STARTUP",
            Icr::startup(apic_id, vector),
            timings.after_sipi_us,
        ),
    ];
    for (ipi, icr, delay) in steps {
        if !wait_idle(apic, clock, timings.icr_timeout_us) {
            return ApStart::IpiStuck { ipi };
        }
        apic.send(icr);
        clock.delay_us(delay);
    }
    let start = clock.now_us();
    loop {
        if online() {
            return ApStart::Online {
                waited_us: clock.now_us().saturating_sub(start),
            };
        }
        if clock.now_us().saturating_sub(start) >= timings.online_timeout_us {
            return ApStart::NoResponse;
        }
        clock.delay_us(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Send(Icr, u64),
        Delay(u64),
    }

    /// A fake APIC and clock: records every IPI with the time it was sent
    /// and every delay; the ICR stays pending for `pending_polls` polls
    /// after each send.
    struct Fake {
        now: u64,
        events: Vec<Event>,
        pending_polls: u32,
        pending_left: u32,
    }

    impl Fake {
        fn new(pending_polls: u32) -> Self {
            Self {
                now: 0,
                events: Vec::new(),
                pending_polls,
                pending_left: 0,
            }
        }
    }

    impl IpiSender for Fake {
        fn send(&mut self, icr: Icr) {
            self.events.push(Event::Send(icr, self.now));
            self.pending_left = self.pending_polls;
        }
        fn pending(&mut self) -> bool {
            if self.pending_left > 0 {
                self.pending_left -= 1;
                true
            } else {
                false
            }
        }
    }

    impl Clock for Fake {
        fn now_us(&mut self) -> u64 {
            self.now
        }
        fn delay_us(&mut self, us: u64) {
            self.events.push(Event::Delay(us));
            self.now += us;
        }
    }

    #[test]
    fn icr_encodings_match_the_sdm() {
        // SDM 9.4.4.1: 0x000C4500 broadcasts INIT, 0x000C46XX STARTUP;
        // the targeted forms have shorthand 00 and the ID in ICR[63:56].
        assert_eq!(
            Icr::init(3),
            Icr {
                low: 0x0000_4500,
                high: 0x0300_0000
            }
        );
        assert_eq!(
            Icr::startup(1, 0x08),
            Icr {
                low: 0x0000_4608,
                high: 0x0100_0000
            }
        );
        assert_eq!(
            Icr::to_apic(0xfe, DeliveryMode::Nmi, 0),
            Icr {
                low: 0x0000_4400,
                high: 0xfe00_0000
            }
        );
        assert_eq!(Icr::to_apic(2, DeliveryMode::Fixed, 0x40).low, 0x4040);
        assert_eq!(ICR_SEND_PENDING, 0x1000);
        assert_eq!(ICR_TRIGGER_LEVEL, 0x8000);
    }

    #[test]
    fn apic_base_msr_fields() {
        // QEMU's BSP: 0xFEE00900 = base 0xFEE00000, enabled, BSP.
        let bsp = ApicBase(0xfee0_0900);
        assert!(bsp.is_bsp() && bsp.enabled() && !bsp.x2apic());
        assert_eq!(bsp.base(), DEFAULT_APIC_BASE);
        assert_eq!(bsp.xapic_base().unwrap(), 0xfee0_0000);
        // An AP in x2APIC mode (0xC00 set) with a relocated base.
        let ap = ApicBase(0x1_2345_6c00);
        assert!(!ap.is_bsp() && ap.x2apic());
        assert_eq!(ap.base(), 0x1_2345_6000);
        assert!(matches!(ap.xapic_base(), Err(Error::Unsupported(_))));
        assert!(matches!(
            ApicBase(0xfee0_0100).xapic_base(),
            Err(Error::Unsupported(_))
        ));
        assert_eq!(IA32_APIC_BASE, 0x1b);
    }

    #[test]
    fn sipi_vector_is_the_page_number() {
        assert_eq!(sipi_vector(0x8000).unwrap(), 0x08);
        assert_eq!(sipi_vector(0x9f000).unwrap(), 0x9f);
        assert_eq!(sipi_vector(0x1000).unwrap(), 0x01);
        for bad in [0, 0x8800, 0xa0000, 0xbf000, 0x10_0000, u64::MAX] {
            assert_res_eq!(sipi_vector(bad), Err::<u8, _>(Error::BadStartPage(bad)));
        }
    }

    /// Runs the sequence on one [`Fake`] used as both APIC and clock (so
    /// the order of sends and delays is recorded); the AP reports itself
    /// at the poll after `online_after_polls` polls.
    fn run(pending_polls: u32, online_after_polls: u32, t: &StartTimings) -> (ApStart, Fake) {
        struct A<'a>(&'a RefCell<Fake>);
        struct C<'a>(&'a RefCell<Fake>);
        impl IpiSender for A<'_> {
            fn send(&mut self, icr: Icr) {
                self.0.borrow_mut().send(icr)
            }
            fn pending(&mut self) -> bool {
                self.0.borrow_mut().pending()
            }
        }
        impl Clock for C<'_> {
            fn now_us(&mut self) -> u64 {
                self.0.borrow_mut().now_us()
            }
            fn delay_us(&mut self, us: u64) {
                self.0.borrow_mut().delay_us(us)
            }
        }
        let fake = RefCell::new(Fake::new(pending_polls));
        let mut polls = 0;
        let r = start_ap(&mut A(&fake), &mut C(&fake), 1, 0x08, t, || {
            polls += 1;
            polls > online_after_polls
        });
        (r, fake.into_inner())
    }

    #[test]
    fn sends_and_delays_are_in_spec_order() {
        let (r, fake) = run(0, 0, &StartTimings::STANDARD);
        assert_eq!(r, ApStart::Online { waited_us: 0 });
        let init = Icr {
            low: 0x4500,
            high: 0x0100_0000,
        };
        let sipi = Icr {
            low: 0x4608,
            high: 0x0100_0000,
        };
        assert_eq!(
            fake.events,
            [
                Event::Send(init, 0),
                Event::Delay(10_000),
                Event::Send(sipi, 10_000),
                Event::Delay(200),
                Event::Send(sipi, 10_200),
                Event::Delay(200),
            ]
        );
    }

    #[test]
    fn a_pending_icr_is_waited_for() {
        // Each IPI stays pending for 2 polls: the next one waits 2 x 10 us.
        let (r, fake) = run(2, 1, &StartTimings::STANDARD);
        assert_eq!(r, ApStart::Online { waited_us: 50 });
        let sends: Vec<u64> = fake
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Send(_, t) => Some(*t),
                Event::Delay(_) => None,
            })
            .collect();
        assert_eq!(sends, [0, 10_000 + 20, 10_000 + 20 + 200 + 20]);
    }

    #[test]
    fn a_stuck_icr_and_a_silent_ap_are_reported() {
        let t = StartTimings {
            icr_timeout_us: 100,
            online_timeout_us: 1_000,
            ..StartTimings::STANDARD
        };
        let (r, fake) = run(u32::MAX, 0, &t);
        assert_eq!(
            r,
            ApStart::IpiStuck {
                ipi: "first STARTUP"
            }
        );
        // INIT went out, then the wait gave up after 100 us.
        assert_eq!(fake.now, 10_000 + 100);
        let (r, fake) = run(0, u32::MAX, &t);
        assert_eq!(r, ApStart::NoResponse);
        assert_eq!(fake.now, 10_400 + 1_000);
    }
}
