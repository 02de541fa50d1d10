//! Line buffering of a guest's console output.
//!
//! A guest writes its serial output one byte per port write; printed as it
//! comes, the output of several VMs (and the hypervisor's own log) would
//! interleave mid-line. [`LineBuffer`] collects the bytes of one guest and
//! hands out whole lines, which the caller prints with the VM's prefix
//! (`[vm1] `). [`VmConsole`] is that, as the backend of a VM's emulated
//! UART (`axdevice::UartBackend`), optionally with an input source (the
//! host's COM1) that the guest reads when it polls its UART.
//!
//! A guest waiting for input after a prompt (NimbOS prints `>> ` and polls
//! LSR) would never show that prompt: it has no end of line. When the
//! guest has polled for input [`PROMPT_POLLS`] times in a row without
//! writing, the console hands out the partial line as it is
//! ([`VmLine::partial`]); what follows on the same line comes out later
//! without the `[vmN] ` prefix ([`VmLine::continued`]).

use core::fmt;

use axdevice::UartBackend;
use spin::Mutex;

/// Longest line kept; a longer one is handed out in pieces of this size.
pub const LINE_MAX: usize = 256;

/// How many input polls in a row, with no output in between, make the
/// console hand out a partial line: a guest that transmits polls LSR once
/// per byte it sends, one that waits for input polls without end.
pub const PROMPT_POLLS: u32 = 16;

/// Collects a guest's console bytes into lines.
///
/// `\n` ends a line, `\r` is dropped (guests send `\r\n`), and a line is
/// also handed out when it reaches [`LINE_MAX`] bytes.
#[derive(Debug, Clone)]
pub struct LineBuffer {
    buf: [u8; LINE_MAX],
    len: usize,
    /// Part of the current line was handed out already
    /// ([`flush_partial`](Self::flush_partial)).
    continued: bool,
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
            continued: false,
        }
    }

    /// Adds `byte`; calls `emit` with the line if the byte completes one.
    /// If part of the line was handed out by
    /// [`flush_partial`](Self::flush_partial), `emit` gets the rest.
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
        if self.len > 0 || self.continued {
            self.flush(emit);
        }
    }

    /// Hands out the bytes of the current line so far, without ending it
    /// (a prompt); returns false, without calling `emit`, if there are
    /// none. The next bytes of the line come out as its continuation
    /// ([`continued`](Self::continued)).
    pub fn flush_partial(&mut self, emit: impl FnOnce(Line<'_>)) -> bool {
        if self.len == 0 {
            return false;
        }
        let len = core::mem::take(&mut self.len);
        emit(Line(&self.buf[..len]));
        self.continued = true;
        true
    }

    /// Whether the next bytes handed out continue a line that was handed
    /// out in part ([`flush_partial`](Self::flush_partial)).
    pub const fn continued(&self) -> bool {
        self.continued
    }

    /// Number of bytes waiting for the end of their line.
    pub const fn pending(&self) -> usize {
        self.len
    }

    fn flush(&mut self, emit: impl FnOnce(Line<'_>)) {
        let len = core::mem::take(&mut self.len);
        self.continued = false;
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
/// `[vm<ID>] <line>` (the line escaped as [`Line`] does), without the
/// prefix if it [`continued`](Self::continued) a partial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLine<'a> {
    /// The VM's id.
    pub vm_id: usize,
    /// The guest's text.
    pub line: Line<'a>,
    /// This continues a line handed out in part before (no prefix).
    pub continued: bool,
    /// The line is not finished: the guest waits for input after it (a
    /// prompt); print it without an end of line.
    pub partial: bool,
}

impl<'a> VmLine<'a> {
    /// A whole line of VM `vm_id`.
    pub const fn whole(vm_id: usize, line: Line<'a>) -> Self {
        Self {
            vm_id,
            line,
            continued: false,
            partial: false,
        }
    }

    /// The line as a terminal shows it: its `Display` adds the end of line
    /// (`\n`) unless the line is [`partial`](Self::partial).
    pub const fn terminated(self) -> Terminated<'a> {
        Terminated(self)
    }
}

impl fmt::Display for VmLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.continued {
            write!(f, "{}", self.line)
        } else {
            write!(f, "[vm{}] {}", self.vm_id, self.line)
        }
    }
}

/// A [`VmLine`] with its end of line, if it has one ([`VmLine::terminated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminated<'a>(pub VmLine<'a>);

impl fmt::Display for Terminated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.partial {
            write!(f, "{}", self.0)
        } else {
            writeln!(f, "{}", self.0)
        }
    }
}

/// Where a VM's console input comes from: a function giving the next byte
/// typed, if any (hv-app: the host's COM1 receiver).
pub type InputSource = fn() -> Option<u8>;

struct ConsoleState {
    lines: LineBuffer,
    /// Input polls since the guest last wrote.
    polls: u32,
}

/// The console of one VM: a UART backend that gathers the guest's bytes
/// into lines ([`LineBuffer`]) and hands each whole line, as a [`VmLine`],
/// to `out` (hv-app prints it). With an [input source](Self::with_input)
/// the guest reads what is typed, and a prompt the guest waits at is
/// handed out as a partial line (see the module documentation).
///
/// Call [`finish`](Self::finish) when the VM has stopped, for the last
/// line if it has no end of line.
pub struct VmConsole<F> {
    vm_id: usize,
    state: Mutex<ConsoleState>,
    out: F,
    input: Option<InputSource>,
}

impl<F: Fn(VmLine<'_>) + Send + Sync> VmConsole<F> {
    /// The console of VM `vm_id`, handing lines to `out`, without input.
    pub const fn new(vm_id: usize, out: F) -> Self {
        Self {
            vm_id,
            state: Mutex::new(ConsoleState {
                lines: LineBuffer::new(),
                polls: 0,
            }),
            out,
            input: None,
        }
    }

    /// Gives the guest the bytes `input` returns, when it polls its UART.
    pub const fn with_input(mut self, input: InputSource) -> Self {
        self.input = Some(input);
        self
    }

    /// The VM's id (the `[vm<ID>]` prefix).
    pub const fn vm_id(&self) -> usize {
        self.vm_id
    }

    /// Hands out the pending partial line, if any.
    pub fn finish(&self) {
        let mut st = self.state.lock();
        let continued = st.lines.continued();
        st.lines.finish(|line| self.emit(line, continued, false));
    }

    fn emit(&self, line: Line<'_>, continued: bool, partial: bool) {
        (self.out)(VmLine {
            vm_id: self.vm_id,
            line,
            continued,
            partial,
        });
    }
}

impl<F: Fn(VmLine<'_>) + Send + Sync> UartBackend for VmConsole<F> {
    fn write_byte(&self, b: u8) {
        let mut st = self.state.lock();
        st.polls = 0;
        let continued = st.lines.continued();
        st.lines.push(b, |line| self.emit(line, continued, false));
    }

    fn read_byte(&self) -> Option<u8> {
        let input = self.input?;
        let mut st = self.state.lock();
        st.polls = st.polls.saturating_add(1);
        if st.polls == PROMPT_POLLS {
            let continued = st.lines.continued();
            st.lines
                .flush_partial(|line| self.emit(line, continued, true));
        }
        drop(st);
        input()
    }
}

impl<F> fmt::Debug for VmConsole<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmConsole")
            .field("vm_id", &self.vm_id)
            .field("pending", &self.state.lock().lines.pending())
            .field("input", &self.input.is_some())
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
    fn partial_lines_continue_without_prefix() {
        let mut lb = LineBuffer::new();
        assert!(!lb.flush_partial(|_| panic!("nothing to hand out")));
        feed(&mut lb, b"\x1b[0m>> ");
        let mut part = None;
        assert!(lb.flush_partial(|l| part = Some(l.to_string())));
        assert_eq!(part.as_deref(), Some("\\x1b[0m>> "));
        assert!(lb.continued());
        assert_eq!(feed(&mut lb, b"ls\r\n"), ["ls"]);
        assert!(!lb.continued(), "a new line starts after the end of line");
        let v = VmLine {
            vm_id: 1,
            line: Line(b"ls"),
            continued: true,
            partial: false,
        };
        assert_eq!(v.terminated().to_string(), "ls\n");
        let p = VmLine {
            continued: false,
            partial: true,
            ..VmLine::whole(1, Line(b">> "))
        };
        assert_eq!(p.terminated().to_string(), "[vm1] >> ");
        assert_eq!(
            VmLine::whole(3, Line(b"x")).terminated().to_string(),
            "[vm3] x\n"
        );
    }

    static TYPED: spin::Mutex<Vec<u8>> = spin::Mutex::new(Vec::new());

    fn typed() -> Option<u8> {
        let mut t = TYPED.lock();
        (!t.is_empty()).then(|| t.remove(0))
    }

    #[test]
    fn a_guest_waiting_for_input_shows_its_prompt_and_reads_typed_bytes() {
        use std::sync::{Arc, Mutex as StdMutex};

        let seen = Arc::new(StdMutex::new(String::new()));
        let sink = seen.clone();
        let console = VmConsole::new(1, move |l: VmLine<'_>| {
            sink.lock().unwrap().push_str(&l.terminated().to_string())
        })
        .with_input(typed);
        // Transmitting: one LSR poll per byte never shows a partial line.
        for &b in b"Rust user shell\r\n>> " {
            assert_eq!(console.read_byte(), None);
            console.write_byte(b);
        }
        assert_eq!(*seen.lock().unwrap(), "[vm1] Rust user shell\n");
        // Waiting for input: the prompt comes out at the 16th poll, once.
        for _ in 0..PROMPT_POLLS - 1 {
            assert_eq!(console.read_byte(), None);
        }
        assert_eq!(*seen.lock().unwrap(), "[vm1] Rust user shell\n");
        for _ in 0..PROMPT_POLLS * 4 {
            assert_eq!(console.read_byte(), None);
        }
        assert_eq!(*seen.lock().unwrap(), "[vm1] Rust user shell\n[vm1] >> ");
        // Typed input reaches the guest, which echoes it; the echo goes on
        // the prompt's line, without a prefix.
        TYPED.lock().extend_from_slice(b"ls\r");
        let mut got = Vec::new();
        while let Some(b) = console.read_byte() {
            got.push(b);
            console.write_byte(if b == b'\r' { b'\n' } else { b });
        }
        assert_eq!(got, b"ls\r");
        assert_eq!(
            *seen.lock().unwrap(),
            "[vm1] Rust user shell\n[vm1] >> ls\n"
        );
        // Without an input source nothing is read and nothing is flushed.
        let quiet = VmConsole::new(2, |_: VmLine<'_>| panic!("no output expected"));
        quiet.write_byte(b'>');
        for _ in 0..PROMPT_POLLS * 2 {
            assert_eq!(quiet.read_byte(), None);
        }
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
