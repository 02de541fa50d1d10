#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod binary;
mod error;
#[cfg(feature = "std")]
mod parse;
mod schema;
mod toml_out;
mod validate;

pub use binary::{FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_PAYLOAD_LEN, crc32};
pub use error::{BinaryErrorKind, ConfigError, Error, Result};
pub use schema::{
    BootProtocol, DeviceBase, DeviceKind, DevicesConfig, EmulatedDevice, GPA_LIMIT, HPA_LIMIT,
    KernelConfig, MAX_CMDLINE_LEN, MAX_DEVICES, MAX_IRQ, MAX_MEMORY_REGIONS, MAX_NAME_LEN,
    MAX_PHYS_CPU_ID, MAX_VCPUS, MapKind, MemFlags, MemoryRegion, PAGE_SIZE, PORT_LIMIT,
    PassthroughDevice, PassthroughResource, RamdiskConfig, VcpuConfig, VmConfig, parse_size,
};
