#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

mod build;
mod error;
mod exit;
pub mod loader;
mod memory;
mod stats;
mod vm;

pub use build::{BOOT_LOADER_NAME, BootSetup, MULTIBOOT_INFO_GPA, MULTIBOOT_STACK_SIZE};
pub use error::{Error, Result};
pub use exit::{StopReason, VmExit, VmState};
pub use memory::{MAX_INSN_LEN, fetch_code, fetch_code_cached};
pub use stats::ExitStats;
pub use vm::{Kicker, Vm};
