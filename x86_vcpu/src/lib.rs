#![cfg_attr(not(test), no_std)]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

extern crate alloc;

pub mod cpuid;
pub mod decode;
pub mod decode_cache;
mod dispatch;
mod error;
pub mod guest_msrs;
pub mod hal;
pub mod mmio_rmw;
pub mod msr;
pub mod regs;
pub mod state;
pub mod svm;
pub mod vcpu;
pub mod vendor;
pub mod vmx;
#[cfg(target_os = "none")]
mod xcr;

pub use cpuid::CpuidPolicy;
pub use dispatch::{X86PerCpu, X86Vcpu};
pub use error::{Error, Result};
pub use guest_msrs::{MsrSwitch, SyscallMsrs};
pub use hal::{Hal, PhysFrames};
pub use regs::GeneralRegisters;
pub use state::GuestState;
pub use svm::{SvmPerCpu, SvmVcpu};
pub use vcpu::{
    BootProtocol, GuestCodeLocation, X86VcpuCreateConfig, X86VcpuExt, X86VcpuSetupConfig,
};
pub use vendor::{CpuVendor, HwVirtInfo, VirtKind, detect};
pub use vmx::{VmxPerCpu, VmxVcpu};
