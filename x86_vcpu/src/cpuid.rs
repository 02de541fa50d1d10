//! The CPUID a guest sees: the host's answer, filtered.
//!
//! The guest must not see VMX or SVM (this hypervisor does not nest), must see
//! the "hypervisor present" bit and this hypervisor's leaves at
//! `0x4000_0000`, and must see its own APIC ID rather than the physical one.
//!
//! When the TSC frequency is known ([`CpuidPolicy::tsc_khz`]), it is also
//! reported where guests look for it without knowing this hypervisor: leaf
//! [`FREQ_LEAF`] (`0x16`, Intel's "processor frequency information", which
//! NimbOS and ArceOS read through raw-cpuid) with the maximum basic leaf
//! raised to reach it. Basic leaves the host does not have, between its own
//! maximum and `0x16`, then read as zeros ([`CpuidPolicy::answer`]): the
//! processor would otherwise return the data of its highest leaf for them.

use crate::vendor::{CpuidResult, CpuidSource, EXT1_ECX_SVM, leaf1_ecx};

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
/// Processor frequency leaf (Intel SDM vol. 2A, CPUID leaf 16H): EAX =
/// base frequency in MHz, EBX = maximum frequency in MHz, ECX = bus
/// (reference) frequency in MHz, each in bits 15:0.
pub const FREQ_LEAF: u32 = 0x16;
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

    /// This policy for a VM with (`present`) or without a virtual local
    /// APIC: x2APIC (leaf 1 ECX bit 21) and the TSC-deadline timer (bit 24)
    /// are the virtual local APIC's, so they are offered exactly when the
    /// VM has one (its x2APIC MSRs 0x800-0x8FF and `IA32_TSC_DEADLINE`
    /// are emulated only then).
    pub const fn with_local_apic(mut self, present: bool) -> Self {
        self.x2apic = present;
        self.tsc_deadline = present;
        self
    }

    /// Whether the guest's maximum basic leaf is raised to [`FREQ_LEAF`]:
    /// when the TSC frequency is known.
    pub const fn reports_frequency_leaf(&self) -> bool {
        self.tsc_khz != 0
    }

    /// What the guest sees for CPUID(`leaf`, `subleaf`), asking the host
    /// processor `host` (the exit handlers' entry point). A basic leaf the
    /// host lacks but the guest sees (up to [`FREQ_LEAF`], when the maximum
    /// is raised) starts from zeros instead of the host's answer; only
    /// leaves 2 to `0x16` cost the extra host CPUID that tells.
    #[inline]
    pub fn answer(
        &self,
        leaf: u32,
        subleaf: u32,
        host: &impl CpuidSource,
        guest_cr4: u64,
    ) -> CpuidResult {
        let raw = if self.reports_frequency_leaf()
            && (2..=FREQ_LEAF).contains(&leaf)
            && host.cpuid(0, 0).eax < leaf
        {
            CpuidResult::default()
        } else {
            host.cpuid(leaf, subleaf)
        };
        self.filter(leaf, subleaf, raw, guest_cr4)
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
            0 if self.reports_frequency_leaf() => r.eax = r.eax.max(FREQ_LEAF),
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
            FREQ_LEAF if self.reports_frequency_leaf() => {
                let tsc = mhz(self.tsc_khz);
                r = CpuidResult::new(tsc, tsc, mhz(self.apic_bus_khz), 0);
            }
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

/// `khz` in MHz, rounded to nearest, saturated to the 16 bits leaf 0x16
/// has per field.
const fn mhz(khz: u32) -> u32 {
    let m = (khz as u64 + 500) / 1000;
    if m > 0xffff { 0xffff } else { m as u32 }
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
    fn leaf1_ecx_follows_the_local_apic() {
        // HOST_LEAF1.ECX = 0xfed8_3223: VMX (5), XSAVE (26), OSXSAVE (27)
        // and the hypervisor bit (31) set; x2APIC (21), TSC deadline (24)
        // clear.
        assert_eq!(HOST_LEAF1.ecx, 0xfed8_3223);
        let with = CpuidPolicy::new(0).with_local_apic(true);
        // VMX and OSXSAVE (CR4.OSXSAVE = 0) cleared; x2APIC and TSC
        // deadline set.
        assert_eq!(with.filter(1, 0, HOST_LEAF1, 0).ecx, 0xf7f8_3203);
        let without = CpuidPolicy::new(0).with_local_apic(false);
        assert_eq!(without.filter(1, 0, HOST_LEAF1, 0).ecx, 0xf6d8_3203);
        assert!(!without.x2apic && !without.tsc_deadline);
        // The default is a VM with a local APIC.
        assert_eq!(with, CpuidPolicy::new(0));
        // Bare metal (ECX 0x7ffa_fbbf: x2APIC, TSC deadline, VMX, MONITOR,
        // OSXSAVE set, hypervisor bit clear): VMX (5), MONITOR (3) and
        // OSXSAVE (27) go, the hypervisor bit (31) comes.
        let bare = CpuidResult::new(0x0009_06ea, 0x0010_0800, 0x7ffa_fbbf, 0xbfeb_fbff);
        assert_eq!(with.filter(1, 0, bare, 0).ecx, 0xf7fa_fb97);
        // Without a local APIC the host's x2APIC and TSC deadline go too.
        assert_eq!(without.filter(1, 0, bare, 0).ecx, 0xf6da_fb97);
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

    /// The TSC frequency hv-app measured under QEMU TCG in one run.
    const TSC_KHZ: u32 = 2_994_512;

    fn with_tsc() -> CpuidPolicy {
        CpuidPolicy {
            tsc_khz: TSC_KHZ,
            ..CpuidPolicy::new(0)
        }
    }

    #[test]
    fn max_basic_leaf_is_raised_to_0x16_when_the_tsc_frequency_is_known() {
        // QEMU `-cpu EPYC`: level 0xd, "AuthenticAMD".
        let epyc = CpuidResult::new(0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65);
        assert_eq!(CpuidPolicy::new(0).filter(0, 0, epyc, 0), epyc);
        let r = with_tsc().filter(0, 0, epyc, 0);
        assert_eq!(r.eax, 0x16);
        assert_eq!((r.ebx, r.ecx, r.edx), (epyc.ebx, epyc.ecx, epyc.edx));
        // A host that already goes further keeps its maximum.
        let icelake = CpuidResult::new(0x1b, 1, 2, 3);
        assert_eq!(with_tsc().filter(0, 0, icelake, 0).eax, 0x1b);
    }

    #[test]
    fn frequency_leaf_reports_tsc_and_bus_mhz() {
        // i7-6700K's own leaf 0x16: 4000 MHz base, 4200 max, 100 MHz bus.
        let host = CpuidResult::new(0xfa0, 0x1068, 0x64, 0);
        // Unknown frequency: the host's leaf passes through.
        assert_eq!(CpuidPolicy::new(0).filter(0x16, 0, host, 0), host);
        // 2994.512 MHz rounds to 2995; the vLAPIC's 1 GHz bus is 1000 MHz.
        assert_eq!(
            with_tsc().filter(0x16, 0, host, 0),
            CpuidResult::new(2995, 2995, 1000, 0)
        );
        let p = CpuidPolicy {
            tsc_khz: 2_400_000,
            apic_bus_khz: 99_500,
            ..CpuidPolicy::new(0)
        };
        assert_eq!(
            p.filter(0x16, 0, CpuidResult::default(), 0),
            CpuidResult::new(2400, 2400, 100, 0)
        );
        // Each field has 16 bits.
        let p = CpuidPolicy {
            tsc_khz: u32::MAX,
            ..CpuidPolicy::new(0)
        };
        assert_eq!(p.filter(0x16, 0, host, 0).eax, 0xffff);
    }

    #[test]
    fn leaves_the_host_lacks_read_as_zero_below_the_raised_maximum() {
        use crate::vendor::FakeCpuid;
        let leaf_d = CpuidResult::new(0x7, 0x340, 0x340, 0);
        // QEMU answers a leaf above its maximum with the data of its highest
        // leaf (0xd), as Intel documents.
        let host = FakeCpuid::new()
            .with(
                0,
                0,
                CpuidResult::new(0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            )
            .with(0xd, 0, leaf_d)
            .with(0x10, 0, leaf_d)
            .with(0x16, 0, leaf_d)
            .with(0x8000_0008, 0, CpuidResult::new(0x3030, 0, 0, 0));
        let p = with_tsc();
        assert_eq!(p.answer(0, 0, &host, 0).eax, 0x16);
        assert_eq!(p.answer(0xd, 0, &host, 0), leaf_d);
        assert_eq!(p.answer(0x10, 0, &host, 0), CpuidResult::default());
        assert_eq!(
            p.answer(0x16, 0, &host, 0),
            CpuidResult::new(2995, 2995, 1000, 0)
        );
        assert_eq!(p.answer(0x8000_0008, 0, &host, 0).eax, 0x3030);
        // Without a raised maximum the guest never asks beyond the host's.
        assert_eq!(CpuidPolicy::new(0).answer(0x10, 0, &host, 0), leaf_d);
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
