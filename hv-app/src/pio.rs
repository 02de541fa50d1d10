//! The machine's [`PortIo`]: `in` and `out` instructions, and the ways to
//! stop.

use core::arch::asm;

use hv_app::port::{ExitCode, PortIo, request_power_off_with, write_exit_marker};

/// Port I/O through `in`/`out` instructions.
#[derive(Debug)]
pub struct Pio(());

impl Pio {
    /// A handle for port I/O.
    ///
    /// # Safety
    ///
    /// The caller runs at CPL 0 and touches through this handle only the
    /// ports of devices that hv-app owns: a port write can reprogram
    /// DMA-capable hardware or reset the machine.
    pub const unsafe fn new() -> Self {
        Pio(())
    }
}

impl PortIo for Pio {
    fn inb(&mut self, port: u16) -> u8 {
        let v: u8;
        // SAFETY: `Pio::new`'s contract (CPL 0, a port we own); `in` uses
        // no stack and leaves the flags alone.
        unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nostack, preserves_flags)) };
        v
    }

    fn inw(&mut self, port: u16) -> u16 {
        let v: u16;
        // SAFETY: as in `inb`.
        unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack, preserves_flags)) };
        v
    }

    fn inl(&mut self, port: u16) -> u32 {
        let v: u32;
        // SAFETY: as in `inb`.
        unsafe {
            asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack, preserves_flags))
        };
        v
    }

    fn outb(&mut self, port: u16, value: u8) {
        // SAFETY: `Pio::new`'s contract (CPL 0, a port we own); `out` uses
        // no stack and leaves the flags alone. No `nomem`: a device write
        // must stay ordered with the memory accesses around it.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags))
        };
    }

    fn outw(&mut self, port: u16, value: u16) {
        // SAFETY: as in `outb`.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack, preserves_flags))
        };
    }

    fn outl(&mut self, port: u16, value: u32) {
        // SAFETY: as in `outb`.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
        };
    }
}

/// Stops this CPU for good: interrupts off, then `hlt` in a loop (an NMI or
/// SMI can still wake it, hence the loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this CPU; it touches no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Ends the run with `code` through the emulator's exit devices
/// ([`hv_app::port::request_power_off`]), then halts (on a machine without
/// them).
pub fn power_off(code: ExitCode) -> ! {
    power_off_with(code as u32)
}

/// Ends the run with a raw debug-exit `value` (a guest's exit status),
/// like [`power_off`]. The console's last line says `axhv: exit status
/// <value>` first, for emulators without a debug-exit device (Bochs).
pub fn power_off_with(value: u32) -> ! {
    // The lock-free writer: this also runs from the panic handler, whose
    // panicking code may hold the console lock.
    let mut uart = crate::console::emergency();
    let _ = write_exit_marker(&mut uart, value);
    uart.flush();
    // SAFETY: hv-app runs at CPL 0; the QEMU debug-exit and Bochs shutdown
    // ports are emulator devices for exactly this, and unused on a PC.
    let mut io = unsafe { Pio::new() };
    request_power_off_with(&mut io, value);
    halt_forever()
}
