//! `hvctl`: control the axhv hypervisor from Linux user space.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use hvctl::{Device, Result, cli, execute, open_error};

/// `/dev/axhv`, opened.
struct DevAxhv(File);

unsafe extern "C" {
    /// libc's `ioctl(2)` (std links libc already).
    fn ioctl(fd: i32, request: u64, ...) -> i32;
}

impl Device for DevAxhv {
    fn ioctl(&mut self, cmd: u32, arg: &mut [u8]) -> core::result::Result<i32, i32> {
        let ptr = if arg.is_empty() {
            core::ptr::null_mut()
        } else {
            arg.as_mut_ptr()
        };
        // SAFETY: `ptr` is null (for `_IO` ioctls) or points to `arg`, whose
        // length is the size encoded in `cmd` (see hvctl::abi); the buffers
        // the structure points to are alive for the duration of the call.
        let r = unsafe { ioctl(self.0.as_raw_fd(), u64::from(cmd), ptr) };
        if r < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(r)
        }
    }
}

fn open() -> Result<Box<dyn Device>> {
    File::options()
        .read(true)
        .write(true)
        .open(hvctl::DEVICE)
        .map(|f| Box::new(DevAxhv(f)) as Box<dyn Device>)
        .map_err(|e| open_error(e.raw_os_error().unwrap_or(0)))
}

/// Writes `msg` and a line end to stderr in one write: `eprintln!` writes
/// an unbuffered stderr piece by piece, and a line-oriented sink (such as
/// `/dev/kmsg`, one record per write) would split the line.
fn error_line(msg: &str) {
    let _ = std::io::stderr().write_all(format!("{msg}\n").as_bytes());
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result =
        cli::parse(&args).and_then(|cmd| execute(&cmd, &mut open, &mut std::io::stdout().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(hvctl::Error::Usage(msg)) => {
            error_line(&format!("hvctl: {msg}\n\n{}", cli::USAGE.trim_end()));
            ExitCode::from(2)
        }
        Err(e) => {
            error_line(&format!("hvctl: {e}"));
            ExitCode::FAILURE
        }
    }
}
