//! Address types of a guest and of its host.

use memory_addr::{AddrRange, def_usize_addr, def_usize_addr_formatter};

/// Host virtual address: where the hypervisor itself sees a byte.
pub type HostVirtAddr = memory_addr::VirtAddr;
/// Host physical address: a byte of the machine's memory.
pub type HostPhysAddr = memory_addr::PhysAddr;

def_usize_addr! {
    /// Guest virtual address: an address the guest's own page tables translate.
    pub type GuestVirtAddr;
    /// Guest physical address: an address the nested page table translates.
    pub type GuestPhysAddr;
}

def_usize_addr_formatter! {
    GuestVirtAddr = "GVA:{}";
    GuestPhysAddr = "GPA:{}";
}

/// A range of guest virtual addresses.
pub type GuestVirtAddrRange = AddrRange<GuestVirtAddr>;
/// A range of guest physical addresses.
pub type GuestPhysAddrRange = AddrRange<GuestPhysAddr>;

/// Width of one memory or port access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessWidth {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
    /// 8 bytes.
    Qword,
}

impl AccessWidth {
    /// Number of bytes of an access of this width.
    pub const fn size(self) -> usize {
        match self {
            Self::Byte => 1,
            Self::Word => 2,
            Self::Dword => 4,
            Self::Qword => 8,
        }
    }

    /// The width of an access of `size` bytes, if it is 1, 2, 4 or 8.
    pub const fn from_size(size: usize) -> Option<Self> {
        match size {
            1 => Some(Self::Byte),
            2 => Some(Self::Word),
            4 => Some(Self::Dword),
            8 => Some(Self::Qword),
            _ => None,
        }
    }

    /// Mask keeping the low `size()` bytes of a value.
    pub const fn mask(self) -> u64 {
        match self {
            Self::Qword => u64::MAX,
            w => (1u64 << (w.size() * 8)) - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_width_sizes_and_masks() {
        for (w, n, m) in [
            (AccessWidth::Byte, 1, 0xff),
            (AccessWidth::Word, 2, 0xffff),
            (AccessWidth::Dword, 4, 0xffff_ffff),
            (AccessWidth::Qword, 8, u64::MAX),
        ] {
            assert_eq!(w.size(), n);
            assert_eq!(w.mask(), m);
            assert_eq!(AccessWidth::from_size(n), Some(w));
        }
        assert_eq!(AccessWidth::from_size(3), None);
    }

    #[test]
    fn guest_addr_format() {
        let a = GuestPhysAddr::from_usize(0x1000);
        assert_eq!(alloc_fmt(a), "GPA:0x1000");
    }

    fn alloc_fmt(a: GuestPhysAddr) -> std::string::String {
        std::format!("{a:?}")
    }
}
