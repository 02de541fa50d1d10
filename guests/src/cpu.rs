//! CPU identification: the vendor string of CPUID leaf 0.

use core::fmt;

/// The 12-byte vendor string of CPUID leaf 0: the bytes of EBX, EDX, ECX in
/// that order (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, CPUID Fn0000_0000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorId(pub [u8; 12]);

/// Vendor string of AMD processors.
pub const AMD: VendorId = VendorId(*b"AuthenticAMD");
/// Vendor string of Intel processors.
pub const INTEL: VendorId = VendorId(*b"GenuineIntel");
/// Vendor string of Hygon processors (AMD-derived, SVM).
pub const HYGON: VendorId = VendorId(*b"HygonGenuine");

impl VendorId {
    /// The vendor string from CPUID leaf 0's EBX, EDX and ECX.
    pub const fn from_registers(ebx: u32, edx: u32, ecx: u32) -> Self {
        let (b, d, c) = (ebx.to_le_bytes(), edx.to_le_bytes(), ecx.to_le_bytes());
        Self([
            b[0], b[1], b[2], b[3], d[0], d[1], d[2], d[3], c[0], c[1], c[2], c[3],
        ])
    }

    /// The string, or `"?"` if it is not ASCII text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("?")
    }

    /// Whether this is a vendor whose virtualization is AMD SVM (AMD,
    /// Hygon) rather than Intel VMX.
    pub fn is_amd_like(&self) -> bool {
        *self == AMD || *self == HYGON
    }
}

impl fmt::Display for VendorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The vendor of the CPU the guest runs on (CPUID leaf 0; under a
/// hypervisor, what the hypervisor reports).
pub fn vendor() -> VendorId {
    let r = core::arch::x86_64::__cpuid(0);
    VendorId::from_registers(r.ebx, r.edx, r.ecx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_amd_and_intel_register_values() {
        // "Auth" "enti" "cAMD" and "Genu" "ineI" "ntel" as the CPU returns them.
        assert_eq!(
            VendorId::from_registers(0x6874_7541, 0x6974_6e65, 0x444d_4163),
            AMD
        );
        assert_eq!(
            VendorId::from_registers(0x756e_6547, 0x4965_6e69, 0x6c65_746e),
            INTEL
        );
        assert_eq!(AMD.as_str(), "AuthenticAMD");
        assert!(AMD.is_amd_like() && HYGON.is_amd_like() && !INTEL.is_amd_like());
    }

    #[test]
    fn non_utf8_vendor_prints_as_question_mark() {
        assert_eq!(VendorId([0xff; 12]).as_str(), "?");
    }
}
