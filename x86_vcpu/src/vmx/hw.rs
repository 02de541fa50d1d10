//! The VMX instructions, on bare metal only (`target_os = "none"`).
//!
//! Each wrapper turns the VMX status flags into a `Result`: CF = 1 is
//! VMfailInvalid, ZF = 1 is VMfailValid with the number in the
//! VM-instruction error field (SDM 31.2).

use axaddrspace::HostPhysAddr;

use super::vmcs::{VmcsAccess, VmcsField};
use super::vmx_ops::VmxCpuOps;
use crate::{Error, Result};

fn status(cf_or_zf: u8, zf: u8) -> Result {
    if zf != 0 {
        // SAFETY: VMfailValid means there is a current VMCS to read from.
        let (n, fail, _) = unsafe { vmread_flags(VmcsField::VM_INSTRUCTION_ERROR.0) };
        Err(Error::VmFailValid(if fail != 0 { 0 } else { n as u32 }))
    } else if cf_or_zf != 0 {
        Err(Error::VmFailInvalid)
    } else {
        Ok(())
    }
}

/// VMREAD returning (value, CF|ZF, ZF).
///
/// # Safety
/// VMX root operation.
unsafe fn vmread_flags(field: u32) -> (u64, u8, u8) {
    let value: u64;
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("vmread {v}, {f}", "setna {a}", "sete {z}", v = out(reg) value, f = in(reg) u64::from(field),
            a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
    }
    (value, a, z)
}

macro_rules! vmx_op_pa {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        ///
        /// # Safety
        /// CPL 0, CR4.VMXE set, and `pa` a 4 KiB page owned by the caller
        /// holding the right revision identifier.
        pub(crate) unsafe fn $name(pa: HostPhysAddr) -> Result {
            let pa = pa.as_usize() as u64;
            let (a, z): (u8, u8);
            // SAFETY: the caller's contract; the operand is a 64-bit memory
            // location holding the physical address.
            unsafe {
                core::arch::asm!(concat!($insn, " qword ptr [{p}]"), "setna {a}", "sete {z}",
                    p = in(reg) &pa, a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
            }
            status(a, z)
        }
    };
}

vmx_op_pa!(
    /// VMXON with the VMXON region at `pa`.
    vmxon,
    "vmxon"
);
vmx_op_pa!(
    /// VMCLEAR of the VMCS at `pa`.
    vmclear,
    "vmclear"
);
vmx_op_pa!(
    /// VMPTRLD of the VMCS at `pa`.
    vmptrld,
    "vmptrld"
);

/// VMXOFF.
///
/// # Safety
/// VMX root operation.
pub(crate) unsafe fn vmxoff() -> Result {
    let (a, z): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("vmxoff", "setna {a}", "sete {z}", a = out(reg_byte) a, z = out(reg_byte) z)
    };
    status(a, z)
}

/// The current VMCS, through VMREAD/VMWRITE.
#[derive(Debug)]
pub(crate) struct HwVmcs {
    _private: (),
}

impl HwVmcs {
    /// # Safety
    /// VMX root operation with the VMCS to access current (VMPTRLD) for as
    /// long as the handle is used.
    pub(crate) unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl VmcsAccess for HwVmcs {
    fn read_raw(&self, field: VmcsField) -> Result<u64> {
        // SAFETY: `HwVmcs::new`'s contract.
        let (v, a, z) = unsafe { vmread_flags(field.0) };
        status(a, z).map(|()| v)
    }

    fn write_raw(&mut self, field: VmcsField, value: u64) -> Result {
        let (a, z): (u8, u8);
        // SAFETY: `HwVmcs::new`'s contract; `VmcsAccess::write` checked width
        // and writability.
        unsafe {
            core::arch::asm!("vmwrite {f}, {v}", "setna {a}", "sete {z}", f = in(reg) u64::from(field.0),
                v = in(reg) value, a = out(reg_byte) a, z = out(reg_byte) z, options(nostack));
        }
        status(a, z)
    }
}

/// The real control registers and VMXON/VMXOFF.
#[derive(Debug)]
pub(crate) struct HwVmxCpu {
    _private: (),
}

impl HwVmxCpu {
    /// # Safety
    /// CPL 0 on the CPU being switched.
    pub(crate) unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl VmxCpuOps for HwVmxCpu {
    fn read_cr0(&self) -> u64 {
        let v: u64;
        // SAFETY: CPL 0 (`HwVmxCpu::new`); reading CR0 has no side effect.
        unsafe {
            core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn read_cr4(&self) -> u64 {
        let v: u64;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn write_cr4(&mut self, value: u64) {
        // SAFETY: CPL 0; the caller (`VmxPerCpu::enable_with`) only flips
        // VMXE on a value checked against the fixed-bit MSRs.
        unsafe {
            core::arch::asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags))
        };
    }

    fn vmxon(&mut self, region: HostPhysAddr) -> Result {
        // SAFETY: CPL 0, CR4.VMXE set and the region prepared by the caller.
        unsafe { vmxon(region) }
    }

    fn vmxoff(&mut self) -> Result {
        // SAFETY: called only after a successful VMXON.
        unsafe { vmxoff() }
    }
}
