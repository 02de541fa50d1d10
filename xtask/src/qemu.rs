//! Starting QEMU, streaming its console and judging the run.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
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
                        "missing console line `{m}`{} (QEMU status {:?}{}); last lines:\n    {}",
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
    run_inner(args, cfg, None)
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
    let first = run_inner(args, cfg, Some((LINUX_UP, LINUX_BOOT_DEADLINE)))?;
    if !first.timed_out || first.lines.iter().any(|l| l.contains(LINUX_UP)) {
        return Ok(first);
    }
    let last = first.lines.last().map(String::as_str).unwrap_or("");
    eprintln!(
        "xtask: note: the Linux kernel did not reach /init within {}s (last line: `{last}`); \
         booting once more",
        LINUX_BOOT_DEADLINE.as_secs()
    );
    run_inner(args, cfg, Some((LINUX_UP, LINUX_BOOT_DEADLINE)))
}

fn run_inner(
    args: &[String],
    cfg: &QemuConfig,
    boot_marker: Option<(&str, Duration)>,
) -> Result<QemuOutcome, String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || forward_lines(out, tx));
    let t_err = std::thread::spawn(move || forward_lines(err, tx2));

    let start = Instant::now();
    let mut lines = Vec::new();
    let mut timed_out = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            if cfg.stream {
                println!("{line}");
            }
            lines.push(line);
        }
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st.code();
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
    for line in rx.try_iter() {
        if cfg.stream {
            println!("{line}");
        }
        lines.push(line);
    }
    Ok(QemuOutcome {
        lines,
        status,
        timed_out,
    })
}

fn forward_lines(r: impl Read, tx: mpsc::Sender<String>) {
    for line in BufReader::new(r).split(b'\n') {
        let Ok(bytes) = line else { break };
        let s = String::from_utf8_lossy(&bytes)
            .trim_end_matches('\r')
            .to_string();
        if tx.send(s).is_err() {
            break;
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
    fn markers_in_order() {
        let o = outcome(&["a x", "b", "c"], Some(1));
        assert!(o.expect_in_order(&["a", "c"]).is_ok());
        let e = o.expect_in_order(&["c", "a"]).unwrap_err();
        assert!(e.contains("missing console line `a`"), "{e}");
        let e = o.expect_in_order(&["zzz"]).unwrap_err();
        assert!(e.contains("`zzz`") && e.contains("    c"), "{e}");
    }
}
