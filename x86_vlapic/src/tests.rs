//! Behaviour of the whole local APIC, checked against the Intel SDM Vol. 3A
//! chapter 11 (values after reset, register semantics, priorities, timer,
//! IPIs, x2APIC).

use axaddrspace::AccessWidth::{self, Byte, Dword, Qword, Word};

use crate::regs::{esr, offset as off};
use crate::*;

fn t(ns: u64) -> ApicTime {
    ApicTime::from_ns(ns)
}

fn apic(id: u32) -> VLocalApic {
    VLocalApic::new(VLocalApicConfig::new(id, id == 0)).unwrap()
}

/// An xAPIC-mode APIC, software-enabled with spurious vector 0xFF.
fn enabled(id: u32) -> VLocalApic {
    let mut a = apic(id);
    wr(&mut a, off::SVR, 0x1FF);
    a
}

fn x2(id: u32) -> VLocalApic {
    let mut a = enabled(id);
    a.write_msr(0x1B, 0xFEE0_0C00, t(0)).unwrap();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    a
}

fn rd(a: &mut VLocalApic, offset: u32) -> u32 {
    a.read_xapic(offset, Dword, t(0)).unwrap()
}

fn rd_at(a: &mut VLocalApic, offset: u32, ns: u64) -> u32 {
    a.read_xapic(offset, Dword, t(ns)).unwrap()
}

fn wr(a: &mut VLocalApic, offset: u32, v: u32) -> Option<ApicEvent> {
    a.write_xapic(offset, Dword, v, t(0)).unwrap()
}

fn wr_at(a: &mut VLocalApic, offset: u32, v: u32, ns: u64) -> Option<ApicEvent> {
    a.write_xapic(offset, Dword, v, t(ns)).unwrap()
}

/// Puts `vector` in service (accept + ack).
fn in_service(a: &mut VLocalApic, vector: u8) {
    assert!(a.accept_interrupt(vector));
    assert!(a.ack(vector));
}

const LVT_OFFSETS: [u32; 7] = [
    off::LVT_CMCI,
    off::LVT_TIMER,
    off::LVT_THERMAL,
    off::LVT_PERFMON,
    off::LVT_LINT0,
    off::LVT_LINT1,
    off::LVT_ERROR,
];

// ---------------------------------------------------------------- reset

#[test]
fn xapic_reset_values_sdm_11_4_7_1() {
    let mut a = apic(3);
    assert_eq!(a.apic_base().bits(), 0xFEE0_0800);
    assert_eq!(apic(0).apic_base().bits(), 0xFEE0_0900);
    assert_eq!(a.mode(), ApicMode::XApic);
    let expected = [
        (off::ID, 0x0300_0000),
        (off::VERSION, 0x0006_0014),
        (off::TPR, 0),
        (off::APR, 0),
        (off::PPR, 0),
        (off::RRD, 0),
        (off::LDR, 0),
        (off::DFR, 0xFFFF_FFFF),
        (off::SVR, 0xFF),
        (off::ESR, 0),
        (off::ICR_LOW, 0),
        (off::ICR_HIGH, 0),
        (off::TIMER_INITIAL_COUNT, 0),
        (off::TIMER_CURRENT_COUNT, 0),
        (off::TIMER_DIVIDE_CONFIG, 0),
    ];
    for (o, v) in expected {
        assert_eq!(rd(&mut a, o), v, "offset {o:#x}");
    }
    for i in 0..8 {
        assert_eq!(rd(&mut a, off::ISR0 + 0x10 * i), 0);
        assert_eq!(rd(&mut a, off::TMR0 + 0x10 * i), 0);
        assert_eq!(rd(&mut a, off::IRR0 + 0x10 * i), 0);
    }
    for o in LVT_OFFSETS {
        assert_eq!(rd(&mut a, o), 0x0001_0000, "LVT {o:#x}");
    }
    // SVR bit 8 clear: software-disabled after reset.
    assert!(!a.is_software_enabled());
    assert_eq!(a.timer_mode(), TimerMode::OneShot);
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn x2apic_reset_values_and_derived_ldr() {
    // x2APIC ID 0x123: cluster 0x12, bit 3 (SDM 11.12.10.2).
    let mut a = x2(0x123);
    let r = |a: &mut VLocalApic, m| a.read_x2apic_msr(m, t(0)).unwrap();
    assert_eq!(r(&mut a, 0x802), 0x123);
    assert_eq!(r(&mut a, 0x803), 0x0006_0014);
    assert_eq!(r(&mut a, 0x80D), 0x0012_0008);
    assert_eq!(r(&mut a, 0x808), 0);
    assert_eq!(r(&mut a, 0x80A), 0);
    assert_eq!(r(&mut a, 0x80F), 0x1FF);
    assert_eq!(r(&mut a, 0x830), 0);
    for m in 0x832..=0x837 {
        assert_eq!(r(&mut a, m), 0x1_0000, "{m:#x}");
    }
    assert_eq!(r(&mut a, 0x82F), 0x1_0000);
    assert_eq!(a.apic_id(), 0x123);
    // The xAPIC ID was only the low 8 bits.
    assert_eq!(apic(0x123).apic_id(), 0x23);
    // x2APIC ID 0x0F: cluster 0, bit 15.
    assert_eq!(x2(0xF).read_x2apic_msr(0x80D, t(0)), Ok(0x8000));
}

#[test]
fn config_validation() {
    let mut c = VLocalApicConfig::new(u32::MAX, false);
    assert!(matches!(VLocalApic::new(c), Err(Error::BadConfig(_))));
    c.apic_id = 1;
    c.bus_freq_hz = 0;
    assert!(matches!(VLocalApic::new(c), Err(Error::BadConfig(_))));
    c.bus_freq_hz = 1;
    c.max_phys_addr_bits = 60;
    assert!(matches!(VLocalApic::new(c), Err(Error::BadConfig(_))));
}

// ---------------------------------------------------- access checks

#[test]
fn read_only_registers_reject_writes() {
    let mut a = enabled(1);
    let mut ro = vec![
        off::VERSION,
        off::APR,
        off::PPR,
        off::RRD,
        off::TIMER_CURRENT_COUNT,
    ];
    for i in 0..8 {
        ro.extend([
            off::ISR0 + 0x10 * i,
            off::TMR0 + 0x10 * i,
            off::IRR0 + 0x10 * i,
        ]);
    }
    for o in ro {
        let before = rd(&mut a, o);
        let reg = ApicRegister::from_xapic_offset(o).unwrap();
        assert_eq!(
            a.write_xapic(o, Dword, 0xFFFF_FFFF, t(0)),
            Err(Error::ReadOnly { reg }),
            "{o:#x}"
        );
        assert_eq!(rd(&mut a, o), before);
    }
    assert_eq!(rd(&mut a, off::VERSION), 0x0006_0014);
}

#[test]
fn write_only_registers_reject_reads() {
    let mut a = enabled(1);
    assert_eq!(
        a.read_xapic(off::EOI, Dword, t(0)),
        Err(Error::WriteOnly {
            reg: ApicRegister::Eoi
        })
    );
    let mut b = x2(1);
    assert_eq!(
        b.read_x2apic_msr(0x83F, t(0)),
        Err(Error::WriteOnly {
            reg: ApicRegister::SelfIpi
        })
    );
    assert_eq!(
        b.read_x2apic_msr(0x80B, t(0)),
        Err(Error::WriteOnly {
            reg: ApicRegister::Eoi
        })
    );
}

#[test]
fn xapic_reserved_bits_are_dropped() {
    let mut a = enabled(1);
    let cases = [
        (off::ID, 0xFFFF_FFFF, 0xFF00_0000),
        (off::TPR, 0xFFFF_FFFF, 0xFF),
        (off::LDR, 0xFFFF_FFFF, 0xFF00_0000),
        (off::DFR, 0x0000_0000, 0x0FFF_FFFF),
        (off::DFR, 0xF000_0000, 0xFFFF_FFFF),
        (off::SVR, 0xFFFF_FFFF, 0x3FF),
        (off::ICR_HIGH, 0xFFFF_FFFF, 0xFF00_0000),
        (off::TIMER_DIVIDE_CONFIG, 0xFFFF_FFFF, 0xB),
        (off::LVT_LINT0, 0xFFFF_FFFF, 0x1_A7FF),
        (off::LVT_LINT1, 0xFFFF_FFFF, 0x1_A7FF),
        (off::LVT_ERROR, 0xFFFF_FFFF, 0x1_00FF),
        (off::LVT_THERMAL, 0xFFFF_FFFF, 0x1_07FF),
        (off::LVT_PERFMON, 0xFFFF_FFFF, 0x1_07FF),
        (off::LVT_CMCI, 0xFFFF_FFFF, 0x1_07FF),
        // Timer mode 00b with every other bit set.
        (off::LVT_TIMER, 0xFFF9_FFFF, 0x1_00FF),
    ];
    for (o, v, expect) in cases {
        wr(&mut a, o, v);
        assert_eq!(rd(&mut a, o), expect, "{o:#x} <- {v:#x}");
    }
    // Timer mode 11b is reserved.
    assert_eq!(
        a.write_xapic(off::LVT_TIMER, Dword, 0x600F0, t(0)),
        Err(Error::ReservedBits {
            reg: ApicRegister::Lvt(Lvt::Timer),
            value: 0x600F0
        })
    );
    // ICR low: delivery status (bit 12) reads 0 (idle), reserved bits 0.
    wr(&mut a, off::ICR_HIGH, 0x0200_0000);
    // Fixed, no shorthand; bits 31:20, 17:16 and 13 reserved, 12 read-only.
    let ev = wr(&mut a, off::ICR_LOW, 0xFFF3_F8F0);
    assert!(matches!(ev, Some(ApicEvent::Ipi(_))));
    assert_eq!(rd(&mut a, off::ICR_LOW), 0x0000_C8F0);
}

#[test]
fn x2apic_reserved_bits_fault() {
    let mut a = x2(1);
    let w = |a: &mut VLocalApic, m: u32, v: u64| a.write_x2apic_msr(m, v, t(0));
    let rsvd = |m: u32, v: u64| {
        Err(Error::ReservedBits {
            reg: ApicRegister::from_x2apic_msr(m).unwrap(),
            value: v,
        })
    };
    assert_eq!(w(&mut a, 0x808, 0x100), rsvd(0x808, 0x100));
    assert_eq!(w(&mut a, 0x808, 1 << 32), rsvd(0x808, 1 << 32));
    assert_eq!(w(&mut a, 0x80F, 0x11FF), rsvd(0x80F, 0x11FF));
    assert_eq!(w(&mut a, 0x83E, 0x4), rsvd(0x83E, 0x4));
    assert_eq!(w(&mut a, 0x832, 0x800F0), rsvd(0x832, 0x800F0));
    assert_eq!(w(&mut a, 0x837, 0x700F2), rsvd(0x837, 0x700F2));
    assert_eq!(w(&mut a, 0x83F, 0x1F0), rsvd(0x83F, 0x1F0));
    // Non-zero writes to EOI and ESR fault (SDM Table 11-6).
    assert_eq!(w(&mut a, 0x80B, 1), rsvd(0x80B, 1));
    assert_eq!(w(&mut a, 0x828, 1), rsvd(0x828, 1));
    // ICR bit 13 is reserved; bit 12 (delivery status) is ignored.
    assert_eq!(w(&mut a, 0x830, 0x20F0), rsvd(0x830, 0x20F0));
    assert!(w(&mut a, 0x830, 0x0000_0002_0000_10F0).is_ok());
    // ID and LDR are read-only in x2APIC mode.
    assert_eq!(
        w(&mut a, 0x802, 5),
        Err(Error::ReadOnly {
            reg: ApicRegister::Id
        })
    );
    assert_eq!(
        w(&mut a, 0x80D, 5),
        Err(Error::ReadOnly {
            reg: ApicRegister::Ldr
        })
    );
    // Nothing changed.
    assert_eq!(a.read_x2apic_msr(0x808, t(0)), Ok(0));
    assert_eq!(a.read_x2apic_msr(0x80F, t(0)), Ok(0x1FF));
    // Valid writes go through.
    assert_eq!(w(&mut a, 0x808, 0x20), Ok(None));
    assert_eq!(a.read_x2apic_msr(0x808, t(0)), Ok(0x20));
    // LINT0 with read-only remote IRR and delivery status bits: accepted.
    assert_eq!(w(&mut a, 0x835, 0x5700), Ok(None));
    assert_eq!(a.read_x2apic_msr(0x835, t(0)), Ok(0x700));
}

#[test]
fn bad_widths_and_offsets() {
    let mut a = enabled(1);
    for (o, w) in [
        (off::TPR, Byte),
        (off::TPR, Word),
        (off::TPR, Qword),
        (off::TPR + 4, Dword),
        (off::TPR + 1, Byte),
    ] {
        assert_eq!(
            a.read_xapic(o, w, t(0)),
            Err(Error::BadWidth {
                offset: o,
                size: w.size()
            })
        );
        assert!(matches!(
            a.write_xapic(o, w, 1, t(0)),
            Err(Error::BadWidth { .. })
        ));
    }
    assert_eq!(rd(&mut a, off::TPR), 0);
    assert_eq!(
        a.read_xapic(0x1000, Dword, t(0)),
        Err(Error::BadOffset { offset: 0x1000 })
    );
    // No error logged for width faults.
    wr(&mut a, off::ESR, 0);
    assert_eq!(rd(&mut a, off::ESR), 0);
}

#[test]
fn wrong_interface_for_mode() {
    let mut a = enabled(1);
    assert_eq!(a.read_x2apic_msr(0x802, t(0)), Err(Error::NotInX2ApicMode));
    assert_eq!(
        a.write_x2apic_msr(0x808, 0, t(0)),
        Err(Error::NotInX2ApicMode)
    );
    assert_eq!(a.read_msr(0x830, t(0)), Err(Error::NotInX2ApicMode));
    let mut b = x2(1);
    assert_eq!(
        b.read_xapic(off::ID, Dword, t(0)),
        Err(Error::NotInXApicMode)
    );
    assert_eq!(b.read_msr(0x10, t(0)), Err(Error::BadMsr { msr: 0x10 }));
    assert!(VLocalApic::handles_msr(0x1B));
    assert!(VLocalApic::handles_msr(0x6E0));
    assert!(VLocalApic::handles_msr(0x83F));
    assert!(!VLocalApic::handles_msr(0x10));
}

// -------------------------------------------------------- priorities

#[test]
fn ppr_table_sdm_11_8_3_1() {
    // (TPR, in-service vector, PPR)
    let table: [(u32, Option<u8>, u32); 8] = [
        (0x00, None, 0x00),
        (0x35, None, 0x35),
        (0x35, Some(0x20), 0x35),
        (0x35, Some(0x3F), 0x35), // same class: TPR wins (>=)
        (0x35, Some(0x41), 0x40),
        (0x00, Some(0xF3), 0xF0),
        (0xFF, Some(0xF3), 0xFF),
        (0x4F, Some(0x90), 0x90),
    ];
    for (tpr, isrv, ppr) in table {
        let mut a = enabled(1);
        if let Some(v) = isrv {
            in_service(&mut a, v);
        }
        wr(&mut a, off::TPR, tpr);
        assert_eq!(rd(&mut a, off::PPR), ppr, "TPR {tpr:#x} ISRV {isrv:x?}");
        assert_eq!(a.ppr() as u32, ppr);
    }
}

#[test]
fn apr_follows_tpr_irr_isr() {
    let mut a = enabled(1);
    wr(&mut a, off::TPR, 0x35);
    assert_eq!(rd(&mut a, off::APR), 0x35);
    a.accept_interrupt(0x62);
    // TPR class 3 < IRRV class 6.
    assert_eq!(rd(&mut a, off::APR), 0x60);
    let mut b = enabled(1);
    wr(&mut b, off::TPR, 0x35);
    in_service(&mut b, 0x31);
    // TPR class is not above ISRV class.
    assert_eq!(rd(&mut b, off::APR), 0x30);
}

#[test]
fn irr_isr_priority_ordering_and_eoi() {
    let mut a = enabled(1);
    for v in [0x31, 0x45, 0x40, 0x80] {
        assert!(a.accept_interrupt(v));
    }
    assert_eq!(rd(&mut a, off::IRR0 + 0x10), 1 << 17); // 0x31
    assert_eq!(rd(&mut a, off::IRR0 + 0x20), (1 << 5) | 1); // 0x45, 0x40
    assert_eq!(rd(&mut a, off::IRR0 + 0x40), 1); // 0x80
    assert_eq!(a.highest_pending(), Some(0x80));
    assert!(a.ack(0x80));
    assert_eq!(rd(&mut a, off::ISR0 + 0x40), 1);
    assert_eq!(rd(&mut a, off::IRR0 + 0x40), 0);
    // 0x45 is below the in-service class 8.
    assert_eq!(a.highest_pending(), None);
    // Higher class preempts.
    a.accept_interrupt(0x91);
    assert_eq!(a.highest_pending(), Some(0x91));
    assert!(a.ack(0x91));
    assert_eq!(rd(&mut a, off::PPR), 0x90);
    // EOI clears the highest ISR bit first.
    assert_eq!(
        wr(&mut a, off::EOI, 0),
        Some(ApicEvent::Eoi {
            vector: 0x91,
            trigger: TriggerMode::Edge
        })
    );
    assert!(a.isr_bit(0x80) && !a.isr_bit(0x91));
    assert_eq!(
        a.eoi(),
        Some(ApicEvent::Eoi {
            vector: 0x80,
            trigger: TriggerMode::Edge
        })
    );
    assert_eq!(a.highest_pending(), Some(0x45));
    assert!(a.ack(0x45));
    // 0x40 is the same class as 0x45 in service: blocked.
    assert_eq!(a.highest_pending(), None);
    a.eoi();
    assert_eq!(a.highest_pending(), Some(0x40));
    // Nothing in service: EOI is a no-op.
    let mut b = enabled(1);
    assert_eq!(wr(&mut b, off::EOI, 0), None);
    assert!(!b.ack(0x40));
}

#[test]
fn tpr_masks_low_classes() {
    let mut a = enabled(1);
    a.accept_interrupt(0x45);
    wr(&mut a, off::TPR, 0x50);
    assert_eq!(a.highest_pending(), None);
    wr(&mut a, off::TPR, 0x4F);
    assert_eq!(a.highest_pending(), None);
    wr(&mut a, off::TPR, 0x3F);
    assert_eq!(a.highest_pending(), Some(0x45));
    // CR8 is TPR[7:4].
    a.set_cr8(5).unwrap();
    assert_eq!(rd(&mut a, off::TPR), 0x50);
    assert_eq!(a.cr8(), 5);
    assert_eq!(a.highest_pending(), None);
    assert!(a.set_cr8(0x10).is_err());
}

#[test]
fn level_triggered_interrupts_report_level_eoi() {
    let mut a = enabled(1);
    assert!(a.accept_interrupt_with_trigger(0x50, TriggerMode::Level));
    assert_eq!(rd(&mut a, off::TMR0 + 0x20), 1 << 16);
    assert!(a.tmr_bit(0x50));
    a.ack(0x50);
    assert_eq!(
        wr(&mut a, off::EOI, 0),
        Some(ApicEvent::Eoi {
            vector: 0x50,
            trigger: TriggerMode::Level
        })
    );
    // An edge acceptance clears the TMR bit again.
    a.accept_interrupt(0x50);
    assert!(!a.tmr_bit(0x50));
}

// --------------------------------------------------------------- ESR

#[test]
fn illegal_vector_sets_esr_bit_6_after_write() {
    let mut a = enabled(1);
    for v in 0..16 {
        assert!(!a.accept_interrupt(v));
        assert!(!a.irr_bit(v));
    }
    // Not visible until ESR is written (SDM 11.5.3).
    assert_eq!(rd(&mut a, off::ESR), 0);
    assert_eq!(a.pending_errors(), esr::RECEIVE_ILLEGAL_VECTOR);
    wr(&mut a, off::ESR, 0);
    assert_eq!(rd(&mut a, off::ESR), 0x40);
    // The value written does not matter; a second write clears.
    wr(&mut a, off::ESR, 0xFFFF_FFFF);
    assert_eq!(rd(&mut a, off::ESR), 0);
}

#[test]
fn esr_illegal_register_address_and_send_illegal_vector() {
    let mut a = enabled(1);
    assert_eq!(
        a.read_xapic(0x40, Dword, t(0)),
        Err(Error::BadOffset { offset: 0x40 })
    );
    assert!(a.write_xapic(0x3F0, Dword, 0x30, t(0)).is_err());
    // ICR fixed IPI with vector 5.
    wr(&mut a, off::ICR_HIGH, 0x0100_0000);
    assert_eq!(wr(&mut a, off::ICR_LOW, 0x0005), None);
    wr(&mut a, off::ESR, 0);
    assert_eq!(rd(&mut a, off::ESR), 0x80 | 0x20);
    // Start-up IPIs carry a page number, not a vector: no error.
    assert!(matches!(
        wr(&mut a, off::ICR_LOW, 0x0605),
        Some(ApicEvent::Ipi(_))
    ));
    wr(&mut a, off::ESR, 0);
    assert_eq!(rd(&mut a, off::ESR), 0);
}

#[test]
fn error_lvt_raises_interrupt_on_new_error() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_ERROR, 0xF2);
    a.accept_interrupt(3);
    assert!(a.irr_bit(0xF2));
    assert_eq!(a.highest_pending(), Some(0xF2));
    // Masked error LVT: logged, no interrupt.
    let mut b = enabled(1);
    wr(&mut b, off::LVT_ERROR, 0x100F2);
    b.accept_interrupt(3);
    assert!(!b.irr_bit(0xF2));
    assert_eq!(b.pending_errors(), 0x40);
}

// --------------------------------------------------------------- SVR

#[test]
fn software_disable_masks_lvts_and_blocks_delivery() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0x200F0);
    wr(&mut a, off::LVT_LINT0, 0x700);
    wr(&mut a, off::LVT_ERROR, 0xF2);
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0x200F0);
    a.accept_interrupt(0x40);
    wr(&mut a, off::SVR, 0xFF);
    assert!(!a.is_software_enabled());
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0x300F0);
    assert_eq!(rd(&mut a, off::LVT_LINT0), 0x10700);
    assert_eq!(rd(&mut a, off::LVT_ERROR), 0x100F2);
    for o in LVT_OFFSETS {
        assert_ne!(rd(&mut a, o) & 0x1_0000, 0);
    }
    // Clearing the mask is ignored while disabled.
    wr(&mut a, off::LVT_TIMER, 0xF1);
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0x100F1);
    // Delivery is blocked; IRR keeps what it had.
    assert!(!a.accept_interrupt(0x50));
    assert_eq!(a.highest_pending(), None);
    assert!(a.irr_bit(0x40));
    wr(&mut a, off::SVR, 0x1FF);
    assert_eq!(a.highest_pending(), Some(0x40));
    // Re-enabling does not unmask.
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0x100F1);
}

// ------------------------------------------------------------- timer

#[test]
fn divide_configuration_through_registers() {
    for (cfg, div) in [
        (0x0, 2),
        (0x1, 4),
        (0x2, 8),
        (0x3, 16),
        (0x8, 32),
        (0x9, 64),
        (0xA, 128),
        (0xB, 1),
    ] {
        let mut a = enabled(1);
        wr(&mut a, off::TIMER_DIVIDE_CONFIG, cfg);
        wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100_000, 1000);
        // 12_800 bus ticks later.
        assert_eq!(
            rd_at(&mut a, off::TIMER_CURRENT_COUNT, 1000 + 12_800),
            100_000 - 12_800 / div,
            "divide config {cfg:#x}"
        );
        assert_eq!(
            a.next_deadline(),
            None,
            "LVT timer masked at reset: no wake-up needed"
        );
    }
}

#[test]
fn one_shot_countdown_and_expiry() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0xF0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0x0); // divide by 2
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 1000, 10_000);
    // 500 bus ticks (ns at 1 GHz) later: 250 counts.
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 10_500), 750);
    assert_eq!(rd_at(&mut a, off::TIMER_INITIAL_COUNT, 10_500), 1000);
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(12_000)));
    assert_eq!(a.poll_timer(t(11_999)), None);
    assert!(!a.irr_bit(0xF0));
    assert_eq!(a.poll_timer(t(12_000)), Some(0xF0));
    assert!(a.irr_bit(0xF0));
    assert_eq!(a.highest_pending(), Some(0xF0));
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 12_001), 0);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(a.poll_timer(t(100_000)), None);
    // Re-arm by writing the initial count again (what NimbOS does).
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 10, 200_000);
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(200_020)));
}

#[test]
fn bus_frequency_is_configurable() {
    let mut c = VLocalApicConfig::new(0, true);
    c.bus_freq_hz = 25_000_000; // 40 ns per tick
    let mut a = VLocalApic::new(c).unwrap();
    wr(&mut a, off::SVR, 0x1FF);
    wr(&mut a, off::LVT_TIMER, 0xF0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 1000, 0);
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 4000), 900);
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(40_000)));
}

#[test]
fn periodic_timer_arceos_sequence() {
    let mut a = apic(0);
    // The order ArceOS programs it (GUESTS.md).
    wr(&mut a, off::LVT_TIMER, 0x100F0);
    wr(&mut a, off::LVT_ERROR, 0x100F2);
    wr(&mut a, off::SVR, 0x1F1);
    wr(&mut a, off::LVT_TIMER, 0x300F0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 10_000_000, 1_000);
    wr_at(&mut a, off::LVT_TIMER, 0x200F0, 2_000);
    assert_eq!(a.timer_mode(), TimerMode::Periodic);
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(10_001_000)));
    assert_eq!(
        rd_at(&mut a, off::TIMER_CURRENT_COUNT, 5_001_000),
        5_000_000
    );
    assert_eq!(a.poll_timer(t(10_001_000)), Some(0xF0));
    // Reloaded.
    assert_eq!(
        rd_at(&mut a, off::TIMER_CURRENT_COUNT, 10_001_000),
        10_000_000
    );
    assert_eq!(
        rd_at(&mut a, off::TIMER_CURRENT_COUNT, 10_001_100),
        9_999_900
    );
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(20_001_000)));
    a.ack(0xF0);
    a.eoi();
    assert_eq!(a.poll_timer(t(15_000_000)), None);
    assert_eq!(a.poll_timer(t(20_001_000)), Some(0xF0));
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(30_001_000)));
}

#[test]
fn masked_timer_expires_without_interrupt() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0x100F0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100, 0);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 50), 50);
    assert_eq!(a.poll_timer(t(200)), None);
    assert!(!a.irr_bit(0xF0));
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 200), 0);
    // Unmasking later does not replay the expiry.
    wr_at(&mut a, off::LVT_TIMER, 0xF0, 300);
    assert_eq!(a.poll_timer(t(400)), None);
    assert_eq!(a.next_deadline(), None);
    assert!(!a.irr_bit(0xF0));
}

#[test]
fn masked_expiry_settled_on_unmask() {
    // Expired while masked but never polled: the unmask write settles it.
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0x100F0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100, 0);
    wr_at(&mut a, off::LVT_TIMER, 0xF0, 500);
    assert_eq!(a.poll_timer(t(600)), None);
    assert!(!a.irr_bit(0xF0));
}

#[test]
fn zero_initial_count_stops_timer() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0x200F0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100, 0);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 0, 50);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 60), 0);
    assert_eq!(a.poll_timer(t(1_000)), None);
}

#[test]
fn timer_mode_change_disarms() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0xF0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100, 0);
    wr_at(&mut a, off::LVT_TIMER, 0x200F0, 10);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 20), 0);
    assert_eq!(a.poll_timer(t(1_000)), None);
    // Same mode, only the vector: keeps counting.
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 100, 1_000);
    wr_at(&mut a, off::LVT_TIMER, 0x200F1, 1_010);
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 1_020), 80);
    assert_eq!(a.poll_timer(t(1_100)), Some(0xF1));
}

#[test]
fn divide_change_while_counting() {
    let mut a = enabled(1);
    wr(&mut a, off::LVT_TIMER, 0xF0);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB); // /1
    wr_at(&mut a, off::TIMER_INITIAL_COUNT, 1000, 0);
    wr_at(&mut a, off::TIMER_DIVIDE_CONFIG, 0x3, 200); // /16 from count 800
    assert_eq!(rd_at(&mut a, off::TIMER_CURRENT_COUNT, 200 + 1600), 700);
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Ns(200 + 800 * 16)));
}

#[test]
fn tsc_deadline_mode() {
    let mut a = enabled(1);
    let now = |tsc| ApicTime::new(0, tsc);
    // Outside TSC-deadline mode the MSR reads 0 and ignores writes.
    a.write_msr(0x6E0, 5000, now(0)).unwrap();
    assert_eq!(a.read_msr(0x6E0, now(0)), Ok(0));
    wr(&mut a, off::LVT_TIMER, 0x400F0);
    assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
    a.write_msr(0x6E0, 5000, now(0)).unwrap();
    assert_eq!(a.read_msr(0x6E0, now(0)), Ok(5000));
    assert_eq!(a.next_deadline(), Some(TimerDeadline::Tsc(5000)));
    // Initial count is ignored and current count reads 0.
    wr(&mut a, off::TIMER_INITIAL_COUNT, 1234);
    assert_eq!(rd(&mut a, off::TIMER_INITIAL_COUNT), 0);
    assert_eq!(rd(&mut a, off::TIMER_CURRENT_COUNT), 0);
    assert_eq!(a.poll_timer(now(4999)), None);
    assert_eq!(a.poll_timer(now(5000)), Some(0xF0));
    // Fired: disarmed and the MSR cleared.
    assert_eq!(a.read_msr(0x6E0, now(5001)), Ok(0));
    assert_eq!(a.next_deadline(), None);
    assert_eq!(a.poll_timer(now(9000)), None);
    // A deadline in the past fires on the next poll.
    a.write_msr(0x6E0, 100, now(9000)).unwrap();
    assert_eq!(a.poll_timer(now(9000)), Some(0xF0));
    // 0 disarms.
    a.write_msr(0x6E0, 20_000, now(9000)).unwrap();
    a.write_msr(0x6E0, 0, now(9000)).unwrap();
    assert_eq!(a.poll_timer(now(30_000)), None);
    // Leaving TSC-deadline mode disarms and clears the deadline.
    a.write_msr(0x6E0, 40_000, now(30_000)).unwrap();
    wr(&mut a, off::LVT_TIMER, 0xF0);
    wr(&mut a, off::LVT_TIMER, 0x400F0);
    assert_eq!(a.read_msr(0x6E0, now(30_000)), Ok(0));
}

#[test]
fn tsc_deadline_not_offered() {
    let mut c = VLocalApicConfig::new(0, true);
    c.tsc_deadline = false;
    let mut a = VLocalApic::new(c).unwrap();
    wr(&mut a, off::SVR, 0x1FF);
    assert!(matches!(
        a.read_msr(0x6E0, t(0)),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        a.write_msr(0x6E0, 1, t(0)),
        Err(Error::Unsupported(_))
    ));
    // Bit 18 is then reserved: dropped in xAPIC mode.
    wr(&mut a, off::LVT_TIMER, 0x400F0);
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0xF0);
    assert_eq!(a.timer_mode(), TimerMode::OneShot);
}

// ---------------------------------------------------------- x2APIC

#[test]
fn x2apic_msr_register_mapping() {
    let mut a = x2(5);
    a.write_x2apic_msr(0x808, 0x20, t(0)).unwrap();
    assert_eq!(a.read_x2apic_msr(0x808, t(0)), Ok(0x20));
    // Timer through MSRs, as NimbOS would: 0x832, 0x83E, 0x838, 0x839.
    a.write_x2apic_msr(0x832, 0xF0, t(0)).unwrap();
    a.write_x2apic_msr(0x83E, 0xB, t(0)).unwrap();
    a.write_x2apic_msr(0x838, 1000, t(0)).unwrap();
    assert_eq!(a.read_x2apic_msr(0x839, t(400)), Ok(600));
    assert_eq!(
        a.write_x2apic_msr(0x839, 1, t(0)),
        Err(Error::ReadOnly {
            reg: ApicRegister::TimerCurrentCount
        })
    );
    // Registers that do not exist in x2APIC mode.
    for m in [0x809, 0x80C, 0x80E, 0x831, 0x840] {
        assert_eq!(a.read_x2apic_msr(m, t(0)), Err(Error::BadMsr { msr: m }));
    }
    // IRR through 0x820-0x827.
    a.accept_interrupt(0x41);
    assert_eq!(a.read_x2apic_msr(0x822, t(0)), Ok(2));
    // EOI through 0x80B.
    a.ack(0x41);
    assert_eq!(a.read_x2apic_msr(0x812, t(0)), Ok(2));
    assert_eq!(
        a.write_x2apic_msr(0x80B, 0, t(0)),
        Ok(Some(ApicEvent::Eoi {
            vector: 0x41,
            trigger: TriggerMode::Edge
        }))
    );
}

#[test]
fn x2apic_icr_is_one_64_bit_msr() {
    let mut a = x2(5);
    let icr = 0x0000_0123_0000_40FD; // fixed, physical, assert, vector 0xFD, dest 0x123
    let ev = a.write_x2apic_msr(0x830, icr, t(0)).unwrap();
    let Some(ApicEvent::Ipi(req)) = ev else {
        panic!("expected an IPI, got {ev:?}");
    };
    assert_eq!(req.dest, 0x123);
    assert_eq!(req.vector, 0xFD);
    assert_eq!(req.source, 5);
    assert!(req.x2apic && req.level);
    assert_eq!(req.delivery_mode, DeliveryMode::Fixed);
    assert_eq!(a.read_x2apic_msr(0x830, t(0)), Ok(icr));
}

#[test]
fn x2apic_self_ipi() {
    let mut a = x2(5);
    assert_eq!(a.write_x2apic_msr(0x83F, 0x55, t(0)), Ok(None));
    assert!(a.irr_bit(0x55));
    assert_eq!(a.highest_pending(), Some(0x55));
    // Illegal vector: logged, not delivered.
    assert_eq!(a.write_x2apic_msr(0x83F, 0x05, t(0)), Ok(None));
    assert!(!a.irr_bit(0x05));
    a.write_x2apic_msr(0x828, 0, t(0)).unwrap();
    assert_eq!(a.read_x2apic_msr(0x828, t(0)), Ok(0x20));
}

// ------------------------------------------------------- APIC base

#[test]
fn apic_base_mode_transitions() {
    let mut a = enabled(0x12);
    wr(&mut a, off::TPR, 0x30);
    assert_eq!(a.read_msr(0x1B, t(0)), Ok(0xFEE0_0800));
    // xAPIC -> x2APIC keeps other registers.
    a.write_msr(0x1B, 0xFEE0_0C00, t(0)).unwrap();
    assert_eq!(a.read_x2apic_msr(0x808, t(0)), Ok(0x30));
    assert_eq!(a.read_x2apic_msr(0x802, t(0)), Ok(0x12));
    // x2APIC -> xAPIC directly faults, nothing changes.
    assert_eq!(
        a.write_msr(0x1B, 0xFEE0_0800, t(0)),
        Err(Error::InvalidTransition {
            from: 0xFEE0_0C00,
            to: 0xFEE0_0800
        })
    );
    assert_eq!(a.mode(), ApicMode::X2Apic);
    // x2APIC -> disabled: registers reset, the APIC refuses interrupts.
    a.write_msr(0x1B, 0xFEE0_0000, t(0)).unwrap();
    assert_eq!(a.mode(), ApicMode::Disabled);
    assert_eq!(
        a.read_xapic(off::TPR, Dword, t(0)),
        Err(Error::NotInXApicMode)
    );
    assert!(!a.accept_interrupt(0x40));
    // disabled -> x2APIC faults.
    assert!(matches!(
        a.write_msr(0x1B, 0xFEE0_0C00, t(0)),
        Err(Error::InvalidTransition { .. })
    ));
    // disabled -> xAPIC: power-up register values, same ID.
    a.write_msr(0x1B, 0xFEE0_0800, t(0)).unwrap();
    assert_eq!(rd(&mut a, off::TPR), 0);
    assert_eq!(rd(&mut a, off::SVR), 0xFF);
    assert_eq!(rd(&mut a, off::DFR), 0xFFFF_FFFF);
    assert_eq!(rd(&mut a, off::LVT_TIMER), 0x1_0000);
    assert_eq!(rd(&mut a, off::ID), 0x1200_0000);
    // Reserved bits of IA32_APIC_BASE.
    assert_eq!(
        a.write_msr(0x1B, 0xFEE0_0801, t(0)),
        Err(Error::ApicBaseReservedBits { value: 0xFEE0_0801 })
    );
}

#[test]
fn x2apic_not_offered() {
    let mut c = VLocalApicConfig::new(0, true);
    c.x2apic = false;
    let mut a = VLocalApic::new(c).unwrap();
    assert!(matches!(
        a.write_msr(0x1B, 0xFEE0_0D00, t(0)),
        Err(Error::ApicBaseReservedBits { .. })
    ));
    assert_eq!(a.mode(), ApicMode::XApic);
}

#[test]
fn init_keeps_id_and_mode() {
    let mut a = x2(0x40);
    a.write_x2apic_msr(0x808, 0x30, t(0)).unwrap();
    a.accept_interrupt(0x50);
    a.init();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(a.read_x2apic_msr(0x802, t(0)), Ok(0x40));
    assert_eq!(a.read_x2apic_msr(0x808, t(0)), Ok(0));
    assert_eq!(a.read_x2apic_msr(0x80F, t(0)), Ok(0xFF));
    assert!(!a.irr_bit(0x50));
    // xAPIC: a software-changed ID survives INIT, not RESET.
    let mut b = enabled(1);
    wr(&mut b, off::ID, 0x0700_0000);
    b.init();
    assert_eq!(rd(&mut b, off::ID), 0x0700_0000);
    b.reset();
    assert_eq!(rd(&mut b, off::ID), 0x0100_0000);
}

// --------------------------------------------------------------- IPIs

#[test]
fn icr_init_and_sipi_from_xapic() {
    let mut a = enabled(0);
    wr(&mut a, off::ICR_HIGH, 0x0100_0000);
    // Linux wakeup_secondary_cpu_via_init: INIT assert, level.
    let Some(ApicEvent::Ipi(init)) = wr(&mut a, off::ICR_LOW, 0xC500) else {
        panic!("INIT expected");
    };
    assert_eq!(init.delivery_mode, DeliveryMode::Init);
    assert_eq!(init.dest, 1);
    assert_eq!(init.dest_mode, DestinationMode::Physical);
    assert_eq!(init.shorthand, Shorthand::None);
    assert!(!init.is_init_level_deassert());
    let Some(ApicEvent::Ipi(deassert)) = wr(&mut a, off::ICR_LOW, 0x8500) else {
        panic!("INIT de-assert expected");
    };
    assert!(deassert.is_init_level_deassert());
    // Start-up at 0x9A000.
    let Some(ApicEvent::Ipi(sipi)) = wr(&mut a, off::ICR_LOW, 0x069A) else {
        panic!("SIPI expected");
    };
    assert_eq!(sipi.delivery_mode, DeliveryMode::StartUp);
    assert_eq!(sipi.vector, 0x9A);
    assert_eq!(sipi.startup_address(), Some(0x9A000));
    assert_eq!(sipi.dest, 1);
    // Delivery status reads idle.
    assert_eq!(rd(&mut a, off::ICR_LOW), 0x069A);
    // Reserved delivery mode 011b.
    assert_eq!(
        a.write_xapic(off::ICR_LOW, Dword, 0x0340, t(0)),
        Err(Error::ReservedDeliveryMode { mode: 3 })
    );
}

#[test]
fn self_ipi_shorthand_is_delivered_locally() {
    let mut a = enabled(2);
    // Fixed, shorthand self, vector 0xF5.
    assert_eq!(wr(&mut a, off::ICR_LOW, 0x4_00F5), None);
    assert!(a.irr_bit(0xF5));
    // NMI to self goes to the VM (it bypasses the IRR).
    let Some(ApicEvent::Ipi(nmi)) = wr(&mut a, off::ICR_LOW, 0x4_0400) else {
        panic!("NMI expected");
    };
    assert_eq!(nmi.delivery_mode, DeliveryMode::Nmi);
    assert_eq!(nmi.shorthand, Shorthand::SelfOnly);
    // All-excluding-self goes to the VM.
    let Some(ApicEvent::Ipi(all)) = wr(&mut a, off::ICR_LOW, 0xC_00FD) else {
        panic!("broadcast expected");
    };
    assert_eq!(all.shorthand, Shorthand::AllExcludingSelf);
    assert_eq!(all.source, 2);
    assert!(!a.is_destination(&all, true));
    assert!(enabled(3).is_destination(&all, false));
}

fn req(dest: u32, mode: DestinationMode, x2apic: bool) -> IpiRequest {
    IpiRequest {
        source: 0,
        dest,
        dest_mode: mode,
        shorthand: Shorthand::None,
        delivery_mode: DeliveryMode::Fixed,
        vector: 0x40,
        level: true,
        trigger: TriggerMode::Edge,
        x2apic,
    }
}

#[test]
fn destination_matching_sdm_11_6_2() {
    use DestinationMode::*;
    let mut a = enabled(3);
    assert!(a.is_destination(&req(3, Physical, false), false));
    assert!(!a.is_destination(&req(4, Physical, false), false));
    assert!(a.is_destination(&req(0xFF, Physical, false), false));
    // Flat model: LDR logical ID 0x01, MDA with bit 0.
    wr(&mut a, off::LDR, 0x0100_0000);
    assert!(a.is_destination(&req(0x03, Logical, false), false));
    assert!(!a.is_destination(&req(0x02, Logical, false), false));
    // Cluster model: cluster 2, member bit 0.
    wr(&mut a, off::DFR, 0x0FFF_FFFF);
    wr(&mut a, off::LDR, 0x2100_0000);
    assert!(a.is_destination(&req(0x21, Logical, false), false));
    assert!(a.is_destination(&req(0x23, Logical, false), false));
    assert!(!a.is_destination(&req(0x22, Logical, false), false));
    assert!(!a.is_destination(&req(0x11, Logical, false), false));
    // x2APIC: ID 0x23 -> LDR 0x0002_0008.
    let b = x2(0x23);
    assert!(b.is_destination(&req(0x23, Physical, true), false));
    assert!(b.is_destination(&req(u32::MAX, Physical, true), false));
    assert!(b.is_destination(&req(0x0002_0008, Logical, true), false));
    assert!(b.is_destination(&req(0x0002_000C, Logical, true), false));
    assert!(!b.is_destination(&req(0x0003_0008, Logical, true), false));
    assert!(!b.is_destination(&req(0x0002_0004, Logical, true), false));
    // Shorthands.
    let mut s = req(0, Physical, false);
    s.shorthand = Shorthand::SelfOnly;
    assert!(a.is_destination(&s, true) && !a.is_destination(&s, false));
    s.shorthand = Shorthand::AllIncludingSelf;
    assert!(a.is_destination(&s, true) && a.is_destination(&s, false));
    // A globally disabled APIC is nobody's destination.
    let mut d = apic(3);
    d.write_apic_base(0xFEE0_0000).unwrap();
    assert!(!d.is_destination(&req(3, Physical, false), false));
}

#[test]
fn all_widths_are_typed() {
    // Every width other than Dword is refused with its size.
    let mut a = enabled(0);
    for w in [Byte, Word, Qword] {
        let e = a.read_xapic(off::ID, w, t(0)).unwrap_err();
        assert_eq!(
            e,
            Error::BadWidth {
                offset: off::ID,
                size: AccessWidth::size(w)
            }
        );
    }
}

/// The sequence of the `timer` test guest (guests/src/bin/timer.rs) after
/// its xAPIC part: BSP at reset, switched to x2APIC by setting EXTD.
#[test]
fn bsp_switch_to_x2apic_as_the_timer_guest_does() {
    let mut a = apic(0);
    wr(&mut a, off::SVR, 0x1FF);
    wr(&mut a, off::TIMER_DIVIDE_CONFIG, 0xB);
    let version = rd(&mut a, off::VERSION);
    assert_eq!(version, 0x0006_0014);
    // EN | BSP, then EN | EXTD | BSP (SDM 11.12.1: bit 10 enables x2APIC).
    assert_eq!(a.read_msr(0x1B, t(0)), Ok(0xFEE0_0900));
    a.write_msr(0x1B, 0xFEE0_0D00, t(0)).unwrap();
    assert_eq!(a.read_msr(0x1B, t(0)), Ok(0xFEE0_0D00));
    assert_eq!(a.mode(), ApicMode::X2Apic);
    // ID, version, LDR (cluster 0, bit 0), SVR kept from xAPIC mode.
    assert_eq!(a.read_msr(0x802, t(0)), Ok(0));
    assert_eq!(a.read_msr(0x803, t(0)), Ok(u64::from(version)));
    assert_eq!(a.read_msr(0x80D, t(0)), Ok(1));
    assert_eq!(a.read_msr(0x80F, t(0)), Ok(0x1FF));
    assert_eq!(a.read_msr(0x83E, t(0)), Ok(0xB));
    // One-shot at 0xF0 for 20 M ticks (20 ms at 1 GHz, divide by 1).
    a.write_msr(0x832, 0xF0, t(1000)).unwrap();
    a.write_msr(0x838, 20_000_000, t(1000)).unwrap();
    assert_eq!(a.read_msr(0x839, t(57_086)), Ok(19_943_914));
    assert_eq!(a.read_msr(0x839, t(138_177)), Ok(19_862_823));
    assert_eq!(a.poll_timer(t(20_000_999)), None);
    assert_eq!(a.poll_timer(t(20_001_000)), Some(0xF0));
    assert_eq!(a.read_msr(0x839, t(20_001_000)), Ok(0));
    assert!(a.ack(0xF0));
    assert!(matches!(
        a.write_msr(0x80B, 0, t(20_002_000)),
        Ok(Some(ApicEvent::Eoi { vector: 0xF0, .. }))
    ));
    // Self-IPI 0xE0: IRR7 (0x827) bit 0 until acknowledged, then ISR7
    // (0x817) until the EOI.
    assert_eq!(a.write_msr(0x83F, 0xE0, t(0)), Ok(None));
    assert_eq!(a.read_msr(0x827, t(0)), Ok(1));
    assert_eq!(a.read_msr(0x817, t(0)), Ok(0));
    assert_eq!(a.highest_pending(), Some(0xE0));
    assert!(a.ack(0xE0));
    assert_eq!(
        (a.read_msr(0x827, t(0)), a.read_msr(0x817, t(0))),
        (Ok(0), Ok(1))
    );
    a.write_msr(0x80B, 0, t(0)).unwrap();
    assert_eq!(a.read_msr(0x817, t(0)), Ok(0));
    // The xAPIC page is not the APIC any more (SDM 11.12.1.2): refused,
    // and a write to the TPR there changes nothing.
    assert_eq!(
        a.read_xapic(off::VERSION, Dword, t(0)),
        Err(Error::NotInXApicMode)
    );
    assert_eq!(
        a.write_xapic(off::TPR, Dword, 0x20, t(0)),
        Err(Error::NotInXApicMode)
    );
    assert_eq!(a.read_msr(0x808, t(0)), Ok(0));
}

#[test]
fn quiet_only_without_requests_and_armed_timer() {
    let mut a = enabled(0);
    assert!(a.is_quiet(), "enabled, timer idle, IRR empty");
    // One-shot armed (LVT timer vector 0xF0, divide by 1, initial count).
    wr(&mut a, 0x3e0, 0xb);
    wr(&mut a, 0x320, 0xf0);
    wr_at(&mut a, 0x380, 1000, 0);
    assert!(!a.is_quiet(), "a countdown runs");
    // Expired: the vector waits in the IRR.
    assert_eq!(a.poll_timer(t(1_000_000_000)), Some(0xf0));
    assert!(!a.is_quiet(), "IRR holds 0xF0");
    assert!(a.ack(0xf0));
    assert!(a.is_quiet(), "delivered; one-shot over");
    // Initial count 0 stops the timer: quiet again.
    wr_at(&mut a, 0x380, 1000, 0);
    wr_at(&mut a, 0x380, 0, 0);
    assert!(a.is_quiet());
}
