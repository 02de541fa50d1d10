//! Register map of the local APIC (Intel SDM Vol. 3A, Tables 11-1 and 11-6).

/// MMIO offsets of the xAPIC registers within the 4 KiB APIC page
/// (SDM Table 11-1). Every register is 32 bits wide at a 16-byte aligned
/// offset.
pub mod offset {
    /// Local APIC ID.
    pub const ID: u32 = 0x020;
    /// Local APIC version.
    pub const VERSION: u32 = 0x030;
    /// Task priority register (TPR).
    pub const TPR: u32 = 0x080;
    /// Arbitration priority register (APR).
    pub const APR: u32 = 0x090;
    /// Processor priority register (PPR).
    pub const PPR: u32 = 0x0A0;
    /// End of interrupt (EOI).
    pub const EOI: u32 = 0x0B0;
    /// Remote read register (RRD).
    pub const RRD: u32 = 0x0C0;
    /// Logical destination register (LDR).
    pub const LDR: u32 = 0x0D0;
    /// Destination format register (DFR), xAPIC only.
    pub const DFR: u32 = 0x0E0;
    /// Spurious interrupt vector register (SVR).
    pub const SVR: u32 = 0x0F0;
    /// In-service register, bits 31:0 (then `+ 0x10 * i` for i in 0..8).
    pub const ISR0: u32 = 0x100;
    /// Trigger mode register, bits 31:0 (then `+ 0x10 * i`).
    pub const TMR0: u32 = 0x180;
    /// Interrupt request register, bits 31:0 (then `+ 0x10 * i`).
    pub const IRR0: u32 = 0x200;
    /// Error status register (ESR).
    pub const ESR: u32 = 0x280;
    /// LVT corrected machine check interrupt (CMCI).
    pub const LVT_CMCI: u32 = 0x2F0;
    /// Interrupt command register, bits 31:0.
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt command register, bits 63:32 (xAPIC only).
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance monitoring counters.
    pub const LVT_PERFMON: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL_COUNT: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT_COUNT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE_CONFIG: u32 = 0x3E0;
    /// SELF IPI (exists only as x2APIC MSR 0x83F).
    pub const SELF_IPI: u32 = 0x3F0;
}

/// MSR indices the local APIC answers.
pub mod msr {
    /// `IA32_APIC_BASE`.
    pub const IA32_APIC_BASE: u32 = 0x1B;
    /// `IA32_TSC_DEADLINE`.
    pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
    /// First MSR of the x2APIC range.
    pub const X2APIC_FIRST: u32 = 0x800;
    /// Last MSR of the x2APIC range (0x840..=0x8FF are reserved).
    pub const X2APIC_LAST: u32 = 0x8FF;
    /// x2APIC interrupt command register (64 bits).
    pub const X2APIC_ICR: u32 = 0x830;
    /// x2APIC SELF IPI.
    pub const X2APIC_SELF_IPI: u32 = 0x83F;
}

/// Error status register bits (SDM Figure 11-9).
pub mod esr {
    /// Send checksum error (P6 and Pentium only; never set here).
    pub const SEND_CHECKSUM: u32 = 1 << 0;
    /// Receive checksum error (never set here).
    pub const RECEIVE_CHECKSUM: u32 = 1 << 1;
    /// Send accept error (never set here).
    pub const SEND_ACCEPT: u32 = 1 << 2;
    /// Receive accept error (never set here).
    pub const RECEIVE_ACCEPT: u32 = 1 << 3;
    /// Redirectable IPI (never set here).
    pub const REDIRECTABLE_IPI: u32 = 1 << 4;
    /// Send illegal vector: an IPI with a vector 0-15 was sent.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// Received illegal vector: an interrupt with a vector 0-15 arrived.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// Illegal register address: xAPIC access to a reserved offset.
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

/// The local vector table entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lvt {
    /// Corrected machine check interrupt (0x2F0).
    Cmci,
    /// APIC timer (0x320).
    Timer,
    /// Thermal sensor (0x330).
    Thermal,
    /// Performance monitoring counters (0x340).
    PerfMon,
    /// LINT0 pin (0x350).
    Lint0,
    /// LINT1 pin (0x360).
    Lint1,
    /// APIC internal error (0x370).
    Error,
}

impl Lvt {
    /// All LVT entries, in index order.
    pub const ALL: [Lvt; 7] = [
        Lvt::Cmci,
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::PerfMon,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
    ];

    /// Mask bit (bit 16) of every LVT entry.
    pub const MASK: u32 = 1 << 16;
    /// Delivery status bit (bit 12), read-only; always 0 (idle) here.
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    /// Remote IRR bit (bit 14) of LINT0/LINT1, read-only.
    pub const REMOTE_IRR: u32 = 1 << 14;
    /// Value after reset: everything 0 except the mask bit (SDM 11.4.7.1).
    pub const RESET_VALUE: u32 = Self::MASK;

    /// Index 0..7 of this entry in [`Lvt::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// xAPIC MMIO offset of this entry.
    pub const fn offset(self) -> u32 {
        match self {
            Lvt::Cmci => offset::LVT_CMCI,
            Lvt::Timer => offset::LVT_TIMER,
            Lvt::Thermal => offset::LVT_THERMAL,
            Lvt::PerfMon => offset::LVT_PERFMON,
            Lvt::Lint0 => offset::LVT_LINT0,
            Lvt::Lint1 => offset::LVT_LINT1,
            Lvt::Error => offset::LVT_ERROR,
        }
    }

    /// Bits software may write (SDM Figure 11-8). The timer's mode field
    /// (bits 18:17) is included; the caller refuses mode 11b and, when the
    /// TSC-deadline timer is not offered, bit 18.
    pub const fn writable_mask(self) -> u32 {
        match self {
            // vector 7:0, mask 16, timer mode 18:17
            Lvt::Timer => 0x0007_00FF,
            // vector, delivery mode 10:8, mask
            Lvt::Cmci | Lvt::Thermal | Lvt::PerfMon => 0x0001_07FF,
            // vector, delivery mode, polarity 13, trigger mode 15, mask
            Lvt::Lint0 | Lvt::Lint1 => 0x0001_A7FF,
            // vector, mask
            Lvt::Error => 0x0001_00FF,
        }
    }

    /// Read-only bits: writing them is not a reserved-bit violation, the
    /// written value is simply dropped.
    pub const fn read_only_mask(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => Self::DELIVERY_STATUS | Self::REMOTE_IRR,
            _ => Self::DELIVERY_STATUS,
        }
    }
}

/// One register of the local APIC.
///
/// `Isr`, `Tmr` and `Irr` carry the index 0..=7 of their 32-bit slice
/// (slice `i` holds vectors `32*i .. 32*i+31`).
///
/// In x2APIC mode, MSR 0x830 maps to [`ApicRegister::IcrLow`] and carries
/// the whole 64-bit ICR (destination in bits 63:32); `IcrHigh` exists only
/// at xAPIC offset 0x310.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApicRegister {
    /// Local APIC ID.
    Id,
    /// Local APIC version.
    Version,
    /// Task priority.
    Tpr,
    /// Arbitration priority (xAPIC only).
    Apr,
    /// Processor priority.
    Ppr,
    /// End of interrupt (write-only).
    Eoi,
    /// Remote read (xAPIC only, reads 0).
    Rrd,
    /// Logical destination.
    Ldr,
    /// Destination format (xAPIC only).
    Dfr,
    /// Spurious interrupt vector.
    Svr,
    /// In-service register slice 0..=7.
    Isr(u8),
    /// Trigger mode register slice 0..=7.
    Tmr(u8),
    /// Interrupt request register slice 0..=7.
    Irr(u8),
    /// Error status.
    Esr,
    /// A local vector table entry.
    Lvt(Lvt),
    /// Interrupt command, low half (whole ICR in x2APIC mode).
    IcrLow,
    /// Interrupt command, high half (xAPIC only).
    IcrHigh,
    /// Timer initial count.
    TimerInitialCount,
    /// Timer current count (read-only).
    TimerCurrentCount,
    /// Timer divide configuration.
    TimerDivideConfig,
    /// SELF IPI (x2APIC only, write-only).
    SelfIpi,
}

impl ApicRegister {
    /// Decodes the register at `offset` in the xAPIC page. The offset must be
    /// the exact (16-byte aligned) start of a register; reserved offsets and
    /// the x2APIC-only SELF IPI give `None`.
    pub const fn from_xapic_offset(offset: u32) -> Option<Self> {
        if offset & 0xF != 0 {
            return None;
        }
        Some(match offset {
            offset::ID => Self::Id,
            offset::VERSION => Self::Version,
            offset::TPR => Self::Tpr,
            offset::APR => Self::Apr,
            offset::PPR => Self::Ppr,
            offset::EOI => Self::Eoi,
            offset::RRD => Self::Rrd,
            offset::LDR => Self::Ldr,
            offset::DFR => Self::Dfr,
            offset::SVR => Self::Svr,
            0x100..=0x170 => Self::Isr(((offset - offset::ISR0) >> 4) as u8),
            0x180..=0x1F0 => Self::Tmr(((offset - offset::TMR0) >> 4) as u8),
            0x200..=0x270 => Self::Irr(((offset - offset::IRR0) >> 4) as u8),
            offset::ESR => Self::Esr,
            offset::LVT_CMCI => Self::Lvt(Lvt::Cmci),
            offset::ICR_LOW => Self::IcrLow,
            offset::ICR_HIGH => Self::IcrHigh,
            offset::LVT_TIMER => Self::Lvt(Lvt::Timer),
            offset::LVT_THERMAL => Self::Lvt(Lvt::Thermal),
            offset::LVT_PERFMON => Self::Lvt(Lvt::PerfMon),
            offset::LVT_LINT0 => Self::Lvt(Lvt::Lint0),
            offset::LVT_LINT1 => Self::Lvt(Lvt::Lint1),
            offset::LVT_ERROR => Self::Lvt(Lvt::Error),
            offset::TIMER_INITIAL_COUNT => Self::TimerInitialCount,
            offset::TIMER_CURRENT_COUNT => Self::TimerCurrentCount,
            offset::TIMER_DIVIDE_CONFIG => Self::TimerDivideConfig,
            _ => return None,
        })
    }

    /// Decodes the register behind an x2APIC MSR (`0x800 + (offset >> 4)`,
    /// SDM Table 11-6). APR, RRD, DFR and ICR high do not exist in x2APIC
    /// mode and give `None`, as do reserved MSRs.
    pub const fn from_x2apic_msr(msr: u32) -> Option<Self> {
        if msr < msr::X2APIC_FIRST || msr > msr::X2APIC_LAST {
            return None;
        }
        let off = (msr - msr::X2APIC_FIRST) << 4;
        if off == offset::SELF_IPI {
            return Some(Self::SelfIpi);
        }
        match Self::from_xapic_offset(off) {
            Some(Self::Apr | Self::Rrd | Self::Dfr | Self::IcrHigh) | None => None,
            Some(reg) => Some(reg),
        }
    }

    /// The xAPIC MMIO offset of this register, if it exists in xAPIC mode.
    pub const fn xapic_offset(self) -> Option<u32> {
        Some(match self {
            Self::Id => offset::ID,
            Self::Version => offset::VERSION,
            Self::Tpr => offset::TPR,
            Self::Apr => offset::APR,
            Self::Ppr => offset::PPR,
            Self::Eoi => offset::EOI,
            Self::Rrd => offset::RRD,
            Self::Ldr => offset::LDR,
            Self::Dfr => offset::DFR,
            Self::Svr => offset::SVR,
            Self::Isr(i) if i < 8 => offset::ISR0 + 0x10 * i as u32,
            Self::Tmr(i) if i < 8 => offset::TMR0 + 0x10 * i as u32,
            Self::Irr(i) if i < 8 => offset::IRR0 + 0x10 * i as u32,
            Self::Esr => offset::ESR,
            Self::Lvt(lvt) => lvt.offset(),
            Self::IcrLow => offset::ICR_LOW,
            Self::IcrHigh => offset::ICR_HIGH,
            Self::TimerInitialCount => offset::TIMER_INITIAL_COUNT,
            Self::TimerCurrentCount => offset::TIMER_CURRENT_COUNT,
            Self::TimerDivideConfig => offset::TIMER_DIVIDE_CONFIG,
            Self::Isr(_) | Self::Tmr(_) | Self::Irr(_) | Self::SelfIpi => return None,
        })
    }

    /// The x2APIC MSR of this register, if it exists in x2APIC mode.
    pub const fn x2apic_msr(self) -> Option<u32> {
        match self {
            Self::Apr | Self::Rrd | Self::Dfr | Self::IcrHigh => None,
            Self::SelfIpi => Some(msr::X2APIC_SELF_IPI),
            reg => match reg.xapic_offset() {
                Some(off) => Some(msr::X2APIC_FIRST + (off >> 4)),
                None => None,
            },
        }
    }

    /// Whether software may only read this register.
    pub const fn is_read_only(self) -> bool {
        matches!(
            self,
            Self::Version
                | Self::Apr
                | Self::Ppr
                | Self::Rrd
                | Self::Isr(_)
                | Self::Tmr(_)
                | Self::Irr(_)
                | Self::TimerCurrentCount
        )
    }

    /// Whether software may only write this register.
    pub const fn is_write_only(self) -> bool {
        matches!(self, Self::Eoi | Self::SelfIpi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xapic_offsets_of_sdm_table_11_1() {
        let table = [
            (0x020, ApicRegister::Id),
            (0x030, ApicRegister::Version),
            (0x080, ApicRegister::Tpr),
            (0x090, ApicRegister::Apr),
            (0x0A0, ApicRegister::Ppr),
            (0x0B0, ApicRegister::Eoi),
            (0x0C0, ApicRegister::Rrd),
            (0x0D0, ApicRegister::Ldr),
            (0x0E0, ApicRegister::Dfr),
            (0x0F0, ApicRegister::Svr),
            (0x100, ApicRegister::Isr(0)),
            (0x170, ApicRegister::Isr(7)),
            (0x180, ApicRegister::Tmr(0)),
            (0x1F0, ApicRegister::Tmr(7)),
            (0x200, ApicRegister::Irr(0)),
            (0x270, ApicRegister::Irr(7)),
            (0x280, ApicRegister::Esr),
            (0x2F0, ApicRegister::Lvt(Lvt::Cmci)),
            (0x300, ApicRegister::IcrLow),
            (0x310, ApicRegister::IcrHigh),
            (0x320, ApicRegister::Lvt(Lvt::Timer)),
            (0x330, ApicRegister::Lvt(Lvt::Thermal)),
            (0x340, ApicRegister::Lvt(Lvt::PerfMon)),
            (0x350, ApicRegister::Lvt(Lvt::Lint0)),
            (0x360, ApicRegister::Lvt(Lvt::Lint1)),
            (0x370, ApicRegister::Lvt(Lvt::Error)),
            (0x380, ApicRegister::TimerInitialCount),
            (0x390, ApicRegister::TimerCurrentCount),
            (0x3E0, ApicRegister::TimerDivideConfig),
        ];
        for (off, reg) in table {
            assert_eq!(ApicRegister::from_xapic_offset(off), Some(reg), "{off:#x}");
            assert_eq!(reg.xapic_offset(), Some(off));
        }
    }

    #[test]
    fn reserved_xapic_offsets() {
        for off in [
            0x000, 0x010, 0x040, 0x050, 0x060, 0x070, 0x290, 0x2A0, 0x2E0, 0x3A0, 0x3B0, 0x3C0,
            0x3D0, 0x3F0, 0x400, 0xFF0,
        ] {
            assert_eq!(ApicRegister::from_xapic_offset(off), None, "{off:#x}");
        }
        // Not 16-byte aligned.
        assert_eq!(ApicRegister::from_xapic_offset(0x024), None);
        assert_eq!(ApicRegister::from_xapic_offset(0x0F4), None);
    }

    #[test]
    fn x2apic_msrs_of_sdm_table_11_6() {
        let table = [
            (0x802, ApicRegister::Id),
            (0x803, ApicRegister::Version),
            (0x808, ApicRegister::Tpr),
            (0x80A, ApicRegister::Ppr),
            (0x80B, ApicRegister::Eoi),
            (0x80D, ApicRegister::Ldr),
            (0x80F, ApicRegister::Svr),
            (0x810, ApicRegister::Isr(0)),
            (0x817, ApicRegister::Isr(7)),
            (0x818, ApicRegister::Tmr(0)),
            (0x81F, ApicRegister::Tmr(7)),
            (0x820, ApicRegister::Irr(0)),
            (0x827, ApicRegister::Irr(7)),
            (0x828, ApicRegister::Esr),
            (0x82F, ApicRegister::Lvt(Lvt::Cmci)),
            (0x830, ApicRegister::IcrLow),
            (0x832, ApicRegister::Lvt(Lvt::Timer)),
            (0x833, ApicRegister::Lvt(Lvt::Thermal)),
            (0x834, ApicRegister::Lvt(Lvt::PerfMon)),
            (0x835, ApicRegister::Lvt(Lvt::Lint0)),
            (0x836, ApicRegister::Lvt(Lvt::Lint1)),
            (0x837, ApicRegister::Lvt(Lvt::Error)),
            (0x838, ApicRegister::TimerInitialCount),
            (0x839, ApicRegister::TimerCurrentCount),
            (0x83E, ApicRegister::TimerDivideConfig),
            (0x83F, ApicRegister::SelfIpi),
        ];
        for (msr, reg) in table {
            assert_eq!(ApicRegister::from_x2apic_msr(msr), Some(reg), "{msr:#x}");
            assert_eq!(reg.x2apic_msr(), Some(msr));
        }
    }

    #[test]
    fn registers_absent_in_x2apic_mode() {
        // APR 0x809, RRD 0x80C, DFR 0x80E, ICR high 0x831, reserved ones.
        for msr in [
            0x800, 0x801, 0x804, 0x809, 0x80C, 0x80E, 0x831, 0x83A, 0x83D, 0x840, 0x8FF, 0x7FF,
            0x900,
        ] {
            assert_eq!(ApicRegister::from_x2apic_msr(msr), None, "{msr:#x}");
        }
        assert_eq!(ApicRegister::Dfr.x2apic_msr(), None);
        assert_eq!(ApicRegister::IcrHigh.x2apic_msr(), None);
        assert_eq!(ApicRegister::SelfIpi.xapic_offset(), None);
    }

    #[test]
    fn lvt_masks_match_sdm_figure_11_8() {
        assert_eq!(Lvt::Timer.writable_mask(), 0x700FF);
        assert_eq!(Lvt::Lint0.writable_mask(), 0x1A7FF);
        assert_eq!(Lvt::Error.writable_mask(), 0x100FF);
        assert_eq!(Lvt::Thermal.writable_mask(), 0x107FF);
        for lvt in Lvt::ALL {
            assert_eq!(lvt.writable_mask() & Lvt::DELIVERY_STATUS, 0);
            assert_eq!(Lvt::ALL[lvt.index()], lvt);
        }
    }
}
