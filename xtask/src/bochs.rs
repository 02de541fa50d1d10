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

/// A GRUB configuration that talks on COM1 and boots with `body` (the
/// loader lines) at once.
fn grub_cfg_with(body: &str) -> String {
    format!(
        "set timeout=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial; terminal_output serial\n\
         {body}boot\n"
    )
}

/// The GRUB configuration booting `/boot/hv-app` with `cmdline` and the
/// modules, each as `module /boot/NAME /boot/NAME STRING`: GRUB gives
/// hv-app `/boot/NAME STRING` as the module string, and hv-app pairs VM
/// modules by its last word (`vmcfg`, `vmimage`).
pub fn grub_cfg(cmdline: Option<&str>, modules: &[(String, String)]) -> String {
    let mut s = match cmdline {
        Some(c) if !c.is_empty() => format!("multiboot /boot/hv-app {c}\n"),
        _ => "multiboot /boot/hv-app\n".to_string(),
    };
    for (name, string) in modules {
        let line = format!("module /boot/{name} /boot/{name} {string}");
        s.push_str(line.trim_end());
        s.push('\n');
    }
    grub_cfg_with(&s)
}

/// `word` escaped for GRUB's script parser: a backslash before each
/// character it would otherwise take as syntax (`$` starts a variable, so
/// `memmap=256M$0x20000000` is written `memmap=256M\$0x20000000`; Linux
/// then sees `memmap=256M$0x20000000` in `/proc/cmdline`, checked on
/// Bochs). GRUB's `linux` command joins its arguments with spaces, after
/// `BOOT_IMAGE=<path>`.
pub fn grub_escape(word: &str) -> String {
    let mut s = String::with_capacity(word.len());
    for c in word.chars() {
        if "\"'\\$;{}#|&<>".contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// The GRUB configuration booting the Linux kernel `/boot/vmlinuz` with
/// `cmdline` (each word escaped with [`grub_escape`]) and the initramfs
/// `/boot/initrd.gz`.
pub fn grub_cfg_linux(cmdline: &str) -> String {
    let words: Vec<String> = cmdline.split_whitespace().map(grub_escape).collect();
    let linux = if words.is_empty() {
        "linux /boot/vmlinuz\n".to_string()
    } else {
        format!("linux /boot/vmlinuz {}\n", words.join(" "))
    };
    grub_cfg_with(&format!("{linux}initrd /boot/initrd.gz\n"))
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
    let mut files: Vec<(&Path, String)> = vec![(elf, "hv-app".to_string())];
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
        files.push((path, name.clone()));
        names.push((
            name,
            string.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    if let Some(c) = cmdline.filter(|c| c.split_whitespace().any(|w| !grub_safe(w))) {
        return Err(format!("GRUB cannot pass the command line `{c}`"));
    }
    iso_from(&files, &grub_cfg(cmdline, &names), dir)
}

/// Makes `<dir>/axhv.iso`: a GRUB rescue CD booting the Linux kernel
/// `kernel` (as `/boot/vmlinuz`) with `cmdline` and the initramfs `initrd`
/// (as `/boot/initrd.gz`). Returns the ISO's path.
pub fn build_linux_iso(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    dir: &Path,
) -> Result<PathBuf, String> {
    let files = [
        (kernel, "vmlinuz".to_string()),
        (initrd, "initrd.gz".to_string()),
    ];
    iso_from(&files, &grub_cfg_linux(cmdline), dir)
}

/// Makes `<dir>/axhv.iso` from `<dir>/isodir`, made afresh: each file
/// copied to `/boot/<name>` and `cfg` as `/boot/grub/grub.cfg`.
fn iso_from(files: &[(&Path, String)], cfg: &str, dir: &Path) -> Result<PathBuf, String> {
    let isodir = dir.join("isodir");
    if isodir.exists() {
        std::fs::remove_dir_all(&isodir).map_err(|e| format!("{}: {e}", isodir.display()))?;
    }
    let boot = isodir.join("boot");
    std::fs::create_dir_all(boot.join("grub")).map_err(|e| format!("{}: {e}", boot.display()))?;
    for (from, name) in files {
        let to = boot.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    }
    let cfg_path = boot.join("grub").join("grub.cfg");
    std::fs::write(&cfg_path, cfg).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
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

/// The emulated machine of a Bochs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// Memory in MiB (`megs:`).
    pub megs: u32,
    /// Number of CPUs (`cpu: count=`; Debian's Bochs is built with SMP).
    pub cpus: u32,
}

/// The machine of a Type-1 run: one CPU, 256 MiB.
pub const TYPE1_MACHINE: Machine = Machine { megs: 256, cpus: 1 };

/// The bochsrc of a headless run of `iso` on a Skylake-X model (VMX with
/// EPT, unrestricted guest, VPID), COM1 into `serial`, the log into `log`.
pub fn bochsrc(iso: &Path, serial: &Path, log: &Path, machine: Machine) -> String {
    format!(
        "megs: {}\n\
         romimage: file={BIOS}\n\
         vgaromimage: file={VGA_BIOS}\n\
         cpu: model=corei7_skylake_x, count={}, ips=50000000, reset_on_triple_fault=0\n\
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
        machine.megs,
        machine.cpus,
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
/// failures, panics (except the normal ends: the `Shutdown` port's and an
/// ACPI soft power off), and triple faults. At most 20, prefixed with
/// `[bochs] `.
pub fn log_findings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            (l.contains("VMENTER FAIL")
                || l.contains("VMFAIL")
                || l.contains(">>PANIC<<")
                || l.contains("triple fault")
                || l.contains("exception(): 3rd"))
                && !l.contains("Shutdown port: shutdown requested")
                && !l.contains("ACPI control: soft power off")
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
    let run = run_iso(&RunSpec {
        iso: &iso,
        dir: &dir,
        machine: TYPE1_MACHINE,
        timeout,
        stream,
        end_marker: EXIT_MARKER,
        grace: GRACE_AFTER_MARKER,
        stall: None,
    })?;
    let mut lines = run.lines;
    lines.extend(run.findings);
    let status = match exit_marker_status(&lines) {
        Some(n) => Some(((n as i32) << 1) | 1),
        None if run.timed_out => None,
        None => Some(0),
    };
    Ok(QemuOutcome {
        lines,
        status,
        timed_out: run.timed_out,
    })
}

/// What [`run_iso`] boots and when it stops.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec<'a> {
    /// The GRUB ISO to boot from the CD drive.
    pub iso: &'a Path,
    /// Where `bochsrc`, `serial.out`, `serial.timed` (each line with the
    /// second it came) and `bochs.log` go.
    pub dir: &'a Path,
    /// The emulated machine.
    pub machine: Machine,
    /// Wall-clock bound of the run (Bochs is stopped then).
    pub timeout: Duration,
    /// Copy console lines to our stdout as they come.
    pub stream: bool,
    /// The console text after which the run is over: Bochs gets `grace`
    /// to stop by itself (a power-off), then it is stopped.
    pub end_marker: &'a str,
    /// See `end_marker`.
    pub grace: Duration,
    /// Once a console line has this text, a console quiet for this long
    /// ends the run (`stalled`): e.g. once Linux's `/init` runs, a hang
    /// need not wait for `timeout`.
    pub stall: Option<(&'a str, Duration)>,
}

/// What [`run_iso`] saw.
#[derive(Debug, Default)]
pub struct BochsRun {
    /// Every COM1 line.
    pub lines: Vec<String>,
    /// When each line of `lines` was read, from the start of Bochs.
    pub times: Vec<Duration>,
    /// The run hit its timeout (Bochs was stopped).
    pub timed_out: bool,
    /// The console stayed quiet too long ([`RunSpec::stall`]; Bochs was
    /// stopped).
    pub stalled: bool,
    /// The end marker was seen.
    pub marker_seen: bool,
    /// Bochs ended by itself (not stopped by us).
    pub exited: bool,
    /// The machine powered off: an ACPI soft power off (S5) or the
    /// `Shutdown` port, as the Bochs log says.
    pub powered_off: bool,
    /// What the Bochs log says about a failure ([`log_findings`]).
    pub findings: Vec<String>,
    /// The whole run's wall-clock time.
    pub elapsed: Duration,
}

impl BochsRun {
    /// When the first line containing `text` was read.
    pub fn time_of(&self, text: &str) -> Option<Duration> {
        self.lines
            .iter()
            .position(|l| l.contains(text))
            .and_then(|i| self.times.get(i).copied())
    }
}

/// Boots `spec.iso` headless in Bochs and collects COM1 line by line until
/// Bochs ends, `spec.end_marker` has been seen for `spec.grace`, or
/// `spec.timeout` passes.
pub fn run_iso(spec: &RunSpec) -> Result<BochsRun, String> {
    let (serial, log, rc) = (
        spec.dir.join("serial.out"),
        spec.dir.join("bochs.log"),
        spec.dir.join("bochsrc"),
    );
    for f in [&serial, &log] {
        let _ = std::fs::remove_file(f);
    }
    std::fs::write(&rc, bochsrc(spec.iso, &serial, &log, spec.machine))
        .map_err(|e| format!("{}: {e}", rc.display()))?;
    if spec.stream {
        println!(
            "==> bochs-bin -q -f {} (serial {}, log {})",
            rc.display(),
            serial.display(),
            log.display()
        );
    }

    let hard_bound = spec.timeout.as_secs() + 15;
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
    let mut run = BochsRun::default();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    let mut marker_at: Option<Instant> = None;
    let mut read_serial = |run: &mut BochsRun, pending: &mut Vec<u8>| {
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
            if spec.stream {
                println!("{line}");
            }
            run.lines.push(line);
            run.times.push(start.elapsed());
        }
    };
    loop {
        read_serial(&mut run, &mut pending);
        if marker_at.is_none() && run.lines.iter().any(|l| l.contains(spec.end_marker)) {
            marker_at = Some(Instant::now());
            run.marker_seen = true;
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            run.exited = true;
            break;
        }
        if marker_at.is_some_and(|t| t.elapsed() > spec.grace) {
            stop(&mut child);
            break;
        }
        if start.elapsed() > spec.timeout {
            run.timed_out = true;
            stop(&mut child);
            break;
        }
        if let Some((text, quiet)) = spec.stall
            && marker_at.is_none()
            && run.lines.iter().any(|l| l.contains(text))
            && run
                .times
                .last()
                .is_some_and(|&t| start.elapsed() > t + quiet)
        {
            run.stalled = true;
            stop(&mut child);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    read_serial(&mut run, &mut pending);
    if !pending.is_empty() {
        // The last line may lack its line end when Bochs stopped at once.
        let line = String::from_utf8_lossy(&pending)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if spec.stream {
            println!("{line}");
        }
        run.lines.push(line);
        run.times.push(start.elapsed());
    }
    if !run.marker_seen {
        run.marker_seen = run.lines.iter().any(|l| l.contains(spec.end_marker));
    }
    let _ = t_out.join();
    let _ = t_err.join();
    // Each line with the wall-clock second it was read at: where a slow
    // run spent its time.
    let timed: String = run
        .times
        .iter()
        .zip(&run.lines)
        .map(|(t, l)| format!("{:8.1} {l}\n", t.as_secs_f64()))
        .collect();
    let _ = std::fs::write(spec.dir.join("serial.timed"), timed);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    run.powered_off = log_text.contains("ACPI control: soft power off")
        || log_text.contains("Shutdown port: shutdown requested");
    run.findings = log_findings(&log_text);
    if spec.stream {
        for f in &run.findings {
            println!("{f}");
        }
    }
    run.elapsed = start.elapsed();
    Ok(run)
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
    fn grub_cfg_linux_escapes_the_dollar_of_memmap() {
        let cfg = grub_cfg_linux(&crate::linux::kernel_cmdline());
        let linux = cfg.lines().find(|l| l.starts_with("linux ")).unwrap();
        assert!(
            linux.starts_with("linux /boot/vmlinuz console=ttyS0"),
            "{linux}"
        );
        // GRUB would expand `$0x20000000` as a variable: written `\$`.
        assert!(linux.contains(" memmap=256M\\$0x20000000 "), "{linux}");
        assert_eq!(linux.matches('$').count(), 1);
        assert!(cfg.ends_with("initrd /boot/initrd.gz\nboot\n"), "{cfg}");
        assert!(cfg.starts_with("set timeout=0\nserial --unit=0 --speed=115200\n"));
        assert_eq!(grub_escape("a\"b;c\\d"), "a\\\"b\\;c\\\\d");
        assert_eq!(grub_escape("rdinit=/init"), "rdinit=/init");
    }

    #[test]
    fn bochsrc_takes_the_cpu_count_and_memory() {
        let rc = bochsrc(
            Path::new("/o/axhv.iso"),
            Path::new("/o/serial.out"),
            Path::new("/o/bochs.log"),
            Machine {
                megs: 1024,
                cpus: 2,
            },
        );
        assert!(rc.starts_with("megs: 1024\n"));
        assert!(rc.contains(
            "cpu: model=corei7_skylake_x, count=2, ips=50000000, reset_on_triple_fault=0\n"
        ));
    }

    #[test]
    fn run_times_are_found_by_line() {
        let run = BochsRun {
            lines: vec!["grub".into(), "axhv-rootvm: Linux up (6.1)".into()],
            times: vec![Duration::from_secs(1), Duration::from_secs(190)],
            ..Default::default()
        };
        assert_eq!(run.time_of(": Linux up"), Some(Duration::from_secs(190)));
        assert_eq!(run.time_of("axhv-rootvm: done"), None);
    }

    #[test]
    fn bochsrc_has_the_vmx_model_and_paths() {
        let rc = bochsrc(
            Path::new("/o/axhv.iso"),
            Path::new("/o/serial.out"),
            Path::new("/o/bochs.log"),
            TYPE1_MACHINE,
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
                   06956936672p[ACPI  ] >>PANIC<< ACPI control: soft power off\n\
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
