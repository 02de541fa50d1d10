//! Port I/O: the only two instructions the console and the exit need.

/// Writes `value` to I/O port `port` (`out dx, al`).
pub fn outb(port: u16, value: u8) {
    // SAFETY: the guest runs at CPL 0 and owns its (virtual) machine; a
    // port write has no effect on Rust-visible memory. The ports used are
    // COM1 and the debug-exit device.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

/// Reads a byte from I/O port `port` (`in al, dx`).
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; the ports read (the COM1 line status) have no
    // side effect on memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value,
            options(nomem, nostack, preserves_flags));
    }
    value
}
