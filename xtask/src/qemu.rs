//! Starting QEMU, streaming its console and judging the run.
//!
//! [`run_with`] also types into the console: scripted input ([`ConsoleIo`])
//! and, when our stdin is a terminal, what the user types (one line at a
//! time, Enter sent as CR). It goes to QEMU's stdin, which is the machine's
//! COM1; hv-app hands it to the guest's emulated UART when the guest polls.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a QEMU machine is started.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Number of CPUs.
    pub smp: u32,
    /// Memory size as QEMU takes it (`512M`).
    pub mem: String,
    /// Wall-clock bound of the run.
    pub timeout: Duration,
    /// Copy console lines to our stdout as they come.
    pub stream: bool,
}

/// What a finished (or stopped) QEMU run gave.
#[derive(Debug)]
pub struct QemuOutcome {
    /// Every console line.
    pub lines: Vec<String>,
    /// QEMU's exit status; `None` if it was killed at the timeout.
    pub status: Option<i32>,
    /// Whether the run hit the timeout.
    pub timed_out: bool,
}

impl QemuOutcome {
    /// The status the guest asked for through isa-debug-exit: QEMU exits with
    /// `(v << 1) | 1` for a write of `v` to port 0xf4; anything else
    /// (0 = QEMU shut down by other means, even = QEMU error) is `None`.
    pub fn debug_exit_value(&self) -> Option<i32> {
        match self.status {
            Some(s) if s & 1 == 1 => Some(s >> 1),
            _ => None,
        }
    }

    /// Asserts that each marker appears in the console output, in order.
    /// The error names the first missing line and shows the tail of the log.
    pub fn expect_in_order(&self, markers: &[&str]) -> Result<(), String> {
        let mut from = 0;
        for m in markers {
            match self.lines[from..].iter().position(|l| l.contains(m)) {
                Some(i) => from += i + 1,
                None => {
                    let tail: Vec<&str> = self
                        .lines
                        .iter()
                        .rev()
                        .take(20)
                        .rev()
                        .map(String::as_str)
                        .collect();
                    return Err(format!(
                        "missing console line `{m}`{} (emulator status {:?}{}); last lines:\n    {}",
                        if from > 0 {
                            " after the earlier markers"
                        } else {
                            ""
                        },
                        self.status,
                        if self.timed_out { ", timed out" } else { "" },
                        tail.join("\n    ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The QEMU command line for a Type-1 boot of `kernel` on emulated AMD SVM.
pub fn type1_args(kernel: &Path, cfg: &QemuConfig) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "EPYC,+svm,+npt",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["-smp".into(), cfg.smp.to_string()]);
    a.extend(["-m".into(), cfg.mem.clone()]);
    a.extend(["-kernel".into(), kernel.display().to_string()]);
    a
}

/// Runs `qemu-system-x86_64 args`, collecting console lines until QEMU exits
/// or `cfg.timeout` passes (then QEMU is killed).
pub fn run(args: &[String], cfg: &QemuConfig) -> Result<QemuOutcome, String> {
    run_inner(args, cfg, None, &ConsoleIo::default())
}

/// How [`run_with`] drives the console besides reading it.
#[derive(Debug, Clone, Default)]
pub struct ConsoleIo {
    /// Byte strings to type, in order: each once a guest waits at a prompt
    /// (a `[vmN] ` line without its end of line, then [`PROMPT_QUIET`] of
    /// silence), or after [`INPUT_FALLBACK`] of silence once a guest has
    /// printed something.
    pub input: Vec<Vec<u8>>,
    /// Forward our stdin (a terminal) to the console, Enter as CR.
    pub stdin: bool,
    /// End the run (QEMU is stopped, not timed out) once a console line
    /// contains this text.
    pub until: Option<String>,
}

/// How long the console must stay quiet after a guest's prompt before
/// scripted input is typed.
pub const PROMPT_QUIET: Duration = Duration::from_millis(300);

/// How long the console must stay quiet, once a guest has printed, before
/// scripted input is typed without a prompt.
pub const INPUT_FALLBACK: Duration = Duration::from_secs(5);

/// Whether `line` starts a guest's console line (`[vm1] ...`), as hv-app
/// prints them.
fn is_guest_line(line: &str) -> bool {
    line.strip_prefix("[vm")
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// [`run`] with console input and an end marker (`cargo xtask run`).
pub fn run_with(args: &[String], cfg: &QemuConfig, io: &ConsoleIo) -> Result<QemuOutcome, String> {
    run_inner(args, cfg, None, io)
}

/// Turns the escapes of `--input` text into bytes: `\r`, `\n`, `\t`,
/// `\e` (ESC), `\\`, `\xHH` (hvctl's escape language: the Type-1.5 runs
/// hand the same text to `hvctl vm input`). Any other backslash sequence
/// is an error.
pub fn unescape_input(text: &str) -> Result<Vec<u8>, String> {
    hvctl::cli::unescape(text).map_err(|e| format!("--input {e}"))
}

/// The line each project initramfs `/init` prints first (`...: Linux up`).
pub const LINUX_UP: &str = ": Linux up";

/// How long the Debian kernel may take to reach our `/init` under TCG
/// before the boot counts as stalled (it takes 2-10 s here).
const LINUX_BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// Runs a Linux boot like [`run`]. The emulated kernel very rarely stalls
/// during its own early boot under TCG (seen once in 16 runs, at "IP idents
/// hash table entries", before any of our code ran). When `/init`'s first
/// line ([`LINUX_UP`]) has not appeared within a deadline, the run is
/// stopped and made once more, with a note; a hang after that line is never
/// retried.
pub fn run_linux(args: &[String], cfg: &QemuConfig) -> Result<QemuOutcome, String> {
    let none = ConsoleIo::default();
    let first = run_inner(args, cfg, Some((LINUX_UP, LINUX_BOOT_DEADLINE)), &none)?;
    if !first.timed_out || first.lines.iter().any(|l| l.contains(LINUX_UP)) {
        return Ok(first);
    }
    let last = first.lines.last().map(String::as_str).unwrap_or("");
    eprintln!(
        "xtask: note: the Linux kernel did not reach /init within {}s (last line: `{last}`); \
         booting once more",
        LINUX_BOOT_DEADLINE.as_secs()
    );
    run_inner(args, cfg, Some((LINUX_UP, LINUX_BOOT_DEADLINE)), &none)
}

/// A chunk of QEMU's output: from stderr or not, the bytes (empty at the
/// end of the stream).
type Chunk = (bool, Vec<u8>);

/// Gathers one stream's bytes into lines (`\n` ends one, `\r` before it is
/// dropped); the unfinished line stays in `partial`.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], mut line: impl FnMut(String)) {
        for &b in bytes {
            if b == b'\n' {
                let l = std::mem::take(&mut self.partial);
                line(
                    String::from_utf8_lossy(&l)
                        .trim_end_matches('\r')
                        .to_string(),
                );
            } else {
                self.partial.push(b);
            }
        }
    }

    fn partial(&self) -> String {
        String::from_utf8_lossy(&self.partial).to_string()
    }
}

/// Types the scripted input at the right moments (see [`ConsoleIo`]).
struct InputScript {
    pending: std::collections::VecDeque<Vec<u8>>,
    guest_seen: bool,
}

impl InputScript {
    fn new(io: &ConsoleIo) -> Self {
        Self {
            pending: io.input.iter().cloned().collect(),
            guest_seen: false,
        }
    }

    /// The next input to type now, given the unfinished line of the console
    /// and how long the console has been quiet.
    fn next(&mut self, partial: &str, quiet: Duration) -> Option<Vec<u8>> {
        self.pending.front()?;
        let at_prompt = is_guest_line(partial) && quiet >= PROMPT_QUIET;
        let fallback = self.guest_seen && quiet >= INPUT_FALLBACK;
        if at_prompt || fallback {
            self.pending.pop_front()
        } else {
            None
        }
    }
}

fn run_inner(
    args: &[String],
    cfg: &QemuConfig,
    boot_marker: Option<(&str, Duration)>,
    io: &ConsoleIo,
) -> Result<QemuOutcome, String> {
    let typing = !io.input.is_empty() || io.stdin;
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(if typing {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let (tx, rx) = mpsc::channel::<Chunk>();
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || forward_chunks(out, false, tx));
    let t_err = std::thread::spawn(move || forward_chunks(err, true, tx2));
    let stdin: Option<std::sync::Arc<std::sync::Mutex<ChildStdin>>> = child
        .stdin
        .take()
        .map(|s| std::sync::Arc::new(std::sync::Mutex::new(s)));
    if io.stdin
        && let Some(pipe) = stdin.clone()
    {
        // Not joined: it may sit in a read of our stdin after QEMU ended.
        std::thread::spawn(move || forward_stdin(&pipe));
    }

    let start = Instant::now();
    let mut lines = Vec::new();
    let mut split = [LineSplitter::default(), LineSplitter::default()];
    let mut script = InputScript::new(io);
    let mut last_output = Instant::now();
    let mut timed_out = false;
    let mut until_seen = false;
    let mut stdout = std::io::stdout();
    let status = loop {
        while let Ok((is_err, bytes)) = rx.try_recv() {
            last_output = Instant::now();
            if cfg.stream {
                if is_err {
                    let _ = std::io::stderr().write_all(&bytes);
                } else {
                    let _ = stdout.write_all(&bytes);
                    let _ = stdout.flush();
                }
            }
            split[usize::from(is_err)].push(&bytes, |l| {
                script.guest_seen |= is_guest_line(&l);
                until_seen |= io.until.as_deref().is_some_and(|m| l.contains(m));
                lines.push(l);
            });
        }
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st.code();
        }
        if until_seen {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if let Some(pipe) = &stdin
            && let Some(text) = script.next(&split[0].partial(), last_output.elapsed())
        {
            if cfg.stream {
                eprintln!("\n==> typing {:?}", String::from_utf8_lossy(&text));
            }
            let mut p = pipe.lock().expect("stdin lock");
            let _ = p.write_all(&text).and_then(|()| p.flush());
        }
        let boot_stalled = boot_marker.is_some_and(|(marker, deadline)| {
            start.elapsed() > deadline && !lines.iter().any(|l: &String| l.contains(marker))
        });
        if boot_stalled || start.elapsed() > cfg.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = t_out.join();
    let _ = t_err.join();
    for (is_err, bytes) in rx.try_iter() {
        if cfg.stream {
            let _ = stdout.write_all(&bytes);
        }
        split[usize::from(is_err)].push(&bytes, |l| lines.push(l));
    }
    for s in &split {
        let rest = s.partial();
        if !rest.is_empty() {
            if cfg.stream {
                println!();
            }
            lines.push(rest);
        }
    }
    Ok(QemuOutcome {
        lines,
        status,
        timed_out,
    })
}

fn forward_chunks(mut r: impl Read, is_err: bool, tx: mpsc::Sender<Chunk>) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((is_err, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
}

/// Copies our stdin (cooked terminal lines) to QEMU's, Enter (`\n`) as CR
/// as a serial terminal sends it.
fn forward_stdin(pipe: &std::sync::Mutex<ChildStdin>) {
    let mut buf = [0u8; 256];
    let mut input = std::io::stdin();
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let bytes: Vec<u8> = buf[..n]
                    .iter()
                    .map(|&b| if b == b'\n' { b'\r' } else { b })
                    .collect();
                let mut p = pipe.lock().expect("stdin lock");
                if p.write_all(&bytes).and_then(|()| p.flush()).is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(lines: &[&str], status: Option<i32>) -> QemuOutcome {
        QemuOutcome {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            status,
            timed_out: status.is_none(),
        }
    }

    #[test]
    fn debug_exit_decoding() {
        assert_eq!(outcome(&[], Some(1)).debug_exit_value(), Some(0));
        assert_eq!(outcome(&[], Some(7)).debug_exit_value(), Some(3));
        assert_eq!(outcome(&[], Some(0)).debug_exit_value(), None);
        assert_eq!(outcome(&[], None).debug_exit_value(), None);
    }

    #[test]
    fn input_escapes() {
        assert_eq!(unescape_input("usertests\\r").unwrap(), b"usertests\r");
        assert_eq!(
            unescape_input("a\\tb\\n\\\\\\x41\\e").unwrap(),
            b"a\tb\n\\A\x1b"
        );
        assert!(
            unescape_input("x\\q")
                .unwrap_err()
                .contains("unknown escape `\\q`")
        );
        assert!(
            unescape_input("\\x4")
                .unwrap_err()
                .contains("two hex digits")
        );
        assert!(unescape_input("\\xzz").is_err());
        assert!(unescape_input("end\\").unwrap_err().contains("lone"));
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"[vm1] Rust user", |l| got.push(l));
        s.push(b" shell\r\n[vm1] >> ", |l| got.push(l));
        assert_eq!(got, ["[vm1] Rust user shell"]);
        assert_eq!(s.partial(), "[vm1] >> ");
    }

    #[test]
    fn scripted_input_waits_for_a_guest_prompt() {
        let io = ConsoleIo {
            input: vec![b"usertests\r".to_vec(), b"exit\r".to_vec()],
            ..ConsoleIo::default()
        };
        let mut s = InputScript::new(&io);
        let q = |ms| Duration::from_millis(ms);
        // SeaBIOS/iPXE waiting mid-line is not a guest prompt.
        assert_eq!(s.next("Press Ctrl-B to configure iPXE", q(3000)), None);
        assert_eq!(s.next("[vm1] >> ", q(100)), None, "not quiet yet");
        assert_eq!(s.next("[vm1] >> ", q(300)), Some(b"usertests\r".to_vec()));
        assert_eq!(s.next("", q(4000)), None, "no prompt, no guest output yet");
        s.guest_seen = true;
        assert_eq!(s.next("", q(5000)), Some(b"exit\r".to_vec()));
        assert_eq!(s.next("[vm1] >> ", q(9000)), None, "all typed");
        assert!(is_guest_line("[vm12] x") && !is_guest_line("[vmx]") && !is_guest_line("VM 1"));
    }

    #[test]
    fn markers_in_order() {
        let o = outcome(&["a x", "b", "c"], Some(1));
        assert!(o.expect_in_order(&["a", "c"]).is_ok());
        let e = o.expect_in_order(&["c", "a"]).unwrap_err();
        assert!(e.contains("missing console line `a`"), "{e}");
        let e = o.expect_in_order(&["zzz"]).unwrap_err();
        assert!(e.contains("`zzz`") && e.contains("    c"), "{e}");
    }
}
