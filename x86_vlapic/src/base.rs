//! The `IA32_APIC_BASE` MSR and the local APIC mode (SDM 11.4.4, 11.12.5).

use axaddrspace::GuestPhysAddr;

use crate::{Error, Result};

/// Operating mode of the local APIC, from `IA32_APIC_BASE` EN and EXTD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApicMode {
    /// EN=0, EXTD=0: the APIC is globally disabled.
    Disabled,
    /// EN=1, EXTD=0: xAPIC mode, registers in the MMIO page.
    XApic,
    /// EN=1, EXTD=1: x2APIC mode, registers in MSRs 0x800-0x8FF.
    X2Apic,
}

/// A value of the `IA32_APIC_BASE` MSR (0x1B).
///
/// Bit 8 BSP (read-only here), bit 10 EXTD (x2APIC enable), bit 11 EN
/// (global enable), bits `MAXPHYADDR-1:12` the page of the xAPIC registers.
/// The pair EN=0, EXTD=1 is invalid and never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApicBase(u64);

impl ApicBase {
    /// Bootstrap processor flag.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode enable.
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
    /// Default physical base of the xAPIC page.
    pub const DEFAULT_BASE: u64 = 0xFEE0_0000;
    /// Mask of the base address field for a 52-bit MAXPHYADDR.
    pub const BASE_MASK: u64 = 0x000F_FFFF_FFFF_F000;

    /// The value after power-up or RESET: default base, EN set, xAPIC mode,
    /// BSP as given (0xFEE0_0900 for the BSP, 0xFEE0_0800 for an AP).
    pub const fn reset(bsp: bool) -> Self {
        let bsp = if bsp { Self::BSP } else { 0 };
        Self(Self::DEFAULT_BASE | Self::EN | bsp)
    }

    /// The raw MSR value.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether this is the bootstrap processor.
    pub const fn is_bsp(self) -> bool {
        self.0 & Self::BSP != 0
    }

    /// Whether the APIC is globally enabled (EN).
    pub const fn is_enabled(self) -> bool {
        self.0 & Self::EN != 0
    }

    /// The mode selected by EN and EXTD.
    pub const fn mode(self) -> ApicMode {
        match (self.0 & Self::EN != 0, self.0 & Self::EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// Physical address of the xAPIC register page.
    pub const fn base_address(self) -> u64 {
        self.0 & Self::BASE_MASK
    }

    /// Guest physical address of the xAPIC register page.
    pub fn base_gpa(self) -> GuestPhysAddr {
        GuestPhysAddr::from_usize(self.base_address() as usize)
    }

    /// Checks a `WRMSR` of `value` against the current value, and returns
    /// the new MSR value.
    ///
    /// Reserved bits are 7:0, 9, the bits at and above `max_phys_bits`, and
    /// EXTD when x2APIC is not offered. The BSP flag keeps its value.
    /// Mode transitions follow SDM 11.12.5 (Figure 11-31): xAPIC to x2APIC
    /// and any mode to disabled are allowed; disabled to xAPIC is allowed;
    /// x2APIC to xAPIC, disabled to x2APIC and EN=0 with EXTD=1 fault.
    pub fn checked_write(
        self,
        value: u64,
        max_phys_bits: u8,
        x2apic_supported: bool,
    ) -> Result<ApicBase> {
        let mut reserved = 0xFFu64 | (1 << 9);
        if max_phys_bits < 64 {
            reserved |= !((1u64 << max_phys_bits) - 1);
        }
        if !x2apic_supported {
            reserved |= Self::EXTD;
        }
        if value & reserved != 0 {
            return Err(Error::ApicBaseReservedBits { value });
        }
        let invalid = Err(Error::InvalidTransition {
            from: self.0,
            to: value,
        });
        let to = match (value & Self::EN != 0, value & Self::EXTD != 0) {
            (false, true) => return invalid,
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        };
        match (self.mode(), to) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return invalid;
            }
            _ => {}
        }
        Ok(Self((value & !Self::BSP) | (self.0 & Self::BSP)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_values() {
        assert_eq!(ApicBase::reset(true).bits(), 0xFEE0_0900);
        assert_eq!(ApicBase::reset(false).bits(), 0xFEE0_0800);
        let b = ApicBase::reset(true);
        assert!(b.is_bsp() && b.is_enabled());
        assert_eq!(b.mode(), ApicMode::XApic);
        assert_eq!(b.base_address(), 0xFEE0_0000);
        assert_eq!(b.base_gpa().as_usize(), 0xFEE0_0000);
    }

    #[test]
    fn legal_transitions() {
        let x = ApicBase::reset(true);
        // xAPIC -> x2APIC
        let x2 = x.checked_write(0xFEE0_0D00, 52, true).unwrap();
        assert_eq!(x2.mode(), ApicMode::X2Apic);
        assert_eq!(x2.bits(), 0xFEE0_0D00);
        // x2APIC -> disabled
        let d = x2.checked_write(0xFEE0_0100, 52, true).unwrap();
        assert_eq!(d.mode(), ApicMode::Disabled);
        // disabled -> xAPIC
        let x = d.checked_write(0xFEE0_0900, 52, true).unwrap();
        assert_eq!(x.mode(), ApicMode::XApic);
        // xAPIC -> disabled
        assert_eq!(
            x.checked_write(0xFEE0_0000, 52, true).unwrap().mode(),
            ApicMode::Disabled
        );
        // Relocating the page in xAPIC mode.
        assert_eq!(
            x.checked_write(0x1234_5000 | ApicBase::EN, 52, true)
                .unwrap()
                .base_address(),
            0x1234_5000
        );
    }

    #[test]
    fn illegal_transitions() {
        let x = ApicBase::reset(true);
        let x2 = x.checked_write(0xFEE0_0D00, 52, true).unwrap();
        let d = x.checked_write(0xFEE0_0000, 52, true).unwrap();
        // x2APIC -> xAPIC directly
        assert_eq!(
            x2.checked_write(0xFEE0_0900, 52, true),
            Err(Error::InvalidTransition {
                from: 0xFEE0_0D00,
                to: 0xFEE0_0900
            })
        );
        // disabled -> x2APIC directly
        assert!(matches!(
            d.checked_write(0xFEE0_0C00, 52, true),
            Err(Error::InvalidTransition { .. })
        ));
        // EN=0, EXTD=1 from any state
        for s in [x, x2, d] {
            assert!(matches!(
                s.checked_write(0xFEE0_0400, 52, true),
                Err(Error::InvalidTransition { .. })
            ));
        }
    }

    #[test]
    fn reserved_bits() {
        let x = ApicBase::reset(true);
        for v in [0xFEE0_0901, 0xFEE0_0980, 0xFEE0_0B00] {
            assert_eq!(
                x.checked_write(v, 52, true),
                Err(Error::ApicBaseReservedBits { value: v })
            );
        }
        // Above MAXPHYADDR = 40.
        assert!(x.checked_write(0x100_FEE0_0900, 40, true).is_err());
        assert!(x.checked_write(0x100_FEE0_0900, 48, true).is_ok());
        // EXTD without x2APIC support.
        assert!(x.checked_write(0xFEE0_0D00, 52, false).is_err());
    }

    #[test]
    fn bsp_flag_is_kept() {
        let ap = ApicBase::reset(false);
        assert_eq!(
            ap.checked_write(0xFEE0_0900, 52, true).unwrap().bits(),
            0xFEE0_0800
        );
        let bsp = ApicBase::reset(true);
        assert_eq!(
            bsp.checked_write(0xFEE0_0800, 52, true).unwrap().bits(),
            0xFEE0_0900
        );
    }
}
