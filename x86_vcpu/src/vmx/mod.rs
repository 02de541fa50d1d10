//! Intel VMX: VMCS fields and access, capability-driven controls, exit
//! decoding, bitmaps, EPTP, event injection, and the [`VmxVcpu`] backend.

pub mod bitmap;
pub mod controls;
pub mod ept;
pub mod event;
pub mod exit;
#[cfg(target_os = "none")]
pub mod hw;
pub mod invalidate;
mod percpu;
pub mod setup;
mod vcpu;
pub mod vmcs;
pub mod vmx_ops;

pub use bitmap::{MsrAccessKind, VmxIoBitmap, VmxMsrBitmap};
pub use controls::{VmxBasic, VmxCaps, adjust_controls};
pub use ept::eptp;
pub use event::{InterruptionInfo, InterruptionType};
pub use exit::{
    EntryFailure, ExitReasonField, VmInstructionError, VmxExitReason, instruction_error_message,
};
pub use invalidate::{GuestTlbFlush, InveptType, InvvpidType, guest_tlb_flush};
pub use percpu::VmxPerCpu;
pub use setup::{
    HostState, VmxControlsConfig, system_descriptor_base, write_controls, write_guest_state,
    write_host_state,
};
pub use vcpu::VmxVcpu;
pub use vmcs::{FakeVmcs, VmcsAccess, VmcsField};
pub use vmx_ops::{FakeVmxCpu, VmxCpuOps};
