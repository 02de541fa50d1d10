#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod arch;
mod error;
mod exit;
mod percpu;
pub mod regs;
mod state;
mod vcpu;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

pub use arch::{AxArchPerCpu, AxArchVCpu, x86_gpr};
pub use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr, MappingFlags};
pub use error::{ArchError, Error, Result};
pub use exit::{AxVCpuExitReason, ExitCounters, ExitReasonKind};
pub use percpu::AxPerCpu;
pub use state::VCpuState;
pub use vcpu::AxVCpu;
