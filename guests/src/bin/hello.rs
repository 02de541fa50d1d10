//! `hello`: the smallest guest. Prints a greeting, the CPU vendor (CPUID
//! leaf 0) and the memory size from the Multiboot information, then exits
//! with 0. It fails (exit 1) if the loader gave no memory information,
//! which the header asks for (flag bit 1) and the spec then requires.

#![no_std]
#![no_main]

use guest_rt::multiboot::{self, BootInfo};
use guest_rt::{EXIT_FAIL, EXIT_PASS, cpu, entry, exit, println};

entry!(main);

/// Prints the memory map's usable RAM, if the loader gave a map.
fn print_memory_map(info: &BootInfo) {
    // SAFETY: `info` comes from `multiboot::boot_info` on the loader's
    // address, so its memory map location is the loader's.
    let Some(map) = (unsafe { multiboot::memory_map(info) }) else {
        println!("hello: no memory map");
        return;
    };
    match multiboot::usable_memory(map) {
        Ok((bytes, regions)) => println!(
            "hello: memory map: {} KiB usable in {} regions",
            bytes / 1024,
            regions
        ),
        Err(e) => println!("hello: bad memory map: {e}"),
    }
}

/// The guest's main function.
fn main(mb_info: u32) -> ! {
    println!("hello: Hello from axhv guest!");
    println!("hello: CPU vendor {}", cpu::vendor());
    // SAFETY: `mb_info` is the loader's EBX as the runtime passed it.
    let info = match unsafe { multiboot::boot_info(mb_info) } {
        Ok(info) => info,
        Err(e) => {
            println!("hello: FAIL boot information at {mb_info:#x}: {e}");
            exit(EXIT_FAIL)
        }
    };
    let Some(mem) = info.memory else {
        println!(
            "hello: FAIL no memory information (flags {:#x})",
            info.flags
        );
        exit(EXIT_FAIL)
    };
    println!(
        "hello: memory {} KiB (mem_lower {} KiB, mem_upper {} KiB)",
        mem.upper_end() / 1024,
        mem.lower_kib,
        mem.upper_kib
    );
    print_memory_map(&info);
    println!("hello: ok");
    exit(EXIT_PASS)
}
