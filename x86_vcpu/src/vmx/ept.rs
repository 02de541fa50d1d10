//! The EPT pointer (Intel SDM vol. 3, 25.6.11).

use axaddrspace::HostPhysAddr;

use crate::{Error, Result};

/// EPT paging-structure memory type: uncacheable.
pub const EPT_MEMTYPE_UC: u64 = 0;
/// EPT paging-structure memory type: write-back.
pub const EPT_MEMTYPE_WB: u64 = 6;

/// Builds an EPTP for a 4-level EPT rooted at `pml4` (4 KiB aligned):
/// memory type write-back in bits 2:0, page-walk length minus one (3) in bits
/// 5:3, bit 6 enables accessed/dirty flags, bits 51:12 the PML4 address.
pub fn eptp(pml4: HostPhysAddr, enable_ad: bool) -> Result<u64> {
    let addr = pml4.as_usize() as u64;
    if addr & 0xfff != 0 {
        return Err(Error::InvalidArgument("EPT PML4 not 4 KiB aligned"));
    }
    if addr >> 52 != 0 {
        return Err(Error::InvalidArgument(
            "EPT PML4 beyond 52-bit physical address",
        ));
    }
    Ok(addr | EPT_MEMTYPE_WB | (3 << 3) | (u64::from(enable_ad) << 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eptp_fields() {
        let e = eptp(HostPhysAddr::from(0x12_3456_7000usize), false).unwrap();
        assert_eq!(e, 0x12_3456_701e);
        assert_eq!(e & 7, 6);
        assert_eq!((e >> 3) & 7, 3);
        assert_eq!(e & (1 << 6), 0);
        let e = eptp(HostPhysAddr::from(0x8000usize), true).unwrap();
        assert_eq!(e, 0x805e);
        assert!(eptp(HostPhysAddr::from(0x8010usize), true).is_err());
        assert!(eptp(HostPhysAddr::from(1usize << 52), true).is_err());
    }
}
