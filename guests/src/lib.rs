#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod cpu;
pub mod exit;
pub mod hypercall;
pub mod idt;
pub mod multiboot;
pub mod ring3;

#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
pub mod port;

#[cfg(target_os = "none")]
pub use exit::exit;
pub use exit::{EXIT_FAIL, EXIT_PASS};
pub use multiboot::{Error, Result};

/// Declares the guest's main function: `entry!(main)` with
/// `fn main(mb_info: u32) -> !`.
///
/// The runtime's boot code calls it once, in 64-bit mode, with the COM1
/// console and the exception handlers ready; `mb_info` is the physical
/// address of the Multiboot information (the loader's EBX). Every guest
/// binary must invoke this macro exactly once: it defines the symbol the
/// runtime calls (`__axhv_guest_main`).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The guest's main function as the runtime calls it.
        #[unsafe(no_mangle)]
        extern "C" fn __axhv_guest_main(mb_info: u32) -> ! {
            let main: fn(u32) -> ! = $main;
            main(mb_info)
        }
    };
}

/// Prints the panic message on COM1 and ends the run with
/// [`exit::EXIT_PANIC`].
#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("guest: panic: {info}");
    exit(exit::EXIT_PANIC)
}
