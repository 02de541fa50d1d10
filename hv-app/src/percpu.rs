//! Per-CPU data: the structure every CPU reaches through its GS base.
//!
//! The binary allocates one [`PerCpu`] per CPU, stores its address in the
//! structure's first field and in `IA32_GS_BASE`, so `mov rax, gs:[0]`
//! ([`SELF_OFFSET`]) gives the current CPU's structure without a lookup
//! table. hv-app runs only at CPL 0 and never executes `swapgs`, so the GS
//! base keeps this value (guests' GS base is switched by VMSAVE/VMLOAD or
//! the VMCS, not by hv-app code).

use core::mem::offset_of;

/// `IA32_GS_BASE` MSR (SDM vol. 4 table 2-2, AMD APM vol. 2 table A-2).
pub const IA32_GS_BASE: u32 = 0xc000_0101;
/// `IA32_KERNEL_GS_BASE` MSR, the value `swapgs` exchanges with GS base.
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The data of one physical CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct PerCpu {
    /// Linear address of this structure (read back through `gs:[0]`).
    pub self_addr: u64,
    /// hv-app's CPU number: 0 for the bootstrap processor, then in bring-up
    /// order.
    pub cpu_id: u32,
    /// The initial local APIC ID (CPUID leaf 1, EBX bits 31-24).
    pub apic_id: u32,
    /// Whether this is the bootstrap processor.
    pub is_bsp: bool,
}

/// Offset of [`PerCpu::self_addr`]: `gs:[SELF_OFFSET]` is the structure's
/// own address.
pub const SELF_OFFSET: usize = offset_of!(PerCpu, self_addr);
/// Offset of [`PerCpu::cpu_id`].
pub const CPU_ID_OFFSET: usize = offset_of!(PerCpu, cpu_id);

impl PerCpu {
    /// The data of CPU `cpu_id` with local APIC ID `apic_id`; `self_addr`
    /// is set once the structure has its final address.
    pub const fn new(cpu_id: u32, apic_id: u32) -> Self {
        Self {
            self_addr: 0,
            cpu_id,
            apic_id,
            is_bsp: cpu_id == 0,
        }
    }
}

/// The initial APIC ID from CPUID leaf 1's EBX (bits 31-24; SDM vol. 2A
/// CPUID, AMD APM vol. 3 appendix E.3.2).
pub const fn initial_apic_id(cpuid_1_ebx: u32) -> u32 {
    cpuid_1_ebx >> 24
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_pointer_is_first() {
        assert_eq!(SELF_OFFSET, 0);
        assert_eq!(CPU_ID_OFFSET, 8);
        let p = PerCpu::new(0, 3);
        assert!(p.is_bsp);
        assert_eq!(p.apic_id, 3);
        assert!(!PerCpu::new(2, 5).is_bsp);
    }

    #[test]
    fn apic_id_is_the_top_byte_of_ebx() {
        // QEMU CPU 1 of a 2-CPU EPYC: EBX = 0x01_02_08_00 (APIC ID 1,
        // 2 logical processors, CLFLUSH line 8 * 8 bytes).
        assert_eq!(initial_apic_id(0x0102_0800), 1);
        assert_eq!(initial_apic_id(0xff00_0000), 0xff);
        assert_eq!(initial_apic_id(0x00ff_ffff), 0);
    }

    #[test]
    fn msr_numbers() {
        assert_eq!(IA32_GS_BASE, 0xC000_0101);
        assert_eq!(IA32_KERNEL_GS_BASE, IA32_GS_BASE + 1);
    }
}
