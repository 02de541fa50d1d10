//! The serial console on COM1, `print!`/`println!` and the `log` logger.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use hv_app::uart16550::{COM1_BASE, Uart16550};
use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::pio::Pio;

/// Prints to the console.
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
macro_rules! println {
    () => { print!("\n") };
    ($($arg:tt)*) => { print!("{}\n", format_args!($($arg)*)) };
}

/// Console speed.
const BAUD: u32 = 115_200;

/// The console UART. Interrupts stay off and only one CPU runs, so the
/// spin lock never waits; the panic handler bypasses it ([`emergency`]).
// SAFETY: COM1 is hv-app's own console; nothing else drives it.
static COM1: Mutex<Uart16550<Pio>> = Mutex::new(Uart16550::new(unsafe { Pio::new() }, COM1_BASE));

/// Programs COM1 for 115200 8N1.
pub fn init() {
    let result = COM1.lock().init(BAUD);
    if let Err(e) = result {
        println!("console: {e}");
    }
}

/// Whether output is held back for [`flush_deferred`] (Type-1.5: COM1 is
/// also Linux's console, so the hypervisor writes only while Linux cannot).
static DEFERRED: AtomicBool = AtomicBool::new(false);

/// Output held back while [`DEFERRED`]: at most `DEFERRED_SIZE` bytes,
/// then what does not fit is counted and dropped.
struct Pending {
    buf: [u8; DEFERRED_SIZE],
    len: usize,
    dropped: usize,
}

const DEFERRED_SIZE: usize = 32 << 10;

impl Write for Pending {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < DEFERRED_SIZE {
                self.buf[self.len] = b;
                self.len += 1;
            } else {
                self.dropped += 1;
            }
        }
        Ok(())
    }
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    buf: [0; DEFERRED_SIZE],
    len: 0,
    dropped: 0,
});

/// Holds console output back from now on, until [`flush_deferred`]
/// writes it (Type-1.5). Lines stay whole and in order.
pub fn defer_output() {
    DEFERRED.store(true, Ordering::Release);
}

/// Writes the held-back output to COM1. Call it only where Linux cannot
/// print at the same time (a hypercall's exit on the calling CPU, the
/// all-CPU rendezvous of enable and disable).
pub fn flush_deferred() {
    let mut p = PENDING.lock();
    if p.len == 0 && p.dropped == 0 {
        return;
    }
    let mut uart = COM1.lock();
    let bytes = &p.buf[..p.len];
    // The bytes came from `fmt` (UTF-8); only a cut at the size limit can
    // end in the middle of a character.
    let text = match core::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    };
    let _ = uart.write_str(text);
    if p.dropped > 0 {
        let _ = writeln!(uart, "[console: {} bytes dropped]", p.dropped);
    }
    p.len = 0;
    p.dropped = 0;
}

/// A byte typed on COM1, if one is waiting: a Type-1 guest's console
/// input. None while output is deferred (Type-1.5: COM1 is Linux's).
pub fn read_byte() -> Option<u8> {
    if DEFERRED.load(Ordering::Acquire) {
        return None;
    }
    COM1.lock().try_read_byte()
}

/// Writes formatted text to the console (used by `print!`/`println!`).
pub fn print(args: fmt::Arguments<'_>) {
    if DEFERRED.load(Ordering::Acquire) {
        let _ = PENDING.lock().write_fmt(args);
        return;
    }
    // Writing to the UART cannot fail.
    let _ = COM1.lock().write_fmt(args);
}

/// A console writer that does not take the lock, for the panic handler:
/// the panicking code may hold it. Output may interleave with a half
/// written line.
pub fn emergency() -> Uart16550<Pio> {
    // SAFETY: COM1 is hv-app's own console; at worst two writers mix their
    // bytes.
    Uart16550::new(unsafe { Pio::new() }, COM1_BASE)
}

/// The `log` backend: `[LEVEL] message` lines on the console.
struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            if DEFERRED.load(Ordering::Acquire) {
                let mut p = PENDING.lock();
                let _ = hv_app::logfmt::write_line(&mut *p, record.level(), *record.args());
                return;
            }
            let mut uart = COM1.lock();
            let _ = hv_app::logfmt::write_line(&mut *uart, record.level(), *record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the console logger at `level` (once; later calls only change
/// the level).
pub fn init_logger(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
