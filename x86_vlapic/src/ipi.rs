//! Interrupt command register decoding (SDM 11.6.1, Figure 11-12) and the
//! requests a local APIC hands to its VM.

use crate::{Error, Result};

/// Delivery mode, ICR bits 10:8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 000b: deliver `vector` to the destination(s).
    Fixed,
    /// 001b: deliver `vector` to the lowest-priority processor among the
    /// destinations.
    LowestPriority,
    /// 010b: system management interrupt (vector must be 0).
    Smi,
    /// 100b: non-maskable interrupt (vector ignored).
    Nmi,
    /// 101b: INIT (or INIT level de-assert, see
    /// [`IpiRequest::is_init_level_deassert`]).
    Init,
    /// 110b: start-up IPI; the target starts in real mode at
    /// `vector << 12`.
    StartUp,
}

impl DeliveryMode {
    /// Decodes the 3-bit field; 011b and 111b are reserved.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits & 0b111 {
            0b000 => Self::Fixed,
            0b001 => Self::LowestPriority,
            0b010 => Self::Smi,
            0b100 => Self::Nmi,
            0b101 => Self::Init,
            0b110 => Self::StartUp,
            _ => return None,
        })
    }

    /// The 3-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::StartUp => 0b110,
        }
    }
}

/// Destination mode, ICR bit 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationMode {
    /// 0: the destination is an APIC ID.
    Physical,
    /// 1: the destination is a message destination address matched against
    /// each APIC's LDR (and DFR in xAPIC mode).
    Logical,
}

/// Destination shorthand, ICR bits 19:18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shorthand {
    /// 00b: use the destination field.
    None,
    /// 01b: the sender only.
    SelfOnly,
    /// 10b: every APIC, the sender included.
    AllIncludingSelf,
    /// 11b: every APIC but the sender.
    AllExcludingSelf,
}

/// Trigger mode (ICR bit 15, LVT bit 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    /// 0: edge.
    Edge,
    /// 1: level.
    Level,
}

/// An IPI that a write to the ICR asks for, handed to the VM to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpiRequest {
    /// APIC ID of the sender (32-bit x2APIC ID in x2APIC mode, 8-bit xAPIC
    /// ID otherwise).
    pub source: u32,
    /// Destination field: ICR bits 63:56 in xAPIC mode, 63:32 in x2APIC
    /// mode. Meaningless when `shorthand` is not [`Shorthand::None`].
    pub dest: u32,
    /// Physical or logical destination.
    pub dest_mode: DestinationMode,
    /// Destination shorthand.
    pub shorthand: Shorthand,
    /// What to deliver.
    pub delivery_mode: DeliveryMode,
    /// Vector (for Fixed, LowestPriority, StartUp).
    pub vector: u8,
    /// Level bit 14: `false` only for INIT level de-assert.
    pub level: bool,
    /// Trigger mode bit 15.
    pub trigger: TriggerMode,
    /// Whether the sender was in x2APIC mode (32-bit destinations,
    /// broadcast 0xFFFF_FFFF instead of 0xFF).
    pub x2apic: bool,
}

/// ICR bits that may be written in xAPIC mode (low half): vector, delivery
/// mode, destination mode, level, trigger mode, shorthand.
pub const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
/// ICR bits that are reserved in x2APIC mode (low half): 31:20, 17:16, 13.
/// Bit 12 (delivery status) is read-only and ignored.
pub const X2APIC_ICR_RESERVED: u32 = 0xFFF3_2000;

impl IpiRequest {
    /// Decodes a full 64-bit ICR value written by the APIC with ID `source`.
    /// In xAPIC mode the destination is bits 63:56, in x2APIC mode 63:32.
    pub fn decode(icr: u64, x2apic: bool, source: u32) -> Result<Self> {
        let low = icr as u32;
        let mode_bits = ((low >> 8) & 0b111) as u8;
        let delivery_mode = DeliveryMode::from_bits(mode_bits)
            .ok_or(Error::ReservedDeliveryMode { mode: mode_bits })?;
        let dest = if x2apic {
            (icr >> 32) as u32
        } else {
            (icr >> 56) as u32
        };
        Ok(Self {
            source,
            dest,
            dest_mode: if low & (1 << 11) != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            shorthand: match (low >> 18) & 0b11 {
                0 => Shorthand::None,
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            delivery_mode,
            vector: low as u8,
            level: low & (1 << 14) != 0,
            trigger: if low & (1 << 15) != 0 {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
            x2apic,
        })
    }

    /// The broadcast destination for the sender's mode.
    pub const fn broadcast_dest(&self) -> u32 {
        if self.x2apic { u32::MAX } else { 0xFF }
    }

    /// An INIT with level 0 and level trigger: the "INIT level de-assert"
    /// that older software sends after INIT. It only resynchronises
    /// arbitration IDs; a VM ignores it.
    pub const fn is_init_level_deassert(&self) -> bool {
        matches!(self.delivery_mode, DeliveryMode::Init)
            && !self.level
            && matches!(self.trigger, TriggerMode::Level)
    }

    /// For a start-up IPI, the physical address where the target starts
    /// (real mode, CS = `vector << 8`, IP = 0).
    pub const fn startup_address(&self) -> Option<u64> {
        match self.delivery_mode {
            DeliveryMode::StartUp => Some((self.vector as u64) << 12),
            _ => None,
        }
    }

    /// Whether this delivery mode carries a vector that must be 16 or more
    /// (Fixed and LowestPriority).
    pub const fn needs_legal_vector(&self) -> bool {
        matches!(
            self.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_init_assert_and_deassert() {
        // Linux: APIC_INT_LEVELTRIG | APIC_INT_ASSERT | APIC_DM_INIT = 0xC500
        let r = IpiRequest::decode(0x0300_0000_0000_C500, false, 0).unwrap();
        assert_eq!(r.delivery_mode, DeliveryMode::Init);
        assert_eq!(r.dest, 3);
        assert_eq!(r.dest_mode, DestinationMode::Physical);
        assert_eq!(r.shorthand, Shorthand::None);
        assert!(r.level);
        assert_eq!(r.trigger, TriggerMode::Level);
        assert!(!r.is_init_level_deassert());
        // De-assert: APIC_INT_LEVELTRIG | APIC_DM_INIT = 0x8500
        let r = IpiRequest::decode(0x0300_0000_0000_8500, false, 0).unwrap();
        assert!(r.is_init_level_deassert());
    }

    #[test]
    fn decode_sipi() {
        // APIC_DM_STARTUP | (0x9000 >> 12)
        let r = IpiRequest::decode(0x0100_0000_0000_0609, false, 0).unwrap();
        assert_eq!(r.delivery_mode, DeliveryMode::StartUp);
        assert_eq!(r.vector, 0x09);
        assert_eq!(r.startup_address(), Some(0x9000));
        assert_eq!(r.dest, 1);
        assert_eq!(r.trigger, TriggerMode::Edge);
    }

    #[test]
    fn decode_x2apic_destination_and_shorthands() {
        let r = IpiRequest::decode(0x0001_0002_0000_08FD, true, 7).unwrap();
        assert_eq!(r.dest, 0x0001_0002);
        assert_eq!(r.dest_mode, DestinationMode::Logical);
        assert_eq!(r.vector, 0xFD);
        assert_eq!(r.source, 7);
        assert_eq!(r.broadcast_dest(), u32::MAX);
        let s = |v: u64| IpiRequest::decode(v, false, 0).unwrap().shorthand;
        assert_eq!(s(0x4_0030), Shorthand::SelfOnly);
        assert_eq!(s(0x8_0030), Shorthand::AllIncludingSelf);
        assert_eq!(s(0xC_0030), Shorthand::AllExcludingSelf);
        assert_eq!(
            IpiRequest::decode(0x0400, false, 0).unwrap().delivery_mode,
            DeliveryMode::Nmi
        );
        assert_eq!(
            IpiRequest::decode(0x0200, false, 0).unwrap().delivery_mode,
            DeliveryMode::Smi
        );
        assert_eq!(
            IpiRequest::decode(0x0100, false, 0).unwrap().delivery_mode,
            DeliveryMode::LowestPriority
        );
    }

    #[test]
    fn reserved_delivery_modes() {
        assert_eq!(
            IpiRequest::decode(0x0300, false, 0),
            Err(Error::ReservedDeliveryMode { mode: 3 })
        );
        assert_eq!(
            IpiRequest::decode(0x0700, false, 0),
            Err(Error::ReservedDeliveryMode { mode: 7 })
        );
        for m in [0, 1, 2, 4, 5, 6] {
            assert_eq!(DeliveryMode::from_bits(m).unwrap().bits(), m);
        }
    }
}
