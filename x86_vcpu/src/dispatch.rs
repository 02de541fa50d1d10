//! One vCPU type for both vendors, chosen at run time from CPUID.

use axaddrspace::{AccessWidth, GuestPhysAddr, HostPhysAddr};
use axvcpu::{AxArchPerCpu, AxArchVCpu, AxVCpuExitReason};

use crate::hal::Hal;
use crate::svm::{SvmPerCpu, SvmVcpu};
use crate::vcpu::{GuestCodeLocation, X86VcpuCreateConfig, X86VcpuExt, X86VcpuSetupConfig};
use crate::vendor::{HwCpuid, VirtKind, detect};
use crate::vmx::{VmxPerCpu, VmxVcpu};
use crate::{Error, Result};

/// A vCPU on whichever of VMX and SVM this processor has.
#[derive(Debug)]
pub enum X86Vcpu<H: Hal> {
    /// Intel VMX.
    Vmx(VmxVcpu<H>),
    /// AMD SVM.
    Svm(SvmVcpu<H>),
}

/// The per-CPU state matching [`X86Vcpu`].
#[derive(Debug)]
pub enum X86PerCpu<H: Hal> {
    /// Intel VMX.
    Vmx(VmxPerCpu<H>),
    /// AMD SVM.
    Svm(SvmPerCpu<H>),
}

fn hw_kind() -> axvcpu::Result<VirtKind> {
    detect(&HwCpuid)
        .kind
        .ok_or(Error::VirtualizationUnavailable("CPUID reports neither VMX nor SVM").into())
}

macro_rules! both {
    ($self:expr, $v:ident => $e:expr) => {
        match $self {
            X86Vcpu::Vmx($v) => $e,
            X86Vcpu::Svm($v) => $e,
        }
    };
}

impl<H: Hal> AxArchVCpu for X86Vcpu<H> {
    type CreateConfig = X86VcpuCreateConfig;
    type SetupConfig = X86VcpuSetupConfig;

    fn new(vcpu_id: usize, config: Self::CreateConfig) -> axvcpu::Result<Self> {
        Ok(match hw_kind()? {
            VirtKind::Vmx => Self::Vmx(VmxVcpu::new(vcpu_id, config)?),
            VirtKind::Svm => Self::Svm(SvmVcpu::new(vcpu_id, config)?),
        })
    }

    fn set_entry(&mut self, entry: GuestPhysAddr) -> axvcpu::Result {
        both!(self, v => v.set_entry(entry))
    }

    fn set_ept_root(&mut self, ept_root: HostPhysAddr) -> axvcpu::Result {
        both!(self, v => v.set_ept_root(ept_root))
    }

    fn setup(&mut self, config: Self::SetupConfig) -> axvcpu::Result {
        both!(self, v => v.setup(config))
    }

    fn run(&mut self) -> axvcpu::Result<AxVCpuExitReason> {
        both!(self, v => v.run())
    }

    fn bind(&mut self) -> axvcpu::Result {
        both!(self, v => v.bind())
    }

    fn unbind(&mut self) -> axvcpu::Result {
        both!(self, v => v.unbind())
    }

    fn set_gpr(&mut self, reg: usize, val: u64) {
        both!(self, v => v.set_gpr(reg, val))
    }

    fn gpr(&self, reg: usize) -> u64 {
        both!(self, v => v.gpr(reg))
    }

    fn inject_interrupt(&mut self, vector: u8) -> axvcpu::Result {
        both!(self, v => v.inject_interrupt(vector))
    }

    fn set_return_value(&mut self, val: u64) {
        both!(self, v => v.set_return_value(val))
    }

    fn set_io_result(&mut self, width: axaddrspace::AccessWidth, value: u64) -> axvcpu::Result {
        both!(self, v => v.set_io_result(width, value))
    }

    fn set_mmio_read_result(
        &mut self,
        reg: usize,
        width: axaddrspace::AccessWidth,
        reg_width: axaddrspace::AccessWidth,
        signed_ext: bool,
        value: u64,
    ) -> axvcpu::Result {
        both!(self, v => v.set_mmio_read_result(reg, width, reg_width, signed_ext, value))
    }

    fn set_msr_result(&mut self, value: u64) {
        both!(self, v => v.set_msr_result(value))
    }
}

impl<H: Hal> X86VcpuExt for X86Vcpu<H> {
    fn guest_code_location(&self) -> GuestCodeLocation {
        both!(self, v => v.guest_code_location())
    }

    fn decode_mmio(&mut self, addr: GuestPhysAddr, insn: &[u8]) -> Result<AxVCpuExitReason> {
        both!(self, v => v.decode_mmio(addr, insn))
    }

    fn emulate_mmio_rmw(
        &mut self,
        insn: &[u8],
        access: &mut dyn FnMut(AccessWidth, Option<u64>) -> u64,
    ) -> Result<()> {
        both!(self, v => v.emulate_mmio_rmw(insn, access))
    }

    #[inline]
    fn ready_for_interrupt(&self) -> bool {
        both!(self, v => v.ready_for_interrupt())
    }

    fn request_interrupt_window(&mut self) -> Result<()> {
        both!(self, v => v.request_interrupt_window())
    }

    fn interrupts_enabled(&self) -> bool {
        both!(self, v => v.interrupts_enabled())
    }
}

impl<H: Hal> AxArchPerCpu for X86PerCpu<H> {
    fn new(cpu_id: usize) -> axvcpu::Result<Self> {
        Ok(match hw_kind()? {
            VirtKind::Vmx => Self::Vmx(VmxPerCpu::new(cpu_id)?),
            VirtKind::Svm => Self::Svm(SvmPerCpu::new(cpu_id)?),
        })
    }

    fn is_enabled(&self) -> bool {
        match self {
            Self::Vmx(p) => p.is_enabled(),
            Self::Svm(p) => p.is_enabled(),
        }
    }

    fn hardware_enable(&mut self) -> axvcpu::Result {
        match self {
            Self::Vmx(p) => p.hardware_enable(),
            Self::Svm(p) => p.hardware_enable(),
        }
    }

    fn hardware_disable(&mut self) -> axvcpu::Result {
        match self {
            Self::Vmx(p) => p.hardware_disable(),
            Self::Svm(p) => p.hardware_disable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::test_hal::TestHal;
    use crate::vcpu::BootProtocol;
    use crate::vendor::SvmFeatures;

    #[test]
    fn delegates_to_the_backend() {
        let f = SvmFeatures {
            nested_paging: true,
            num_asids: 8,
            ..Default::default()
        };
        let mut v = X86Vcpu::Svm(
            SvmVcpu::<TestHal>::with_features(2, X86VcpuCreateConfig::new(2, 1), f).unwrap(),
        );
        v.set_entry(GuestPhysAddr::from(0x10_0000usize)).unwrap();
        v.set_ept_root(HostPhysAddr::from(0x1000usize)).unwrap();
        v.setup(X86VcpuSetupConfig {
            boot: BootProtocol::Multiboot { info_paddr: 0x500 },
        })
        .unwrap();
        assert_eq!(v.gpr(3), 0x500);
        v.set_return_value(9);
        assert_eq!(v.gpr(0), 9);
        assert!(v.inject_interrupt(3).is_err());
        assert!(matches!(v.run(), Err(axvcpu::Error::Unsupported(_))));
        let p = X86PerCpu::Svm(SvmPerCpu::<TestHal>::new(0).unwrap());
        assert!(!p.is_enabled());
    }
}
