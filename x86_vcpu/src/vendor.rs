//! Which hardware virtualization this processor offers, decided from CPUID.
//!
//! Everything here is a pure function of CPUID values obtained through the
//! [`CpuidSource`] seam, so the decision is tested with recorded values.

use alloc::collections::BTreeMap;

/// The four registers CPUID returns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidResult {
    /// A result made of four register values.
    pub const fn new(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        Self { eax, ebx, ecx, edx }
    }
}

/// Something that answers CPUID: the processor ([`HwCpuid`]) or a table
/// ([`FakeCpuid`]).
pub trait CpuidSource {
    /// CPUID with EAX = `leaf`, ECX = `subleaf`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
}

/// The CPUID instruction of the current processor (works at any privilege).
#[derive(Debug, Default, Clone, Copy)]
pub struct HwCpuid;

#[cfg(target_arch = "x86_64")]
impl CpuidSource for HwCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
        // SAFETY: CPUID is unprivileged and has no side effect besides the
        // four output registers. RBX is reserved by LLVM, so it is saved in a
        // scratch register around the instruction.
        unsafe {
            core::arch::asm!(
                "mov {tmp:r}, rbx",
                "cpuid",
                "xchg {tmp:r}, rbx",
                tmp = out(reg) ebx,
                inout("eax") leaf => eax,
                inout("ecx") subleaf => ecx,
                out("edx") edx,
                options(nomem, nostack, preserves_flags),
            );
        }
        CpuidResult { eax, ebx, ecx, edx }
    }
}

/// A CPUID table for tests: unknown leaves return all zeros.
#[derive(Debug, Default, Clone)]
pub struct FakeCpuid {
    leaves: BTreeMap<(u32, u32), CpuidResult>,
}

impl FakeCpuid {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: `(leaf, subleaf)` returns `r`.
    pub fn with(mut self, leaf: u32, subleaf: u32, r: CpuidResult) -> Self {
        self.leaves.insert((leaf, subleaf), r);
        self
    }
}

impl CpuidSource for FakeCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.leaves
            .get(&(leaf, subleaf))
            .or_else(|| self.leaves.get(&(leaf, 0)))
            .copied()
            .unwrap_or_default()
    }
}

/// The processor's vendor, from CPUID leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
    /// "HygonGenuine" (AMD-derived, has SVM).
    Hygon,
    /// Anything else.
    Other,
}

/// The hardware virtualization extension in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtKind {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
}

/// Bits of CPUID leaf 1 ECX.
pub mod leaf1_ecx {
    /// VMX available.
    pub const VMX: u32 = 1 << 5;
    /// Safer mode extensions.
    pub const SMX: u32 = 1 << 6;
    /// x2APIC available.
    pub const X2APIC: u32 = 1 << 21;
    /// TSC deadline timer.
    pub const TSC_DEADLINE: u32 = 1 << 24;
    /// XSAVE available.
    pub const XSAVE: u32 = 1 << 26;
    /// OS has set CR4.OSXSAVE.
    pub const OSXSAVE: u32 = 1 << 27;
    /// Running under a hypervisor (always 0 on bare metal).
    pub const HYPERVISOR: u32 = 1 << 31;
    /// MONITOR/MWAIT.
    pub const MONITOR: u32 = 1 << 3;
}

/// Bit of CPUID leaf 0x8000_0001 ECX: SVM available.
pub const EXT1_ECX_SVM: u32 = 1 << 2;
/// Bit of CPUID leaf 0x8000_0001 EDX: 1 GiB pages.
pub const EXT1_EDX_PDPE1GB: u32 = 1 << 26;
/// Bit of CPUID leaf 0x8000_0001 EDX: RDTSCP (and `IA32_TSC_AUX`).
pub const EXT1_EDX_RDTSCP: u32 = 1 << 27;

/// SVM features from CPUID leaf 0x8000_000A EDX (AMD APM vol. 3, appendix E).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SvmFeatures {
    /// Number of ASIDs (EBX).
    pub num_asids: u32,
    /// Nested paging (EDX bit 0).
    pub nested_paging: bool,
    /// NRIP save: the VMCB holds the next RIP after an intercept (EDX bit 3).
    pub nrip_save: bool,
    /// VMCB clean bits (EDX bit 5).
    pub vmcb_clean: bool,
    /// TLB flush by ASID (EDX bit 6).
    pub flush_by_asid: bool,
    /// Decode assists: instruction bytes in the VMCB (EDX bit 7).
    pub decode_assists: bool,
    /// RDTSCP and so `IA32_TSC_AUX` exist (leaf 0x8000_0001 EDX bit 27; not
    /// an SVM feature, but what the SVM vCPU needs to switch TSC_AUX).
    pub rdtscp: bool,
}

impl SvmFeatures {
    /// Decodes leaf 0x8000_000A.
    pub fn from_leaf(r: CpuidResult) -> Self {
        Self {
            num_asids: r.ebx,
            nested_paging: r.edx & (1 << 0) != 0,
            nrip_save: r.edx & (1 << 3) != 0,
            vmcb_clean: r.edx & (1 << 5) != 0,
            flush_by_asid: r.edx & (1 << 6) != 0,
            decode_assists: r.edx & (1 << 7) != 0,
            rdtscp: false,
        }
    }
}

/// What this processor offers for virtualization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwVirtInfo {
    /// The vendor string decoded.
    pub vendor: CpuVendor,
    /// VMX or SVM, if CPUID reports one.
    pub kind: Option<VirtKind>,
    /// SVM details (only when `kind` is SVM).
    pub svm: Option<SvmFeatures>,
}

fn vendor_of(r: CpuidResult) -> CpuVendor {
    let mut s = [0u8; 12];
    s[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    s[4..8].copy_from_slice(&r.edx.to_le_bytes());
    s[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    match &s {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" => CpuVendor::Amd,
        b"HygonGenuine" => CpuVendor::Hygon,
        _ => CpuVendor::Other,
    }
}

/// Decides VMX or SVM from CPUID. VMX is reported from leaf 1 ECX bit 5;
/// SVM from leaf 0x8000_0001 ECX bit 2 (only if the maximum extended leaf
/// reaches it). Whether firmware left the feature enabled is checked later,
/// when the per-CPU state turns it on (`IA32_FEATURE_CONTROL` / `VM_CR`).
pub fn detect(cpuid: &impl CpuidSource) -> HwVirtInfo {
    let leaf0 = cpuid.cpuid(0, 0);
    let vendor = vendor_of(leaf0);
    let max_ext = cpuid.cpuid(0x8000_0000, 0).eax;
    let vmx = leaf0.eax >= 1 && cpuid.cpuid(1, 0).ecx & leaf1_ecx::VMX != 0;
    let ext1 = if max_ext >= 0x8000_0001 {
        cpuid.cpuid(0x8000_0001, 0)
    } else {
        CpuidResult::default()
    };
    let svm = ext1.ecx & EXT1_ECX_SVM != 0;
    let (kind, svm_info) = match (vendor, vmx, svm) {
        (CpuVendor::Intel, true, _) => (Some(VirtKind::Vmx), None),
        (CpuVendor::Amd | CpuVendor::Hygon, _, true) => {
            let mut f = if max_ext >= 0x8000_000A {
                SvmFeatures::from_leaf(cpuid.cpuid(0x8000_000A, 0))
            } else {
                SvmFeatures::default()
            };
            f.rdtscp = ext1.edx & EXT1_EDX_RDTSCP != 0;
            (Some(VirtKind::Svm), Some(f))
        }
        // Another vendor implementing one of the two (e.g. Zhaoxin has VMX).
        (_, true, false) => (Some(VirtKind::Vmx), None),
        _ => (None, None),
    };
    HwVirtInfo {
        vendor,
        kind,
        svm: svm_info,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// CPUID leaf 0 register values spelling `s`.
    pub(crate) fn vendor_leaf(max: u32, s: &[u8; 12]) -> CpuidResult {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        CpuidResult::new(max, w(0), w(8), w(4))
    }

    #[test]
    fn intel_with_vmx() {
        let c = FakeCpuid::new()
            .with(0, 0, vendor_leaf(0x16, b"GenuineIntel"))
            .with(1, 0, CpuidResult::new(0x50654, 0, 0x7ffe_fbff, 0xbfeb_fbff));
        let info = detect(&c);
        assert_eq!(info.vendor, CpuVendor::Intel);
        assert_eq!(info.kind, Some(VirtKind::Vmx));
        assert_eq!(info.svm, None);
    }

    #[test]
    fn intel_without_vmx_bit() {
        let c = FakeCpuid::new()
            .with(0, 0, vendor_leaf(0x16, b"GenuineIntel"))
            .with(
                1,
                0,
                CpuidResult::new(0x50654, 0, 0x7ffe_fbff & !(1 << 5), 0),
            );
        assert_eq!(detect(&c).kind, None);
    }

    #[test]
    fn amd_epyc_with_svm_like_qemu_tcg() {
        // QEMU TCG `-cpu EPYC,+svm,+npt`: NP yes, NRIP save no, decode assists no.
        let c = FakeCpuid::new()
            .with(0, 0, vendor_leaf(0xd, b"AuthenticAMD"))
            .with(0x8000_0000, 0, CpuidResult::new(0x8000_001f, 0, 0, 0))
            .with(
                0x8000_0001,
                0,
                CpuidResult::new(0x800f12, 0, 0x0040_03f7, 0x2fd3_fbff),
            )
            .with(0x8000_000A, 0, CpuidResult::new(1, 0x10, 0, 0b1));
        let info = detect(&c);
        assert!(info.svm.unwrap().rdtscp, "EPYC EDX 0x2fd3fbff has bit 27");
        assert_eq!(info.vendor, CpuVendor::Amd);
        assert_eq!(info.kind, Some(VirtKind::Svm));
        let f = info.svm.unwrap();
        assert!(f.nested_paging);
        assert!(!f.nrip_save);
        assert!(!f.decode_assists);
        assert_eq!(f.num_asids, 16);
    }

    #[test]
    fn amd_without_svm_or_without_extended_leaf() {
        let c = FakeCpuid::new()
            .with(0, 0, vendor_leaf(0xd, b"AuthenticAMD"))
            .with(0x8000_0000, 0, CpuidResult::new(0x8000_0000, 0, 0, 0))
            // The bit is set but the leaf is beyond the maximum: ignored.
            .with(0x8000_0001, 0, CpuidResult::new(0, 0, EXT1_ECX_SVM, 0));
        let info = detect(&c);
        assert_eq!(info.kind, None);
        assert_eq!(detect(&FakeCpuid::new()).vendor, CpuVendor::Other);
    }

    #[test]
    fn svm_features_decode() {
        let f = SvmFeatures::from_leaf(CpuidResult::new(1, 0x8000, 0, 0b1110_1001));
        assert!(f.nested_paging && f.nrip_save && f.vmcb_clean && f.flush_by_asid);
        assert!(f.decode_assists);
        assert_eq!(f.num_asids, 0x8000);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn hw_cpuid_vendor_matches_leaf0() {
        // The host's own CPUID: the vendor must be one of the known strings
        // (the development machines are AMD, CI may be Intel).
        let v = vendor_of(HwCpuid.cpuid(0, 0));
        assert_ne!(v, CpuVendor::Other);
    }
}
