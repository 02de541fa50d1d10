//! The seam around the privileged operations of turning VMX on and off.

use alloc::vec::Vec;

use axaddrspace::HostPhysAddr;

use crate::{Error, Result};

/// Control registers and VMXON/VMXOFF of the current CPU. Implemented on
/// bare metal by the crate and by [`FakeVmxCpu`] for tests.
pub trait VmxCpuOps {
    /// Reads CR0.
    fn read_cr0(&self) -> u64;
    /// Writes CR0.
    fn write_cr0(&mut self, value: u64);
    /// Reads CR4.
    fn read_cr4(&self) -> u64;
    /// Writes CR4.
    fn write_cr4(&mut self, value: u64);
    /// VMXON with the region at `region`.
    fn vmxon(&mut self, region: HostPhysAddr) -> Result;
    /// VMXOFF.
    fn vmxoff(&mut self) -> Result;
}

/// A pretend CPU for tests: control registers in fields, VMXON recorded.
#[derive(Debug, Clone, Default)]
pub struct FakeVmxCpu {
    /// CR0.
    pub cr0: u64,
    /// CR4.
    pub cr4: u64,
    /// The region of the last successful VMXON, `None` after VMXOFF.
    pub vmxon_region: Option<HostPhysAddr>,
    /// Make the next VMXON fail with VMfailInvalid.
    pub fail_vmxon: bool,
    /// The operations done, in order ("vmxon", "vmxoff", "write_cr0",
    /// "write_cr4").
    pub log: Vec<&'static str>,
}

impl VmxCpuOps for FakeVmxCpu {
    fn read_cr0(&self) -> u64 {
        self.cr0
    }

    fn write_cr0(&mut self, value: u64) {
        self.log.push("write_cr0");
        self.cr0 = value;
    }

    fn read_cr4(&self) -> u64 {
        self.cr4
    }

    fn write_cr4(&mut self, value: u64) {
        self.log.push("write_cr4");
        self.cr4 = value;
    }

    fn vmxon(&mut self, region: HostPhysAddr) -> Result {
        self.log.push("vmxon");
        if self.fail_vmxon || self.cr4 & super::controls::cr4::VMXE == 0 {
            return Err(Error::VmFailInvalid);
        }
        if self.vmxon_region.is_some() {
            return Err(Error::VmFailValid(15));
        }
        self.vmxon_region = Some(region);
        Ok(())
    }

    fn vmxoff(&mut self) -> Result {
        self.log.push("vmxoff");
        self.vmxon_region
            .take()
            .map(|_| ())
            .ok_or(Error::VmFailInvalid)
    }
}
