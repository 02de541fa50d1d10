//! The serial console on COM1, `print!`/`println!` and the `log` logger.

use core::fmt::{self, Write};

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

/// Writes formatted text to the console (used by `print!`/`println!`).
pub fn print(args: fmt::Arguments<'_>) {
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
