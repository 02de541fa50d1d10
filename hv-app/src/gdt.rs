//! The runtime GDT and TSS of the bootstrap processor, with the interrupt
//! stack table stacks for #DF, NMI and #MC.
//!
//! The boot GDT (entry.rs) has no TSS; this one keeps its selectors (0x08
//! code, 0x10 data) and adds a 64-bit TSS descriptor at 0x18. Application
//! processors will get their own GDT, TSS and IST stacks at bring-up (the
//! TSS descriptor's busy bit is per CPU).

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

/// Fills and loads the BSP's GDT and TSS: IST1-3 point at the tops of
/// their stacks. Call once, on the BSP, before the IDT is used.
pub fn init_bsp() {
    let stacks = (&raw const BSP_IST_STACKS) as u64;
    let top = |index: u8| stacks + u64::from(index) * IST_STACK_SIZE as u64;
    let mut tss = TaskStateSegment::new();
    let mut ist = [0u64; 7];
    ist[usize::from(IST_DOUBLE_FAULT - 1)] = top(IST_DOUBLE_FAULT);
    ist[usize::from(IST_NMI - 1)] = top(IST_NMI);
    ist[usize::from(IST_MACHINE_CHECK - 1)] = top(IST_MACHINE_CHECK);
    tss.ist = ist;
    let tss_ptr = &raw mut BSP_TSS;
    let [tss_lo, tss_hi] = split_u128(tss_descriptor(
        tss_ptr as u64,
        (TaskStateSegment::SIZE - 1) as u32,
    ));
    let gdt_ptr = &raw mut BSP_GDT;
    // SAFETY: init_bsp runs once, on the only CPU, before anything else
    // refers to these statics; raw pointers avoid references to `static
    // mut`.
    unsafe {
        tss_ptr.write(AlignedTss(tss));
        gdt_ptr.write([0, KERNEL_CODE64, KERNEL_DATA, tss_lo, tss_hi]);
    }
    let pointer = DescriptorTablePointer::new(gdt_ptr as u64, GDT_SLOTS * 8)
        .unwrap_or_else(|_| unreachable!("a 40-byte GDT fits the limit field"));
    // SAFETY: the GDT and TSS are statics that live forever; the code and
    // data descriptors are the flat 64-bit ones the CPU runs on already,
    // and slot 3 holds an available 64-bit TSS descriptor.
    unsafe {
        cpu::load_gdt(&pointer, KERNEL_CS, KERNEL_DS);
        cpu::load_tr(TSS_SELECTOR);
    }
}
