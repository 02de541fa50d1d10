#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

mod addr;
mod hal;

pub use addr::*;
pub use hal::AxMmHal;
pub use memory_addr::{MemoryAddr, PAGE_SIZE_4K, PhysAddr, VirtAddr};
pub use page_table_entry::MappingFlags;
