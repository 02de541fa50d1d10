//! The runtime GDT and TSS of the bootstrap processor, with the interrupt
//! stack table stacks for #DF, NMI and #MC.
//!
//! The boot GDT (entry.rs) has no TSS; this one keeps its selectors (0x08
//! code, 0x10 data) and adds a 64-bit TSS descriptor at 0x18. Application
//! processors get their own GDT, TSS and IST stacks at bring-up
//! ([`init_ap`]; the TSS descriptor's busy bit is per CPU).

use hv_app::descriptor::{
    DescriptorTablePointer, KERNEL_CODE64, KERNEL_DATA, TaskStateSegment, split_u128,
    tss_descriptor,
};

use crate::cpu;

/// The kernel code segment selector (same as the boot GDT's).
pub const KERNEL_CS: u16 = 0x08;
/// The kernel data segment selector (same as the boot GDT's).
pub const KERNEL_DS: u16 = 0x10;
/// The TSS selector; its descriptor takes GDT slots 3 and 4.
pub const TSS_SELECTOR: u16 = 0x18;

/// IST index of the double-fault handler's stack.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST index of the NMI handler's stack.
pub const IST_NMI: u8 = 2;
/// IST index of the machine-check handler's stack.
pub const IST_MACHINE_CHECK: u8 = 3;

/// Size of each IST stack.
const IST_STACK_SIZE: usize = 16 * 1024;
/// Number of IST stacks in use.
const IST_STACKS: usize = 3;

#[repr(C, align(16))]
struct IstStacks([[u8; IST_STACK_SIZE]; IST_STACKS]);

/// Keeps the 104-byte TSS within one page (the SDM advises against a TSS
/// that crosses a page boundary).
#[repr(C, align(128))]
struct AlignedTss(TaskStateSegment);

/// Null, code, data, TSS (two slots).
const GDT_SLOTS: usize = 5;

static mut BSP_IST_STACKS: IstStacks = IstStacks([[0; IST_STACK_SIZE]; IST_STACKS]);
static mut BSP_TSS: AlignedTss = AlignedTss(TaskStateSegment::new());
static mut BSP_GDT: [u64; GDT_SLOTS] = [0; GDT_SLOTS];

/// Bytes of one CPU's IST stacks (#DF, NMI, #MC, in that order).
pub const IST_STACKS_BYTES: usize = IST_STACK_SIZE * IST_STACKS;

/// The GDT and TSS of an application processor. The BSP allocates them
/// before the AP starts and never frees them: the TSS descriptor's busy
/// bit and the IST pointers are per CPU.
#[repr(C)]
pub struct CpuTables {
    tss: AlignedTss,
    gdt: [u64; GDT_SLOTS],
}

impl CpuTables {
    /// Empty tables, filled by [`init_ap`].
    pub const fn new() -> Self {
        Self {
            tss: AlignedTss(TaskStateSegment::new()),
            gdt: [0; GDT_SLOTS],
        }
    }
}

/// Fills and loads the BSP's GDT and TSS: IST1-3 point at the tops of
/// their stacks. Call once, on the BSP, before the IDT is used.
pub fn init_bsp() {
    // SAFETY: init_bsp runs once, on the only CPU, before anything else
    // refers to these statics; the statics live forever.
    unsafe {
        fill_and_load(
            &raw mut BSP_TSS,
            &raw mut BSP_GDT,
            (&raw const BSP_IST_STACKS) as u64,
        )
    };
}

/// Fills and loads the calling AP's GDT and TSS in `tables`, with IST1-3
/// at the tops of the three stacks in `[ist_base, ist_base +
/// IST_STACKS_BYTES)`.
///
/// # Safety
///
/// `tables` and the stacks belong to the calling CPU alone and live
/// forever.
pub unsafe fn init_ap(tables: *mut CpuTables, ist_base: u64) {
    // SAFETY: the caller's contract; raw field pointers, no references.
    unsafe { fill_and_load(&raw mut (*tables).tss, &raw mut (*tables).gdt, ist_base) };
}

/// Writes a TSS whose IST1-3 are the tops of the stacks from `stacks`, a
/// GDT with the kernel code and data segments and that TSS, and loads
/// both.
///
/// # Safety
///
/// The three pointers are this CPU's alone and live forever.
unsafe fn fill_and_load(tss_ptr: *mut AlignedTss, gdt_ptr: *mut [u64; GDT_SLOTS], stacks: u64) {
    let top = |index: u8| stacks + u64::from(index) * IST_STACK_SIZE as u64;
    let mut tss = TaskStateSegment::new();
    let mut ist = [0u64; 7];
    ist[usize::from(IST_DOUBLE_FAULT - 1)] = top(IST_DOUBLE_FAULT);
    ist[usize::from(IST_NMI - 1)] = top(IST_NMI);
    ist[usize::from(IST_MACHINE_CHECK - 1)] = top(IST_MACHINE_CHECK);
    tss.ist = ist;
    let [tss_lo, tss_hi] = split_u128(tss_descriptor(
        tss_ptr as u64,
        (TaskStateSegment::SIZE - 1) as u32,
    ));
    // SAFETY: the caller's contract; raw pointer writes avoid references
    // to `static mut`.
    unsafe {
        tss_ptr.write(AlignedTss(tss));
        gdt_ptr.write([0, KERNEL_CODE64, KERNEL_DATA, tss_lo, tss_hi]);
    }
    let pointer = DescriptorTablePointer::new(gdt_ptr as u64, GDT_SLOTS * 8)
        .unwrap_or_else(|_| unreachable!("a 40-byte GDT fits the limit field"));
    // SAFETY: the GDT and TSS live forever (caller's contract); the code
    // and data descriptors are the flat 64-bit ones the CPU runs on
    // already, and slot 3 holds an available 64-bit TSS descriptor.
    unsafe {
        cpu::load_gdt(&pointer, KERNEL_CS, KERNEL_DS);
        cpu::load_tr(TSS_SELECTOR);
    }
}
