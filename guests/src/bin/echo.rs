//! `echo`: reads one line from its console (COM1, polled: LSR bit 0, then
//! RBR) and prints it back, then exits with 0. It proves console input
//! reaches a guest: the host's terminal or `--input` (Type-1), `hvctl vm
//! input` (Type-1.5). Without input within [`MAX_POLLS`] LSR reads it exits
//! with 1.

#![no_std]
#![no_main]

use guest_rt::console::COM1_BASE;
use guest_rt::port::inb;
use guest_rt::{EXIT_FAIL, EXIT_PASS, entry, exit, print, println};

entry!(main);

/// LSR reads before giving up (each is a VM exit: seconds, never a hang).
const MAX_POLLS: u64 = 50_000_000;
/// Longest line kept.
const LINE_MAX: usize = 64;

/// The next byte from COM1, or `None` after [`MAX_POLLS`] empty polls.
fn read_byte() -> Option<u8> {
    for _ in 0..MAX_POLLS {
        if inb(COM1_BASE + 5) & 1 != 0 {
            return Some(inb(COM1_BASE));
        }
    }
    None
}

/// The guest's main function.
fn main(_mb_info: u32) -> ! {
    print!("echo: type a line> ");
    let mut line = [0u8; LINE_MAX];
    let mut len = 0;
    loop {
        match read_byte() {
            None => {
                println!();
                println!("echo: FAIL no input");
                exit(EXIT_FAIL)
            }
            Some(b'\r' | b'\n') => break,
            Some(b) if len < LINE_MAX => {
                line[len] = b;
                len += 1;
            }
            Some(_) => {}
        }
    }
    println!();
    match core::str::from_utf8(&line[..len]) {
        Ok(text) => println!("echo: got {text}"),
        Err(_) => println!("echo: got {len} bytes, not UTF-8"),
    }
    exit(EXIT_PASS)
}
