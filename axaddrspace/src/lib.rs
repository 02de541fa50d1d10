#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

mod addr;
mod address_space;
mod error;
mod guest_mem;
mod guest_walk;
mod hal;
pub mod npt;
mod translation_cache;
mod walk_cache;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use addr::*;
pub use address_space::{AddrSpace, Backend, DynAddrSpace, MemoryArea};
pub use error::{Error, PageFaultReason, Result};
pub use guest_mem::{GuestMemoryReader, GuestMemoryWriter, GuestPod};
pub use guest_walk::{
    GuestAccess, GuestPageWalker, GuestPagingMode, GuestTranslation, translate_gva,
};
pub use hal::AxMmHal;
pub use memory_addr::{MemoryAddr, PAGE_SIZE_4K, PhysAddr, VirtAddr};
pub use npt::{
    EPTEntry, EPTMemType, EptPageTable, NPTEntry, NestedPageTable, NestedPagingFormat,
    NestedPagingKind, NptPageTable, PageSize,
};
pub use page_table_entry::{GenericPTE, MappingFlags};
pub use translation_cache::{CachedGuestMemory, TRANSLATION_CACHE_ENTRIES, TranslationCache};
pub use walk_cache::{WALK_CACHE_ENTRIES, WalkCache};

/// An Intel EPT address space.
pub type EptAddrSpace<H> = AddrSpace<EPTEntry, H>;
/// An AMD NPT address space.
pub type NptAddrSpace<H> = AddrSpace<NPTEntry, H>;
