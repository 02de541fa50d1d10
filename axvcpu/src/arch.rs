//! The traits an architecture backend implements.

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};

use crate::{AxVCpuExitReason, Error, Result, regs};

/// Register numbers the provided methods of [`AxArchVCpu`] use (x86-64 order).
pub mod x86_gpr {
    /// RAX, the accumulator: `IN` result, low half of an `RDMSR` result.
    pub const RAX: usize = 0;
    /// RCX.
    pub const RCX: usize = 1;
    /// RDX: high half of an `RDMSR` result.
    pub const RDX: usize = 2;
    /// RBX.
    pub const RBX: usize = 3;
    /// RSP.
    pub const RSP: usize = 4;
    /// RBP.
    pub const RBP: usize = 5;
    /// RSI.
    pub const RSI: usize = 6;
    /// RDI.
    pub const RDI: usize = 7;
    /// R8.
    pub const R8: usize = 8;
    /// R9.
    pub const R9: usize = 9;
    /// R10.
    pub const R10: usize = 10;
    /// R11.
    pub const R11: usize = 11;
    /// R12.
    pub const R12: usize = 12;
    /// R13.
    pub const R13: usize = 13;
    /// R14.
    pub const R14: usize = 14;
    /// R15.
    pub const R15: usize = 15;
}

/// One virtual CPU of one architecture (Intel VMX, AMD SVM, ...).
///
/// The [`AxVCpu`](crate::AxVCpu) wrapper calls these methods only in the states
/// its state machine allows, so an implementation need not re-check the lifecycle
/// (it may, and report [`Error::BadState`]).
///
/// Error contract:
/// - return `Err` only when the hypervisor cannot go on with this vCPU (a failed
///   `VMPTRLD`, a broken control structure); guest misbehaviour is an
///   [`AxVCpuExitReason`] (`TripleFault`, `FailEntry`, ...);
/// - [`set_entry`](Self::set_entry), [`set_ept_root`](Self::set_ept_root) and
///   [`inject_interrupt`](Self::inject_interrupt) must leave the vCPU unchanged when
///   they fail; the wrapper keeps its state then. A failure of
///   [`setup`](Self::setup), [`bind`](Self::bind), [`unbind`](Self::unbind) or
///   [`run`](Self::run) makes the wrapper mark the vCPU `Invalid`.
///
/// Registers are numbered in the architecture's encoding order; for x86-64:
/// 0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI,
/// 8..=15 = R8..=R15 (see [`x86_gpr`]).
pub trait AxArchVCpu: Sized {
    /// Architecture-specific creation parameters.
    type CreateConfig;
    /// Architecture-specific setup parameters.
    type SetupConfig;

    /// Creates the vCPU `vcpu_id`.
    fn new(vcpu_id: usize, config: Self::CreateConfig) -> Result<Self>;

    /// Sets the guest address where execution starts.
    fn set_entry(&mut self, entry: GuestPhysAddr) -> Result;

    /// Sets the root of the nested page table (x86: EPT pointer / NPT `nCR3`).
    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> Result;

    /// Prepares the vCPU to run, after entry and nested page table root are set.
    fn setup(&mut self, config: Self::SetupConfig) -> Result;

    /// Runs guest code on the current physical CPU until an exit the caller must see.
    fn run(&mut self) -> Result<AxVCpuExitReason>;

    /// Binds the vCPU to the current physical CPU (x86 VMX: `VMPTRLD`).
    fn bind(&mut self) -> Result;

    /// Unbinds the vCPU from the current physical CPU (x86 VMX: `VMCLEAR`).
    fn unbind(&mut self) -> Result;

    /// Sets general purpose register `reg`.
    fn set_gpr(&mut self, reg: usize, val: u64);

    /// Reads general purpose register `reg`.
    fn gpr(&self, reg: usize) -> u64;

    /// Queues interrupt `vector` for delivery at a coming entry.
    fn inject_interrupt(&mut self, vector: u8) -> Result;

    /// Sets the register that returns a value to the guest (x86: RAX), for
    /// example a hypercall's result.
    fn set_return_value(&mut self, val: u64);

    /// Completes an [`AxVCpuExitReason::IoRead`]: puts `value` where the guest's
    /// `IN` expects it.
    ///
    /// The default follows x86-64: register 0 (AL/AX/EAX); a 1- or 2-byte read keeps
    /// the upper bits of RAX, a 4-byte read zero-extends into RAX. Port I/O has no
    /// 8-byte form, so `Qword` is an [`Error::InvalidArgument`].
    fn set_io_result(&mut self, width: AccessWidth, value: u64) -> Result {
        if width == AccessWidth::Qword {
            return Err(Error::InvalidArgument("port I/O is 1, 2 or 4 bytes wide"));
        }
        let new = regs::load_result(self.gpr(x86_gpr::RAX), value, width, width, false)?;
        self.set_gpr(x86_gpr::RAX, new);
        Ok(())
    }

    /// Completes an [`AxVCpuExitReason::MmioRead`]: loads `value` (`width` bytes)
    /// into register `reg` as the exit described it.
    ///
    /// The default applies [`regs::load_result`] to `gpr(reg)`.
    fn set_mmio_read_result(
        &mut self,
        reg: usize,
        width: AccessWidth,
        reg_width: AccessWidth,
        signed_ext: bool,
        value: u64,
    ) -> Result {
        let new = regs::load_result(self.gpr(reg), value, width, reg_width, signed_ext)?;
        self.set_gpr(reg, new);
        Ok(())
    }

    /// Completes an [`AxVCpuExitReason::MsrRead`] with the MSR's `value`.
    ///
    /// The default follows x86-64 `RDMSR`: EDX:EAX = value, and the upper 32 bits
    /// of RAX and RDX are cleared (Intel SDM Vol. 2B, RDMSR).
    fn set_msr_result(&mut self, value: u64) {
        self.set_gpr(x86_gpr::RAX, value & 0xffff_ffff);
        self.set_gpr(x86_gpr::RDX, value >> 32);
    }
}

/// The per-physical-CPU part of hardware virtualization (x86 VMX: the VMXON
/// region and `CR4.VMXE`; SVM: `EFER.SVME` and the host save area).
///
/// [`AxPerCpu`](crate::AxPerCpu) calls [`hardware_enable`](Self::hardware_enable)
/// only when [`is_enabled`](Self::is_enabled) is false and
/// [`hardware_disable`](Self::hardware_disable) only when it is true.
pub trait AxArchPerCpu: Sized {
    /// Creates the per-CPU state for physical CPU `cpu_id` (virtualization off).
    fn new(cpu_id: usize) -> Result<Self>;

    /// Whether virtualization is on on this CPU.
    fn is_enabled(&self) -> bool;

    /// Turns virtualization on on the current CPU.
    fn hardware_enable(&mut self) -> Result;

    /// Turns virtualization off on the current CPU.
    fn hardware_disable(&mut self) -> Result;
}
