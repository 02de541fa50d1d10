//! The per-CPU VMX state: `IA32_FEATURE_CONTROL`, CR4.VMXE, the VMXON region.

use axvcpu::AxArchPerCpu;

use super::controls::{
    FeatureControlAction, VmxCaps, check_cr, cr0, cr0_for_vmxon, cr4, feature_control_action,
};
use super::vmx_ops::VmxCpuOps;
use crate::hal::{Hal, PhysFrames};
use crate::msr::{self, MsrAccess};
use crate::vendor::{CpuidSource, VirtKind, detect};
use crate::{Error, Result};

/// VMX on one physical CPU.
pub struct VmxPerCpu<H: Hal> {
    cpu_id: usize,
    vmxon_region: Option<PhysFrames<H>>,
    caps: Option<VmxCaps>,
    cr0_before: u64,
    cr4_before: u64,
}

impl<H: Hal> core::fmt::Debug for VmxPerCpu<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmxPerCpu")
            .field("cpu_id", &self.cpu_id)
            .field("enabled", &self.vmxon_region.is_some())
            .finish()
    }
}

impl<H: Hal> VmxPerCpu<H> {
    /// The capability MSRs read when VMX was turned on.
    pub fn caps(&self) -> Option<&VmxCaps> {
        self.caps.as_ref()
    }

    /// Turns VMX on (SDM 24.7): CPUID VMX bit, `IA32_FEATURE_CONTROL`
    /// (locking it with VMX enabled if firmware left it open), the basic
    /// capabilities, CR0 against its fixed bits (CR0.NE is set if the
    /// processor demands it, see [`cr0_for_vmxon`]), CR4.VMXE (with CR4
    /// checked against its fixed bits), a VMXON region with the revision
    /// identifier, then VMXON. On a VMXON failure CR0 and CR4 are restored.
    pub fn enable_with(
        &mut self,
        msrs: &mut impl MsrAccess,
        cpuid: &impl CpuidSource,
        cpu: &mut impl VmxCpuOps,
    ) -> Result {
        if self.vmxon_region.is_some() {
            return Err(Error::InvalidArgument("VMX already enabled on this CPU"));
        }
        if detect(cpuid).kind != Some(VirtKind::Vmx) {
            return Err(Error::VirtualizationUnavailable(
                "no VMX (CPUID.1:ECX bit 5)",
            ));
        }
        match feature_control_action(msrs.read(msr::IA32_FEATURE_CONTROL))? {
            FeatureControlAction::AlreadyEnabled => {}
            FeatureControlAction::Write(v) => msrs.write(msr::IA32_FEATURE_CONTROL, v),
        }
        let caps = VmxCaps::read(msrs);
        caps.basic.validate()?;
        let cr0_before = cpu.read_cr0();
        let cr0_on = cr0_for_vmxon(cr0_before, caps.cr0_fixed0, caps.cr0_fixed1)?;
        let cr4_before = cpu.read_cr4();
        let cr4_on = cr4_before | cr4::VMXE;
        check_cr("CR4", cr4_on, caps.cr4_fixed0, caps.cr4_fixed1)?;

        let mut region = PhysFrames::<H>::alloc_zeroed(1, "VMXON region")?;
        region.as_mut()[..4].copy_from_slice(&caps.basic.revision_id.to_le_bytes());
        if cr0_on != cr0_before {
            cpu.write_cr0(cr0_on);
        }
        cpu.write_cr4(cr4_on);
        if let Err(e) = cpu.vmxon(region.paddr()) {
            cpu.write_cr4(cr4_before);
            if cr0_on != cr0_before {
                cpu.write_cr0(cr0_before);
            }
            return Err(e);
        }
        self.vmxon_region = Some(region);
        self.caps = Some(caps);
        self.cr0_before = cr0_before;
        self.cr4_before = cr4_before;
        Ok(())
    }

    /// Turns VMX off: VMXOFF, CR4.VMXE and CR0.NE back to their previous
    /// values, region freed.
    pub fn disable_with(&mut self, cpu: &mut impl VmxCpuOps) -> Result {
        if self.vmxon_region.is_none() {
            return Err(Error::InvalidArgument("VMX not enabled on this CPU"));
        }
        cpu.vmxoff()?;
        let cr4_now = cpu.read_cr4();
        cpu.write_cr4((cr4_now & !cr4::VMXE) | (self.cr4_before & cr4::VMXE));
        let cr0_now = cpu.read_cr0();
        let cr0_back = (cr0_now & !cr0::NE) | (self.cr0_before & cr0::NE);
        if cr0_back != cr0_now {
            cpu.write_cr0(cr0_back);
        }
        self.vmxon_region = None;
        Ok(())
    }
}

impl<H: Hal> AxArchPerCpu for VmxPerCpu<H> {
    fn new(cpu_id: usize) -> axvcpu::Result<Self> {
        Ok(Self {
            cpu_id,
            vmxon_region: None,
            caps: None,
            cr0_before: 0,
            cr4_before: 0,
        })
    }

    fn is_enabled(&self) -> bool {
        self.vmxon_region.is_some()
    }

    fn hardware_enable(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: bare metal at CPL 0 on the CPU being enabled (the
            // `AxArchPerCpu` contract); `enable_with` reads the VMX MSRs only
            // after CPUID reported VMX, and PROCBASED_CTLS2/EPT_VPID_CAP only
            // when the capability bits say they exist.
            let (mut msrs, mut cpu) =
                unsafe { (crate::msr::HwMsr::new(), super::hw::HwVmxCpu::new()) };
            self.enable_with(&mut msrs, &crate::vendor::HwCpuid, &mut cpu)
                .map_err(|e| {
                    log::error!("VMX on CPU {}: {e}", self.cpu_id);
                    e.into()
                })
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported(
            "enabling VMX needs bare metal (target_os = \"none\")",
        ))
    }

    fn hardware_disable(&mut self) -> axvcpu::Result {
        #[cfg(target_os = "none")]
        {
            // SAFETY: as in `hardware_enable`; VMX is on.
            let mut cpu = unsafe { super::hw::HwVmxCpu::new() };
            self.disable_with(&mut cpu).map_err(|e| {
                log::error!("VMX off on CPU {}: {e}", self.cpu_id);
                e.into()
            })
        }
        #[cfg(not(target_os = "none"))]
        Err(axvcpu::Error::Unsupported(
            "disabling VMX needs bare metal (target_os = \"none\")",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::test_hal::TestHal;
    use crate::vendor::tests::vendor_leaf;
    use crate::vendor::{CpuidResult, FakeCpuid};
    use crate::vmx::controls::tests::skylake_msrs;
    use crate::vmx::vmx_ops::FakeVmxCpu;

    fn intel() -> FakeCpuid {
        FakeCpuid::new()
            .with(0, 0, vendor_leaf(0x16, b"GenuineIntel"))
            .with(1, 0, CpuidResult::new(0x50654, 0, 1 << 5, 0))
    }

    fn cpu() -> FakeVmxCpu {
        FakeVmxCpu {
            cr0: 0x8005_0033,
            cr4: 0x0000_06a0,
            ..Default::default()
        }
    }

    fn percpu() -> VmxPerCpu<TestHal> {
        <VmxPerCpu<TestHal> as AxArchPerCpu>::new(0).unwrap()
    }

    #[test]
    fn enable_locks_feature_control_and_sets_vmxe() {
        let mut p = percpu();
        let mut msrs = skylake_msrs().with(msr::IA32_FEATURE_CONTROL, 0);
        let mut c = cpu();
        p.enable_with(&mut msrs, &intel(), &mut c).unwrap();
        assert!(p.is_enabled());
        assert_eq!(msrs.read(msr::IA32_FEATURE_CONTROL), 0x5);
        assert_eq!(c.cr4, 0x26a0);
        let region = c.vmxon_region.unwrap();
        // SAFETY: the test HAL maps physical = virtual; the region is live.
        let rev = unsafe { *(region.as_usize() as *const u32) };
        assert_eq!(rev, 4, "VMXON region starts with the VMCS revision id");
        assert_eq!(c.log, ["write_cr4", "vmxon"]);
        assert_eq!(p.caps().unwrap().basic.revision_id, 4);

        p.disable_with(&mut c).unwrap();
        assert!(!p.is_enabled());
        assert_eq!(c.cr4, 0x06a0);
        assert_eq!(c.vmxon_region, None);
        assert!(p.disable_with(&mut c).is_err());
    }

    #[test]
    fn enable_sets_cr0_ne_and_disable_clears_it_again() {
        // GRUB under Bochs: CR0 = PG|CD|NW|WP|ET|PE, NE clear.
        let mut p = percpu();
        let mut c = FakeVmxCpu {
            cr0: 0xe001_0011,
            ..cpu()
        };
        p.enable_with(&mut skylake_msrs().with(0x3a, 5), &intel(), &mut c)
            .unwrap();
        assert_eq!(c.cr0, 0xe001_0031);
        assert_eq!(c.log, ["write_cr0", "write_cr4", "vmxon"]);
        p.disable_with(&mut c).unwrap();
        assert_eq!((c.cr0, c.cr4), (0xe001_0011, 0x06a0));
    }

    #[test]
    fn locked_feature_control_is_left_alone_or_fatal() {
        let mut p = percpu();
        let mut msrs = skylake_msrs().with(msr::IA32_FEATURE_CONTROL, 0x5);
        p.enable_with(&mut msrs, &intel(), &mut cpu()).unwrap();
        assert!(msrs.writes.is_empty());

        let mut p = percpu();
        let mut msrs = skylake_msrs().with(msr::IA32_FEATURE_CONTROL, 0x1);
        let mut c = cpu();
        assert_eq!(
            p.enable_with(&mut msrs, &intel(), &mut c),
            Err(Error::VmxDisabledByFirmware(1))
        );
        assert!(c.log.is_empty());
    }

    #[test]
    fn refusals() {
        let mut p = percpu();
        // No VMX in CPUID.
        let amd = FakeCpuid::new().with(0, 0, vendor_leaf(0xd, b"AuthenticAMD"));
        assert!(matches!(
            p.enable_with(&mut skylake_msrs(), &amd, &mut cpu()),
            Err(Error::VirtualizationUnavailable(_))
        ));
        // CR0 without PG violates CR0_FIXED0 (0x80000021) beyond repair.
        let mut c = FakeVmxCpu {
            cr0: 0x0005_0033,
            ..cpu()
        };
        assert!(matches!(
            p.enable_with(&mut skylake_msrs().with(0x3a, 5), &intel(), &mut c),
            Err(Error::FixedBitsViolated {
                register: "CR0",
                must_be_one: 0x8000_0000,
                ..
            })
        ));
        assert!(c.log.is_empty());
        // VMXON failure restores CR4.
        let mut c = FakeVmxCpu {
            fail_vmxon: true,
            ..cpu()
        };
        assert_eq!(
            p.enable_with(&mut skylake_msrs().with(0x3a, 5), &intel(), &mut c),
            Err(Error::VmFailInvalid)
        );
        assert_eq!(c.cr4, 0x06a0);
        assert!(!p.is_enabled());
        // ... and CR0 too, when NE had to be set for it.
        let mut c = FakeVmxCpu {
            fail_vmxon: true,
            cr0: 0x8005_0013,
            ..cpu()
        };
        assert_eq!(
            p.enable_with(&mut skylake_msrs().with(0x3a, 5), &intel(), &mut c),
            Err(Error::VmFailInvalid)
        );
        assert_eq!((c.cr0, c.cr4), (0x8005_0013, 0x06a0));
        assert_eq!(
            c.log,
            ["write_cr0", "write_cr4", "vmxon", "write_cr4", "write_cr0"]
        );
        // On the host the trait path refuses instead of faulting.
        assert!(matches!(
            p.hardware_enable(),
            Err(axvcpu::Error::Unsupported(_))
        ));
    }
}
