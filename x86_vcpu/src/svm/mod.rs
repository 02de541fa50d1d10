//! AMD SVM: the VMCB, intercepts, exit codes, permission maps, event
//! injection, and the [`SvmVcpu`] backend.

pub mod bitmap;
pub mod event;
pub mod exit;
#[cfg(target_os = "none")]
mod hw;
pub mod setup;
mod vcpu;
pub mod vmcb;

pub use bitmap::{SvmIopm, SvmMsrpm};
pub use event::{SvmEvent, SvmEventType};
pub use exit::{IoioInfo, SvmExitCode, VMEXIT_INVALID, npf_access_flags};
pub use setup::{SvmControlsConfig, check_vmcb, pat_is_valid, write_controls, write_guest_state};
pub use vcpu::{SvmPerCpu, SvmVcpu};
pub use vmcb::{InterceptMisc1, InterceptMisc2, Vmcb, VmcbControl, VmcbSaveArea, VmcbSegment};
