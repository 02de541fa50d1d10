//! Per-CPU data through the GS base (see `hv_app::percpu`).

use alloc::boxed::Box;
use core::arch::asm;

use hv_app::percpu::{CPU_ID_OFFSET, IA32_GS_BASE, PerCpu, SELF_OFFSET, initial_apic_id};

use crate::cpu;

/// Allocates the BSP's [`PerCpu`] on the heap (it lives forever) and points
/// `IA32_GS_BASE` at it. Call once, after the heap is up and after
/// `gdt::init_bsp` (loading GS with a null selector may clear the base).
pub fn init_bsp() -> &'static PerCpu {
    let apic_id = initial_apic_id(cpu::cpuid(1)[1]);
    let per_cpu = Box::leak(Box::new(PerCpu::new(0, apic_id)));
    per_cpu.self_addr = core::ptr::from_mut(per_cpu) as u64;
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the value is the
    // canonical address of a leaked, never freed PerCpu.
    unsafe { cpu::wrmsr(IA32_GS_BASE, per_cpu.self_addr) };
    per_cpu
}

/// Whether this CPU's GS base has been set.
fn gs_base_set() -> bool {
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU.
    unsafe { cpu::rdmsr(IA32_GS_BASE) != 0 }
}

/// This CPU's data, if [`init_bsp`] (or the AP bring-up) has run on it.
pub fn current() -> Option<&'static PerCpu> {
    if !gs_base_set() {
        return None;
    }
    let addr: u64;
    // SAFETY: the GS base points at this CPU's PerCpu, whose first field
    // is its own address.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) addr, off = const SELF_OFFSET,
             options(nostack, readonly, preserves_flags))
    };
    // SAFETY: a leaked PerCpu that is never freed nor mutated again.
    Some(unsafe { &*(addr as *const PerCpu) })
}

/// This CPU's id, if per-CPU data is set up (used by the exception
/// handler, which must not trust much).
pub fn current_id() -> Option<u32> {
    if !gs_base_set() {
        return None;
    }
    let id: u32;
    // SAFETY: as in `current`.
    unsafe {
        asm!("mov {:e}, gs:[{off}]", out(reg) id, off = const CPU_ID_OFFSET,
             options(nostack, readonly, preserves_flags))
    };
    Some(id)
}
