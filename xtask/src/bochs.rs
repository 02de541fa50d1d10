//! Running hv-app on emulated Intel VMX: a GRUB ISO booted by Bochs.
//!
//! Bochs cannot load a multiboot kernel itself, so [`build_iso`] makes a
//! GRUB rescue ISO with hv-app and its VM modules, and [`run_bochs`] boots
//! it headless (see ENVIRONMENT.md for the recipe and its pitfalls):
//!
//! - the debugger compiled into Debian's Bochs stops before the first
//!   instruction: `c` is fed on stdin, then stdin is closed (a later prompt
//!   reads end of file and Bochs quits);
//! - `display_library: term` opens a private pty; it is drained, or Bochs
//!   blocks after about 64 KiB of screen output;
//! - Bochs's exit status means nothing: the run's status comes from the
//!   console line `axhv: exit status N` that hv-app prints before it powers
//!   off (`hv_app::port::EXIT_STATUS_MARKER`), reported like QEMU's
//!   isa-debug-exit, `(N << 1) | 1`, so [`QemuOutcome::debug_exit_value`]
//!   reads it back;
//! - every run is bounded by `timeout -k 5` around Bochs as well as by our
//!   own clock.
//!
//! `cargo xtask bochs [--guest NAME]... [--log LEVEL] [--timeout SECS]`
//! ([`command`]) runs it from the command line.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::prereq::{self, Prereq};
use crate::qemu::QemuOutcome;

/// The console line hv-app prints last, before powering off
/// (`hv_app::port::EXIT_STATUS_MARKER`).
pub const EXIT_MARKER: &str = "axhv: exit status ";

/// How long Bochs may take to stop by itself once the exit marker is seen
/// (it stops at the `Shutdown` port write that follows the marker).
const GRACE_AFTER_MARKER: Duration = Duration::from_secs(5);

/// The Bochs ROM images of the Debian packages `bochsbios` and `vgabios`.
const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";
/// GRUB's BIOS platform files (package `grub-pc-bin`), which
/// `grub-mkrescue` needs to make a CD that boots on Bochs's BIOS.
const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";

/// The programs and data files a Bochs run needs (a program on `PATH`, or
/// an absolute path that must exist), with their Debian packages.
pub const PREREQS: [Prereq; 7] = [
    Prereq {
        program: "bochs-bin",
        package: "bochs",
    },
    Prereq {
        program: BIOS,
        package: "bochsbios",
    },
    Prereq {
        program: VGA_BIOS,
        package: "vgabios",
    },
    Prereq {
        program: "grub-mkrescue",
        package: "grub-common",
    },
    Prereq {
        program: GRUB_I386_PC,
        package: "grub-pc-bin",
    },
    Prereq {
        program: "xorriso",
        package: "xorriso",
    },
    Prereq {
        program: "mformat",
        package: "mtools",
    },
];

/// Checks what a Bochs run needs, installing missing packages as
/// [`prereq::check`] does (as root on Debian/Ubuntu) or naming the command.
pub fn check_prereqs() -> Result<(), String> {
    prereq::check(&PREREQS)
}

/// Splits QEMU's `-initrd` argument (`path string,path string,...`, as
/// `vms::prepare_modules` makes it) into `(path, module string)` pairs.
pub fn modules_from_initrd(initrd: &str) -> Vec<(PathBuf, String)> {
    initrd
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .map(|m| match m.trim().split_once(' ') {
            Some((path, rest)) => (PathBuf::from(path), rest.trim().to_string()),
            None => (PathBuf::from(m.trim()), String::new()),
        })
        .collect()
}

/// The words GRUB may not see unquoted in a path or module string.
fn grub_safe(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_whitespace() || "\"'\\$;{}#|&<>".contains(c))
}

/// The GRUB configuration booting `/boot/hv-app` with `cmdline` and the
/// modules, each as `module /boot/NAME /boot/NAME STRING`: GRUB gives
/// hv-app `/boot/NAME STRING` as the module string, and hv-app pairs VM
/// modules by its last word (`vmcfg`, `vmimage`).
pub fn grub_cfg(cmdline: Option<&str>, modules: &[(String, String)]) -> String {
    let mut s = String::from(
        "set timeout=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial; terminal_output serial\n",
    );
    match cmdline {
        Some(c) if !c.is_empty() => s.push_str(&format!("multiboot /boot/hv-app {c}\n")),
        _ => s.push_str("multiboot /boot/hv-app\n"),
    }
    for (name, string) in modules {
        let line = format!("module /boot/{name} /boot/{name} {string}");
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s.push_str("boot\n");
    s
}

/// Makes `<dir>/axhv.iso`: a GRUB rescue CD with `elf` as `/boot/hv-app`
/// (booted with `cmdline`) and each module copied to `/boot/<file name>`.
/// Returns the ISO's path.
pub fn build_iso(
    elf: &Path,
    modules: &[(PathBuf, String)],
    cmdline: Option<&str>,
    dir: &Path,
) -> Result<PathBuf, String> {
    let isodir = dir.join("isodir");
    if isodir.exists() {
        std::fs::remove_dir_all(&isodir).map_err(|e| format!("{}: {e}", isodir.display()))?;
    }
    let boot = isodir.join("boot");
    std::fs::create_dir_all(boot.join("grub")).map_err(|e| format!("{}: {e}", boot.display()))?;
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
    };
    copy(elf, &boot.join("hv-app"))?;
    let mut names: Vec<(String, String)> = Vec::new();
    for (path, string) in modules {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("module {}: no usable file name", path.display()))?
            .to_string();
        if !grub_safe(&name) || name == "hv-app" || name == "grub" {
            return Err(format!(
                "module {}: the name `{name}` cannot go on the ISO",
                path.display()
            ));
        }
        if string.split_whitespace().any(|w| !grub_safe(w)) {
            return Err(format!(
                "module {}: GRUB cannot pass the string `{string}`",
                path.display()
            ));
        }
        if names.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "two modules named `{name}`: give them distinct file names"
            ));
        }
        copy(path, &boot.join(&name))?;
        names.push((
            name,
            string.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    if let Some(c) = cmdline.filter(|c| c.split_whitespace().any(|w| !grub_safe(w))) {
        return Err(format!("GRUB cannot pass the command line `{c}`"));
    }
    let cfg = boot.join("grub").join("grub.cfg");
    std::fs::write(&cfg, grub_cfg(cmdline, &names))
        .map_err(|e| format!("{}: {e}", cfg.display()))?;
    let iso = dir.join("axhv.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&isodir)
        .output()
        .map_err(|e| format!("cannot start grub-mkrescue: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "grub-mkrescue failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(iso)
}

/// The bochsrc of a headless run of `iso` on a Skylake-X model (VMX with
/// EPT, unrestricted guest, VPID), COM1 into `serial`, the log into `log`.
pub fn bochsrc(iso: &Path, serial: &Path, log: &Path, megs: u32) -> String {
    format!(
        "megs: {megs}\n\
         romimage: file={BIOS}\n\
         vgaromimage: file={VGA_BIOS}\n\
         cpu: model=corei7_skylake_x, count=1, ips=50000000, reset_on_triple_fault=0\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         display_library: term\n\
         com1: enabled=1, mode=file, dev={}\n\
         log: {}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n\
         speaker: enabled=0\n\
         clock: sync=none, time0=local\n",
        iso.display(),
        serial.display(),
        log.display()
    )
}

/// The status N of the last `axhv: exit status N` line.
pub fn exit_marker_status(lines: &[String]) -> Option<u32> {
    lines.iter().rev().find_map(|l| {
        let rest = &l[l.find(EXIT_MARKER)? + EXIT_MARKER.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// The lines of the Bochs log that explain a failed run: VM-entry check
/// failures, panics (except the `Shutdown` port's, the normal end), and
/// triple faults. At most 20, prefixed with `[bochs] `.
pub fn log_findings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            (l.contains("VMENTER FAIL")
                || l.contains("VMFAIL")
                || l.contains(">>PANIC<<")
                || l.contains("triple fault")
                || l.contains("exception(): 3rd"))
                && !l.contains("Shutdown port: shutdown requested")
        })
        .take(20)
        .map(|l| format!("[bochs] {}", l.trim()))
        .collect()
}

/// Splits `buf` at line ends (`\n`, `\r\n`), keeping an unfinished tail
/// in `buf`.
fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        lines.push(
            String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        );
    }
    lines
}

/// Finds the pty Bochs's term display opened (`connected to screen
/// "/dev/pts/N"` on its output) and drains it until Bochs closes it.
fn drain_display(out: impl Read + Send + 'static, found: mpsc::Sender<String>) {
    let mut out = out;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent = false;
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if sent {
            continue;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(i) = text.find("/dev/pts/") {
            let pts: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
                .collect();
            if pts.len() > "/dev/pts/".len() {
                sent = true;
                let _ = found.send(pts.clone());
                std::thread::spawn(move || {
                    let _ = Command::new("stty")
                        .args(["-F", &pts, "raw", "-echo"])
                        .stderr(Stdio::null())
                        .status();
                    if let Ok(mut f) = std::fs::File::open(&pts) {
                        let mut sink = [0u8; 4096];
                        while matches!(f.read(&mut sink), Ok(n) if n > 0) {}
                    }
                });
            }
        }
        if seen.len() > 1 << 16 {
            seen.drain(..seen.len() - 256);
        }
    }
}

/// Stops the `timeout` wrapper around Bochs: SIGTERM (passed on to Bochs,
/// with SIGKILL 5 s later by `-k 5`), then SIGKILL if it is still there.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `elf` with the multiboot modules `initrd_modules` (path, module
/// string ending in `vmcfg`/`vmimage`) in Bochs on emulated Intel VMX and
/// collects the console until hv-app's exit marker, the end of Bochs, or
/// `timeout`. `status` is `Some((N << 1) | 1)` for an `axhv: exit status
/// N` line (like QEMU's isa-debug-exit), `Some(0)` if Bochs ended without
/// one, `None` at the timeout. Findings from the Bochs log (VM-entry check
/// failures, panics) are appended as `[bochs] ...` lines.
pub fn run_bochs(
    elf: &Path,
    initrd_modules: &[(PathBuf, String)],
    timeout: Duration,
    stream: bool,
) -> Result<QemuOutcome, String> {
    run_bochs_with(elf, initrd_modules, None, timeout, stream)
}

/// [`run_bochs`] with a hypervisor command line (e.g. `log=debug`).
pub fn run_bochs_with(
    elf: &Path,
    initrd_modules: &[(PathBuf, String)],
    cmdline: Option<&str>,
    timeout: Duration,
    stream: bool,
) -> Result<QemuOutcome, String> {
    check_prereqs()?;
    let dir = elf
        .parent()
        .ok_or("the hv-app ELF has no directory")?
        .join("xtask-bochs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let iso = build_iso(elf, initrd_modules, cmdline, &dir)?;
    let (serial, log, rc) = (
        dir.join("serial.out"),
        dir.join("bochs.log"),
        dir.join("bochsrc"),
    );
    for f in [&serial, &log] {
        let _ = std::fs::remove_file(f);
    }
    std::fs::write(&rc, bochsrc(&iso, &serial, &log, 256))
        .map_err(|e| format!("{}: {e}", rc.display()))?;
    if stream {
        println!(
            "==> bochs-bin -q -f {} (serial {}, log {})",
            rc.display(),
            serial.display(),
            log.display()
        );
    }

    let hard_bound = timeout.as_secs() + 15;
    let mut child = Command::new("timeout")
        .args(["-k", "5", &hard_bound.to_string(), "bochs-bin", "-q", "-f"])
        .arg(&rc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start bochs-bin: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // `c` answers the debugger's first prompt; closing stdin makes any
        // later prompt (after a panic) read end of file and quit.
        let _ = stdin.write_all(b"c\n");
    }
    let (tx, _pts) = mpsc::channel();
    let out = child.stdout.take().ok_or("Bochs stdout is not piped")?;
    let err = child.stderr.take().ok_or("Bochs stderr is not piped")?;
    let tx2 = tx.clone();
    let t_out = std::thread::spawn(move || drain_display(out, tx));
    let t_err = std::thread::spawn(move || drain_display(err, tx2));

    let start = Instant::now();
    let mut lines: Vec<String> = Vec::new();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    let mut marker_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut read_serial = |lines: &mut Vec<String>, pending: &mut Vec<u8>| {
        if let Ok(mut f) = std::fs::File::open(&serial) {
            use std::io::Seek;
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    offset += n as u64;
                    pending.extend_from_slice(&buf);
                }
            }
        }
        for line in take_lines(pending) {
            if stream {
                println!("{line}");
            }
            lines.push(line);
        }
    };
    loop {
        read_serial(&mut lines, &mut pending);
        if marker_at.is_none() && exit_marker_status(&lines).is_some() {
            marker_at = Some(Instant::now());
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if marker_at.is_some_and(|t| t.elapsed() > GRACE_AFTER_MARKER) {
            stop(&mut child);
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            stop(&mut child);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    read_serial(&mut lines, &mut pending);
    if !pending.is_empty() {
        // The last line may lack its line end when Bochs stopped at once.
        let line = String::from_utf8_lossy(&pending)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if stream {
            println!("{line}");
        }
        lines.push(line);
    }
    let _ = t_out.join();
    let _ = t_err.join();
    let findings = log_findings(&std::fs::read_to_string(&log).unwrap_or_default());
    for f in findings {
        if stream {
            println!("{f}");
        }
        lines.push(f);
    }
    let status = match exit_marker_status(&lines) {
        Some(n) => Some(((n as i32) << 1) | 1),
        None if timed_out => None,
        None => Some(0),
    };
    Ok(QemuOutcome {
        lines,
        status,
        timed_out,
    })
}

/// `cargo xtask bochs [--guest NAME]... [--log LEVEL] [--timeout SECS]`:
/// builds hv-app (and the guests), boots them in Bochs on emulated VMX and
/// returns the hypervisor's exit status.
pub fn command(args: &[String]) -> Result<u8, String> {
    let mut guests = Vec::new();
    let mut log = None;
    let mut timeout = Duration::from_secs(120);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("bochs: {name} needs a value"))
        };
        match a.as_str() {
            "--guest" => guests.push(val("--guest")?),
            "--log" => log = Some(format!("log={}", val("--log")?)),
            "--timeout" => {
                let v = val("--timeout")?;
                timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("bochs: bad --timeout `{v}`"))?,
                );
            }
            other => return Err(format!("bochs: unknown option `{other}`")),
        }
    }
    let elf = crate::tasks::build_hv_app()?;
    let mut specs = Vec::new();
    if !guests.is_empty() {
        let dir = crate::tasks::build_guests()?;
        for g in &guests {
            let image = dir.join(g);
            if !image.is_file() {
                return Err(format!("bochs: no guest `{g}` in {}", dir.display()));
            }
            specs.push(crate::vms::VmSpec {
                config: crate::tasks::root().join("configs/test-guest.toml"),
                image,
                name: Some(g.clone()),
            });
        }
    }
    let modules = if specs.is_empty() {
        Vec::new()
    } else {
        let dir = elf
            .parent()
            .ok_or("the hv-app ELF has no directory")?
            .join("xtask-vms");
        modules_from_initrd(&crate::vms::prepare_modules(&specs, &dir)?)
    };
    let t = Instant::now();
    let out = match &log {
        Some(cmdline) => run_bochs_with(&elf, &modules, Some(cmdline), timeout, true)?,
        None => run_bochs(&elf, &modules, timeout, true)?,
    };
    println!("==> Bochs run took {:.1}s", t.elapsed().as_secs_f64());
    if out.timed_out {
        return Err(format!(
            "Bochs did not end within {}s (stopped)",
            timeout.as_secs()
        ));
    }
    match out.debug_exit_value() {
        Some(v) => {
            println!("==> hypervisor exited with status {v}");
            Ok(u8::try_from(v).unwrap_or(255))
        }
        None => Err("Bochs ended without the hypervisor's `axhv: exit status` line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_argument_becomes_module_pairs() {
        let m = modules_from_initrd("/t/vm1.cfg vmcfg,/t/vm1.img vmimage");
        assert_eq!(
            m,
            vec![
                (PathBuf::from("/t/vm1.cfg"), "vmcfg".to_string()),
                (PathBuf::from("/t/vm1.img"), "vmimage".to_string()),
            ]
        );
        assert_eq!(
            modules_from_initrd("/k"),
            vec![(PathBuf::from("/k"), String::new())]
        );
        assert!(modules_from_initrd("").is_empty());
    }

    #[test]
    fn grub_cfg_ends_module_strings_with_the_role() {
        let cfg = grub_cfg(
            Some("log=debug"),
            &[
                ("vm1.cfg".into(), "vmcfg".into()),
                ("vm1.img".into(), "vmimage".into()),
            ],
        );
        assert_eq!(
            cfg,
            "set timeout=0\n\
             serial --unit=0 --speed=115200\n\
             terminal_input serial; terminal_output serial\n\
             multiboot /boot/hv-app log=debug\n\
             module /boot/vm1.cfg /boot/vm1.cfg vmcfg\n\
             module /boot/vm1.img /boot/vm1.img vmimage\n\
             boot\n"
        );
        assert!(grub_cfg(None, &[]).contains("multiboot /boot/hv-app\nboot\n"));
    }

    #[test]
    fn bochsrc_has_the_vmx_model_and_paths() {
        let rc = bochsrc(
            Path::new("/o/axhv.iso"),
            Path::new("/o/serial.out"),
            Path::new("/o/bochs.log"),
            256,
        );
        assert!(rc.contains(
            "cpu: model=corei7_skylake_x, count=1, ips=50000000, reset_on_triple_fault=0\n"
        ));
        assert!(rc.contains("ata0-master: type=cdrom, path=/o/axhv.iso, status=inserted\n"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/o/serial.out\n"));
        assert!(rc.contains("log: /o/bochs.log\n"));
        assert!(rc.starts_with("megs: 256\n"));
    }

    #[test]
    fn exit_status_from_the_marker() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            exit_marker_status(&l(&["a", "axhv: exit status 0"])),
            Some(0)
        );
        assert_eq!(
            exit_marker_status(&l(&["axhv: exit status 4", "x axhv: exit status 126"])),
            Some(126)
        );
        assert_eq!(exit_marker_status(&l(&["axhv: exit status "])), None);
        assert_eq!(exit_marker_status(&l(&["no marker"])), None);
        // Reported like isa-debug-exit: QemuOutcome decodes it back.
        let o = QemuOutcome {
            lines: l(&["axhv: exit status 5"]),
            status: Some((5 << 1) | 1),
            timed_out: false,
        };
        assert_eq!(o.debug_exit_value(), Some(5));
    }

    #[test]
    fn log_findings_skip_the_normal_shutdown() {
        let log = "00000000000i[CPU0  ] \t\tvmx\n\
                   00242864654p[UNMAP ] >>PANIC<< Shutdown port: shutdown requested\n\
                   00012345678e[CPU0  ] VMENTER FAIL: RFLAGS[1] cleared\n";
        assert_eq!(
            log_findings(log),
            vec!["[bochs] 00012345678e[CPU0  ] VMENTER FAIL: RFLAGS[1] cleared".to_string()]
        );
    }

    #[test]
    fn line_splitting_keeps_the_unfinished_tail() {
        let mut buf = b"one\r\ntwo\nthr".to_vec();
        assert_eq!(take_lines(&mut buf), vec!["one", "two"]);
        assert_eq!(buf, b"thr");
    }

    #[test]
    fn grub_rejects_unsafe_words() {
        assert!(grub_safe("vm1.cfg"));
        assert!(!grub_safe("a b"));
        assert!(!grub_safe("x;y"));
    }
}
