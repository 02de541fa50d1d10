//! `triple-fault`: loads an IDT with limit 0 and executes `ud2`. The #UD
//! cannot be delivered (#GP), nor can the #GP (#DF), nor the #DF: a triple
//! fault, which shuts the (virtual) machine down. The hypervisor must end
//! the VM with a triple-fault/shutdown reason; on plain QEMU with
//! `-no-reboot` the run ends with status 0. If execution continues after
//! `ud2`, the guest prints FAIL and exits 1.

#![no_std]
#![no_main]

use guest_rt::idt::{DescriptorTablePointer, load_idt};
use guest_rt::{EXIT_FAIL, entry, exit, println};

entry!(main);

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    println!("triple-fault: loading an empty IDT and faulting");
    let empty = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: the point of this guest: after this no exception can be
    // delivered, and the next instruction raises one on purpose.
    unsafe {
        load_idt(&empty);
        core::arch::asm!("ud2", options(nomem, nostack));
    }
    println!("triple-fault: FAIL execution continued after the triple fault");
    exit(EXIT_FAIL)
}
