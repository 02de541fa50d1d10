//! The CPUID a guest sees: the host's answer, filtered.
//!
//! The guest must not see VMX or SVM (this hypervisor does not nest), must see
//! the "hypervisor present" bit and this hypervisor's leaves at
//! `0x4000_0000`, and must see its own APIC ID rather than the physical one.

use crate::vendor::{CpuidResult, EXT1_ECX_SVM, leaf1_ecx};

/// First hypervisor leaf.
pub const HV_LEAF_BASE: u32 = 0x4000_0000;
/// Leaf with this hypervisor's feature bits (currently 0).
pub const HV_LEAF_FEATURES: u32 = 0x4000_0001;
/// Timing leaf (the convention VMware and KVM guests read): EAX = TSC
/// frequency in kHz, EBX = local APIC timer (bus) frequency in kHz.
pub const HV_LEAF_TIMING: u32 = 0x4000_0010;
/// Highest hypervisor leaf implemented.
pub const HV_MAX_LEAF: u32 = HV_LEAF_TIMING;
/// The virtual local APIC's default timer input: 1 GHz (in kHz).
pub const DEFAULT_APIC_BUS_KHZ: u32 = 1_000_000;
/// The 12-byte signature returned in EBX, ECX, EDX of leaf `0x4000_0000`.
pub const HV_SIGNATURE: [u8; 12] = *b"AxHvAxHvAxHv";

/// CR4.OSXSAVE (bit 18).
const CR4_OSXSAVE: u64 = 1 << 18;

/// The CPUID policy of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidPolicy {
    /// The vCPU's initial (x2)APIC ID, reported in leaf 1 `EBX[31:24]` and in
    /// leaves 0xB/0x1F EDX.
    pub apic_id: u32,
    /// Report x2APIC support (leaf 1 ECX bit 21): the virtual local APIC
    /// implements it even where the host has none.
    pub x2apic: bool,
    /// Report the TSC-deadline timer (leaf 1 ECX bit 24), likewise virtual.
    pub tsc_deadline: bool,
    /// TSC frequency in kHz for leaf `0x4000_0010` EAX (0: unknown).
    pub tsc_khz: u32,
    /// Local APIC timer input in kHz for leaf `0x4000_0010` EBX.
    pub apic_bus_khz: u32,
}

impl CpuidPolicy {
    /// The default policy for the vCPU with APIC ID `apic_id`: x2APIC and
    /// TSC deadline offered (the virtual local APIC has both).
    pub const fn new(apic_id: u32) -> Self {
        Self {
            apic_id,
            x2apic: true,
            tsc_deadline: true,
            tsc_khz: 0,
            apic_bus_khz: DEFAULT_APIC_BUS_KHZ,
        }
    }

    /// What the guest sees for CPUID(`leaf`, `subleaf`), given what the host
    /// returned (`host`) and the guest's CR4 (for the OSXSAVE bit, which the
    /// processor derives from the CR4 of whoever ran CPUID: the host).
    pub fn filter(
        &self,
        leaf: u32,
        subleaf: u32,
        host: CpuidResult,
        guest_cr4: u64,
    ) -> CpuidResult {
        let _ = subleaf;
        let mut r = host;
        match leaf {
            1 => {
                r.ecx &= !(leaf1_ecx::VMX | leaf1_ecx::SMX | leaf1_ecx::MONITOR);
                r.ecx |= leaf1_ecx::HYPERVISOR;
                set_bit(&mut r.ecx, leaf1_ecx::X2APIC, self.x2apic);
                set_bit(&mut r.ecx, leaf1_ecx::TSC_DEADLINE, self.tsc_deadline);
                let osxsave = r.ecx & leaf1_ecx::XSAVE != 0 && guest_cr4 & CR4_OSXSAVE != 0;
                set_bit(&mut r.ecx, leaf1_ecx::OSXSAVE, osxsave);
                // EBX[31:24] = initial APIC ID.
                r.ebx = (r.ebx & 0x00ff_ffff) | ((self.apic_id & 0xff) << 24);
            }
            // MONITOR/MWAIT leaf: hidden with the feature bit.
            5 => r = CpuidResult::default(),
            // Extended topology: EDX = x2APIC ID of this logical processor.
            0xB | 0x1F => r.edx = self.apic_id,
            HV_LEAF_BASE => {
                let sig = |i: usize| {
                    u32::from_le_bytes([
                        HV_SIGNATURE[i],
                        HV_SIGNATURE[i + 1],
                        HV_SIGNATURE[i + 2],
                        HV_SIGNATURE[i + 3],
                    ])
                };
                r = CpuidResult::new(HV_MAX_LEAF, sig(0), sig(4), sig(8));
            }
            HV_LEAF_FEATURES => r = CpuidResult::default(),
            HV_LEAF_TIMING => r = CpuidResult::new(self.tsc_khz, self.apic_bus_khz, 0, 0),
            // The rest of the hypervisor range (including KVM's 0x4000_0100
            // probes): nothing there.
            0x4000_0002..=0x4fff_ffff => r = CpuidResult::default(),
            0x8000_0001 => r.ecx &= !EXT1_ECX_SVM,
            // SVM feature leaf: hidden with SVM.
            0x8000_000A => r = CpuidResult::default(),
            _ => {}
        }
        r
    }
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= bit;
    } else {
        *reg &= !bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_LEAF1: CpuidResult = CpuidResult::new(
        0x00a2_0f12,
        0x0702_0800,
        0xfed8_3203 | (1 << 5) | (1 << 26),
        0x178b_fbff,
    );

    #[test]
    fn leaf1_hides_vmx_sets_hypervisor_and_apic_id() {
        let p = CpuidPolicy::new(3);
        let r = p.filter(1, 0, HOST_LEAF1, 0);
        assert_eq!(r.ecx & (1 << 5), 0, "VMX bit must be hidden");
        assert_ne!(r.ecx & (1 << 31), 0, "hypervisor bit must be set");
        assert_eq!(r.ebx >> 24, 3);
        assert_eq!(r.ebx & 0x00ff_ffff, 0x0002_0800);
        assert_ne!(r.ecx & (1 << 21), 0, "x2APIC offered by the vLAPIC");
        assert_eq!(r.ecx & (1 << 27), 0, "OSXSAVE follows guest CR4 (clear)");
        assert_eq!(r.eax, HOST_LEAF1.eax);
        assert_eq!(r.edx, HOST_LEAF1.edx);
        let r = p.filter(1, 0, HOST_LEAF1, 1 << 18);
        assert_ne!(r.ecx & (1 << 27), 0, "OSXSAVE follows guest CR4 (set)");
        let no_x2 = CpuidPolicy {
            x2apic: false,
            ..CpuidPolicy::new(0)
        };
        assert_eq!(no_x2.filter(1, 0, HOST_LEAF1, 0).ecx & (1 << 21), 0);
    }

    #[test]
    fn ext_leaf_hides_svm() {
        let p = CpuidPolicy::new(0);
        let host = CpuidResult::new(0x00a2_0f12, 0x2000_0000, 0x75c2_37ff, 0x2fd3_fbff);
        assert_ne!(host.ecx & 4, 0);
        let r = p.filter(0x8000_0001, 0, host, 0);
        assert_eq!(r.ecx, 0x75c2_37ff & !4);
        assert_eq!(r.edx, host.edx);
        let r = p.filter(0x8000_000A, 0, CpuidResult::new(1, 0x8000, 0, 0x1bcff), 0);
        assert_eq!(r, CpuidResult::default());
    }

    #[test]
    fn hypervisor_leaves() {
        let p = CpuidPolicy::new(0);
        let r = p.filter(0x4000_0000, 0, CpuidResult::new(0xd, 1, 2, 3), 0);
        assert_eq!(r.eax, 0x4000_0010);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
        assert_eq!(&sig, b"AxHvAxHvAxHv");
        assert_eq!(
            p.filter(0x4000_0100, 0, CpuidResult::new(9, 9, 9, 9), 0),
            CpuidResult::default()
        );
        // Timing leaf: TSC kHz in EAX, APIC bus kHz in EBX.
        assert_eq!(
            p.filter(0x4000_0010, 0, CpuidResult::new(9, 9, 9, 9), 0),
            CpuidResult::new(0, 1_000_000, 0, 0)
        );
        let p = CpuidPolicy {
            tsc_khz: 2_400_000,
            ..CpuidPolicy::new(0)
        };
        assert_eq!(
            p.filter(0x4000_0010, 0, CpuidResult::default(), 0).eax,
            2_400_000
        );
        assert_eq!(
            p.filter(0x4000_000f, 0, CpuidResult::new(9, 9, 9, 9), 0),
            CpuidResult::default()
        );
    }

    #[test]
    fn topology_leaf_reports_own_x2apic_id() {
        let p = CpuidPolicy::new(5);
        let r = p.filter(0xB, 1, CpuidResult::new(4, 2, 0x201, 7), 0);
        assert_eq!(r.edx, 5);
        assert_eq!(r.ecx, 0x201);
    }

    #[test]
    fn other_leaves_pass_through() {
        let p = CpuidPolicy::new(1);
        let host = CpuidResult::new(1, 2, 3, 4);
        assert_eq!(p.filter(7, 0, host, 0), host);
        assert_eq!(p.filter(0x8000_0008, 0, host, 0), host);
    }
}
