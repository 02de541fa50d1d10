//! The panic handler: report, then end the run with a failure code.

use core::fmt::Write;
use core::panic::PanicInfo;

use hv_app::port::ExitCode;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut out = crate::console::emergency();
    let _ = match info.location() {
        Some(l) => writeln!(
            out,
            "\n[PANIC] {} at {}:{}:{}",
            info.message(),
            l.file(),
            l.line(),
            l.column()
        ),
        None => writeln!(out, "\n[PANIC] {}", info.message()),
    };
    crate::pio::power_off(ExitCode::Failure)
}
