//! Line buffering of a guest's console output.
//!
//! A guest writes its serial output one byte per port write; printed as it
//! comes, the output of several VMs (and the hypervisor's own log) would
//! interleave mid-line. [`LineBuffer`] collects the bytes of one guest and
//! hands out whole lines, which the caller prints with the VM's prefix
//! (`[vm1] `). [`VmConsole`] is that, as the backend of a VM's emulated
//! UART (`axdevice::UartBackend`).

use core::fmt;

use axdevice::UartBackend;
use spin::Mutex;

/// Longest line kept; a longer one is handed out in pieces of this size.
pub const LINE_MAX: usize = 256;

/// Collects a guest's console bytes into lines.
///
/// `\n` ends a line, `\r` is dropped (guests send `\r\n`), and a line is
/// also handed out when it reaches [`LINE_MAX`] bytes.
#[derive(Debug, Clone)]
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Adds `byte`; calls `emit` with the line if the byte completes one.
    pub fn push(&mut self, byte: u8, emit: impl FnOnce(Line<'_>)) {
        match byte {
            b'\r' => {}
            b'\n' => self.flush(emit),
            _ => {
                self.buf[self.len] = byte;
                self.len += 1;
                if self.len == LINE_MAX {
                    self.flush(emit);
                }
            }
        }
    }

    /// Hands out the pending partial line, if any (when the guest stops).
    pub fn finish(&mut self, emit: impl FnOnce(Line<'_>)) {
        if self.len > 0 {
            self.flush(emit);
        }
    }

    /// Number of bytes waiting for the end of their line.
    pub const fn pending(&self) -> usize {
        self.len
    }

    fn flush(&mut self, emit: impl FnOnce(Line<'_>)) {
        let len = core::mem::take(&mut self.len);
        emit(Line(&self.buf[..len]));
    }
}

/// One line of guest output, without its end of line. Its `Display` form
/// is the text with control characters (other than tab) and bytes that
/// are not UTF-8 written as `\xNN`, so that a guest cannot drive the
/// host's terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a>(pub &'a [u8]);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() && c != '\t' {
                    // Controls are U+0000-U+001F and U+007F-U+009F.
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        write!(f, "\\x{byte:02x}")?;
                    }
                } else {
                    write!(f, "{c}")?;
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// One line of a VM's console with its origin: its `Display` is
/// `[vm<ID>] <line>` (the line escaped as [`Line`] does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLine<'a> {
    /// The VM's id.
    pub vm_id: usize,
    /// The guest's text.
    pub line: Line<'a>,
}

impl fmt::Display for VmLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[vm{}] {}", self.vm_id, self.line)
    }
}

/// The console of one VM: a UART backend that gathers the guest's bytes
/// into lines ([`LineBuffer`]) and hands each whole line, as a [`VmLine`],
/// to `out` (hv-app prints it).
///
/// Call [`finish`](Self::finish) when the VM has stopped, for the last
/// line if it has no end of line.
pub struct VmConsole<F> {
    vm_id: usize,
    lines: Mutex<LineBuffer>,
    out: F,
}

impl<F: Fn(VmLine<'_>) + Send + Sync> VmConsole<F> {
    /// The console of VM `vm_id`, handing lines to `out`.
    pub const fn new(vm_id: usize, out: F) -> Self {
        Self {
            vm_id,
            lines: Mutex::new(LineBuffer::new()),
            out,
        }
    }

    /// The VM's id (the `[vm<ID>]` prefix).
    pub const fn vm_id(&self) -> usize {
        self.vm_id
    }

    /// Hands out the pending partial line, if any.
    pub fn finish(&self) {
        let vm_id = self.vm_id;
        self.lines
            .lock()
            .finish(|line| (self.out)(VmLine { vm_id, line }));
    }
}

impl<F: Fn(VmLine<'_>) + Send + Sync> UartBackend for VmConsole<F> {
    fn write_byte(&self, b: u8) {
        let vm_id = self.vm_id;
        self.lines
            .lock()
            .push(b, |line| (self.out)(VmLine { vm_id, line }));
    }
}

impl<F> fmt::Debug for VmConsole<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmConsole")
            .field("vm_id", &self.vm_id)
            .field("pending", &self.lines.lock().pending())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn feed(lb: &mut LineBuffer, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            lb.push(b, |l| out.push(l.to_string()));
        }
        out
    }

    #[test]
    fn crlf_ends_lines_and_partial_lines_wait() {
        let mut lb = LineBuffer::new();
        let lines = feed(&mut lb, b"\r\nhello: Hello from axhv guest!\r\nhello: o");
        assert_eq!(lines, ["", "hello: Hello from axhv guest!"]);
        assert_eq!(lb.pending(), 8);
        let lines = feed(&mut lb, b"k\r\n");
        assert_eq!(lines, ["hello: ok"]);
        assert_eq!(lb.pending(), 0);
        let mut last = None;
        lb.finish(|l| last = Some(l.to_string()));
        assert_eq!(last, None, "nothing pending, nothing emitted");
        feed(&mut lb, b"no newline");
        lb.finish(|l| last = Some(l.to_string()));
        assert_eq!(last.as_deref(), Some("no newline"));
    }

    #[test]
    fn long_lines_are_cut() {
        let mut lb = LineBuffer::new();
        let text = [b'a'; LINE_MAX + 10];
        let lines = feed(&mut lb, &text);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), LINE_MAX);
        assert_eq!(lb.pending(), 10);
    }

    #[test]
    fn control_and_invalid_bytes_are_escaped() {
        // ESC [ 2 J would clear the host terminal; 0xff is not UTF-8.
        let l = Line(b"a\x1b[2J\tb\xff\x7f");
        assert_eq!(l.to_string(), "a\\x1b[2J\tb\\xff\\x7f");
        // UTF-8 text passes; C1 control U+0085 (C2 85) is escaped.
        assert_eq!(Line("héllo".as_bytes()).to_string(), "héllo");
        assert_eq!(Line(b"\xc2\x85").to_string(), "\\xc2\\x85");
    }

    #[test]
    fn vm_console_prefixes_whole_lines() {
        use std::sync::{Arc, Mutex as StdMutex};
        use std::vec::Vec;

        let seen = Arc::new(StdMutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let console = VmConsole::new(2, move |l: VmLine<'_>| {
            sink.lock().unwrap().push(l.to_string())
        });
        assert_eq!(console.vm_id(), 2);
        // Through the trait object, as the emulated UART holds it.
        let uart: Arc<dyn UartBackend> = Arc::new(console);
        for &b in b"hello: ok\r\nbye\x1b" {
            uart.write_byte(b);
        }
        assert_eq!(*seen.lock().unwrap(), ["[vm2] hello: ok"]);
        // `finish` needs the concrete type; keep one before erasing it.
        let console = VmConsole::new(7, {
            let sink = seen.clone();
            move |l: VmLine<'_>| sink.lock().unwrap().push(l.to_string())
        });
        for &b in b"no end\x07" {
            console.write_byte(b);
        }
        console.finish();
        console.finish(); // nothing left the second time
        assert_eq!(
            *seen.lock().unwrap(),
            ["[vm2] hello: ok", "[vm7] no end\\x07"]
        );
        assert!(std::format!("{console:?}").contains("pending: 0"));
    }
}
