//! Which INVEPT and INVVPID to run, and their descriptors (Intel SDM vol. 3,
//! 29.4.3 and the INVEPT/INVVPID instruction pages in vol. 2).
//!
//! A VM's guest-physical and combined translations are tagged with its EPT
//! root (and VPID). They must be invalidated when a mapping is removed or
//! restricted, and when a tag may be reused by another VM (a new VM whose
//! EPT PML4 lands in a frame a previous VM used, or VMs sharing a VPID).

use super::controls::VmxCaps;
use crate::{Error, Result};

/// The INVEPT types (the register operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InveptType {
    /// Type 1: mappings tagged with the EP4TA of the descriptor's EPTP.
    SingleContext = 1,
    /// Type 2: mappings of every EPTP.
    AllContext = 2,
}

/// The INVVPID types (the register operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum InvvpidType {
    /// Type 0: one linear address of one VPID.
    IndividualAddress = 0,
    /// Type 1: every mapping of the descriptor's VPID.
    SingleContext = 1,
    /// Type 2: every mapping of every VPID except 0.
    AllContext = 2,
    /// Type 3: like single context, keeping global translations.
    SingleContextRetainingGlobals = 3,
}

/// The 128-bit INVEPT descriptor: the EPTP in bits 63:0, bits 127:64 zero.
pub const fn invept_descriptor(eptp: u64) -> [u64; 2] {
    [eptp, 0]
}

/// The 128-bit INVVPID descriptor: the VPID in bits 15:0 (bits 63:16 must
/// be zero), the linear address in bits 127:64.
pub const fn invvpid_descriptor(vpid: u16, linear_addr: u64) -> [u64; 2] {
    [vpid as u64, linear_addr]
}

/// The invalidations that drop every cached translation of one vCPU: an
/// INVEPT for its EPTP and, when it runs with a VPID, an INVVPID for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTlbFlush {
    /// INVEPT type and descriptor.
    pub invept: (InveptType, [u64; 2]),
    /// INVVPID type and descriptor, if the vCPU has a VPID.
    pub invvpid: Option<(InvvpidType, [u64; 2])>,
}

/// Chooses the narrowest invalidations the processor offers for a vCPU
/// with EPT pointer `eptp` and VPID `vpid`: single context if supported,
/// else all contexts. A processor with EPT but without any INVEPT type, or
/// with VPID but without any INVVPID type, cannot have its stale
/// translations removed: [`Error::Unsupported`].
pub fn guest_tlb_flush(caps: &VmxCaps, eptp: u64, vpid: Option<u16>) -> Result<GuestTlbFlush> {
    let ept_type = if caps.invept_single_context() {
        InveptType::SingleContext
    } else if caps.invept_all_context() {
        InveptType::AllContext
    } else {
        return Err(Error::Unsupported(
            "EPT without single- or all-context INVEPT",
        ));
    };
    let invvpid = match vpid {
        None => None,
        Some(0) => return Err(Error::InvalidArgument("VPID 0 belongs to the host")),
        Some(v) => {
            let t = if caps.invvpid_single_context() {
                InvvpidType::SingleContext
            } else if caps.invvpid_all_context() {
                InvvpidType::AllContext
            } else {
                return Err(Error::Unsupported(
                    "VPID without single- or all-context INVVPID",
                ));
            };
            Some((t, invvpid_descriptor(v, 0)))
        }
    };
    Ok(GuestTlbFlush {
        invept: (ept_type, invept_descriptor(eptp)),
        invvpid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msr;
    use crate::vmx::controls::tests::skylake_msrs;

    #[test]
    fn descriptors() {
        assert_eq!(invept_descriptor(0x40_001e), [0x40_001e, 0]);
        assert_eq!(
            invvpid_descriptor(0x1234, 0xffff_8000_0000_1000),
            [0x1234, 0xffff_8000_0000_1000]
        );
        assert_eq!(InveptType::SingleContext as u64, 1);
        assert_eq!(InveptType::AllContext as u64, 2);
        assert_eq!(InvvpidType::IndividualAddress as u64, 0);
        assert_eq!(InvvpidType::SingleContextRetainingGlobals as u64, 3);
    }

    #[test]
    fn single_context_when_offered() {
        let caps = VmxCaps::read(&skylake_msrs());
        let f = guest_tlb_flush(&caps, 0x40_001e, Some(1)).unwrap();
        assert_eq!(f.invept, (InveptType::SingleContext, [0x40_001e, 0]));
        assert_eq!(f.invvpid, Some((InvvpidType::SingleContext, [1, 0])));
        assert_eq!(
            guest_tlb_flush(&caps, 0x40_001e, None).unwrap().invvpid,
            None
        );
        assert!(guest_tlb_flush(&caps, 0x40_001e, Some(0)).is_err());
    }

    #[test]
    fn fallbacks_and_refusals() {
        let mut m = skylake_msrs();
        // INVEPT with all-context only (bits 20, 26), INVVPID with
        // all-context only (bits 32, 42).
        let base = 0x0673_4141u64 & !(1 << 25);
        m.preset(msr::IA32_VMX_EPT_VPID_CAP, base | (1 << 32) | (1 << 42));
        let caps = VmxCaps::read(&m);
        let f = guest_tlb_flush(&caps, 0x5000_001e, Some(7)).unwrap();
        assert_eq!(f.invept.0, InveptType::AllContext);
        assert_eq!(f.invvpid, Some((InvvpidType::AllContext, [7, 0])));

        // No INVEPT type at all.
        m.preset(msr::IA32_VMX_EPT_VPID_CAP, base & !(1 << 26));
        let caps = VmxCaps::read(&m);
        assert!(matches!(
            guest_tlb_flush(&caps, 0x5000_001e, None),
            Err(Error::Unsupported(_))
        ));
        // INVEPT fine, INVVPID absent (bit 32 clear) while a VPID is used.
        m.preset(msr::IA32_VMX_EPT_VPID_CAP, 0x0673_4141);
        let caps = VmxCaps::read(&m);
        assert!(guest_tlb_flush(&caps, 0x5000_001e, None).is_ok());
        assert!(matches!(
            guest_tlb_flush(&caps, 0x5000_001e, Some(1)),
            Err(Error::Unsupported(_))
        ));
    }
}
