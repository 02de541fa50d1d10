//! `spin`: a guest that never ends by itself and makes no VM exit once it
//! loops. It prints one line, then spins on a counter forever. The
//! hypervisor must still be able to stop and destroy it (Type-1.5: the
//! root VM's `hvctl vm destroy` interrupts its CPU).

#![no_std]
#![no_main]

use guest_rt::{entry, println};

entry!(main);

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    println!("spin: looping without exits until the hypervisor stops this VM");
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}
