//! XCR0 access shared by the SVM and VMX entry paths (the guest's XCR0 is
//! switched in around each VM entry).

/// Reads XCR0.
pub(crate) fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called when CR4.OSXSAVE is set, so XGETBV does not #UD.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes XCR0.
///
/// # Safety
///
/// CPL 0, CR4.OSXSAVE set, `value` validated against CPUID leaf 0xD.
pub(crate) unsafe fn xsetbv0(value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack));
    }
}
