#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod abi;
pub mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};

use abi::{SelfTest, Status, UserBuf, VmConsole, VmCreate, VmEntry};
use axvmconfig::VmConfig;
use cli::Command;

/// The device node of the axhv kernel module.
pub const DEVICE: &str = "/dev/axhv";

/// Linux errno values `hvctl` explains.
pub mod errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Exec format error: the image is not one the module accepts.
    pub const ENOEXEC: i32 = 8;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// No such device: the hypervisor is not enabled.
    pub const ENODEV: i32 = 19;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// No space left: the image does not fit in the reserved region.
    pub const ENOSPC: i32 = 28;
    /// Function not implemented.
    pub const ENOSYS: i32 = 38;
    /// Operation not supported: the image has no Linux entry.
    pub const EOPNOTSUPP: i32 = 95;
}

/// Errors of `hvctl`, each phrased so a person can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The VM configuration is invalid (checked before the kernel sees it).
    #[error("{path}: invalid VM configuration: {source}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What `axvmconfig` found.
        source: axvmconfig::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `/dev/axhv` could not be opened.
    #[error("cannot open {DEVICE}: {reason}")]
    Open {
        /// Why, with what to do.
        reason: String,
    },
    /// The module refused an ioctl.
    #[error("{what}: {reason}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The explanation of the errno.
        reason: String,
        /// The errno.
        errno: i32,
    },
    /// `vm wait`: no VM with that id.
    #[error("no VM {0} (see `hvctl vm list`)")]
    NoSuchVm(u32),
    /// Waited too long.
    #[error("gave up waiting for {what} after {secs} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// `vm console --until`: the VM ended without printing the text.
    #[error("VM {id} ended without printing `{text}`")]
    NotSeen {
        /// The awaited text.
        text: String,
        /// The VM.
        id: u32,
    },
    /// `selftest`: probes that did not get their error code.
    #[error("selftest: {0} probe(s) did not get the expected error code")]
    SelfTest(u32),
}

/// `Result` of `hvctl`.
pub type Result<T = ()> = core::result::Result<T, Error>;

/// The ioctl seam: `/dev/axhv` on Linux, a fake in tests.
pub trait Device {
    /// Issues ioctl `cmd` with `arg` (the encoded structure, empty for
    /// `_IO` ioctls); returns the ioctl's value or the errno.
    fn ioctl(&mut self, cmd: u32, arg: &mut [u8]) -> core::result::Result<i32, i32>;
}

/// Explains an errno from the open of [`DEVICE`].
pub fn open_error(errno: i32) -> Error {
    let reason = match errno {
        errno::ENOENT | errno::ENODEV => {
            "is the axhv module loaded? (insmod axhv.ko hv_mem=... hv_size=...)".to_string()
        }
        errno::EACCES => "permission denied (run hvctl as root)".to_string(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    };
    Error::Open { reason }
}

fn ioctl_error(what: &'static str, errno: i32) -> Error {
    let reason = match (what, errno) {
        ("enable", errno::EOPNOTSUPP) => "the hypervisor image has no Linux entry (Type-1.5 \
            entry not implemented in hv-app yet; see dmesg)"
            .to_string(),
        ("enable", errno::ENOEXEC) | ("load image", errno::ENOEXEC) => {
            "the module refused the hypervisor image (see dmesg)".to_string()
        }
        ("load image", errno::ENOSPC) => {
            "the image does not fit in the reserved region (larger hv_size/memmap=)".to_string()
        }
        ("vm create", errno::EBUSY) => "no CPU to give the VM: Linux keeps its boot CPU, so a \
            second online CPU is needed, and each VM takes one (see dmesg)"
            .to_string(),
        ("vm create", errno::ENOEXEC) => "the hypervisor refused the configuration or the \
            image (its console line `axhv: vm create ...` says why)"
            .to_string(),
        ("vm create", errno::ENOMEM) => "the hypervisor's memory pool is exhausted (destroy \
            a VM, or reserve a larger region with memmap=)"
            .to_string(),
        ("vm destroy", errno::EBUSY) => {
            "the VM's CPU did not leave the VM in time; try again".to_string()
        }
        (_, errno::ENOENT) => "no such VM (see `hvctl vm list`)".to_string(),
        (_, errno::EBUSY) => "the hypervisor is enabled; disable it first".to_string(),
        (_, errno::ENODEV) => {
            "the hypervisor is not enabled (run `hvctl enable` first)".to_string()
        }
        (_, errno::ENOSYS) => "not implemented by the hypervisor yet".to_string(),
        ("enable", e) => format!(
            "{}; every CPU was rolled back to native (see dmesg)",
            std::io::Error::from_raw_os_error(e)
        ),
        (_, e) => std::io::Error::from_raw_os_error(e).to_string(),
    };
    Error::Ioctl {
        what,
        reason,
        errno,
    }
}

/// Refines a failed enable: `EOPNOTSUPP` comes from the module for an
/// image without a Linux entry, but also from an entry that does not
/// support this CPU (then the module rolled every CPU back); the module's
/// status tells them apart.
fn enable_error(dev: &mut dyn Device, e: Error) -> Error {
    if let Error::Ioctl {
        errno: errno::EOPNOTSUPP,
        ..
    } = e
    {
        let mut b = [0u8; Status::SIZE];
        let has_entry = call(dev, "status", abi::IOC_STATUS, &mut b).is_ok()
            && Status::decode(&b).flags & abi::STATUS_IMAGE_LINUX_ENTRY != 0;
        if has_entry {
            return Error::Ioctl {
                what: "enable",
                reason: "the hypervisor's Linux entry does not support this CPU (Operation not \
                    supported); every CPU was rolled back to native (see dmesg and the \
                    hypervisor's console lines)"
                    .to_string(),
                errno: errno::EOPNOTSUPP,
            };
        }
    }
    e
}

fn call(dev: &mut dyn Device, what: &'static str, cmd: u32, arg: &mut [u8]) -> Result<i32> {
    dev.ioctl(cmd, arg).map_err(|e| ioctl_error(what, e))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })
}

/// Loads and checks a VM configuration and its image with `axvmconfig`;
/// returns the binary configuration the module gets and the image.
pub fn prepare_vm(config: &Path, image: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let cfg_err = |source| Error::Config {
        path: config.into(),
        source,
    };
    let cfg = VmConfig::load_any_file(config).map_err(cfg_err)?;
    cfg.validate().map_err(cfg_err)?;
    let img = read(image)?;
    cfg.check_kernel_size(img.len() as u64).map_err(cfg_err)?;
    let bin = cfg.to_bytes().map_err(cfg_err)?;
    Ok((bin, img))
}

/// Describes the module's status.
pub fn describe_status(s: &Status) -> String {
    let yes = |bit| if s.flags & bit != 0 { "yes" } else { "no" };
    format!(
        "axhv module ABI {}.{}\nreserved region: {:#x}..{:#x} ({} MiB), verified: {}\n\
         hypervisor image: {} ({} bytes, Linux entry: {})\nenabled: {}\nonline CPUs: {}",
        s.abi >> 16,
        s.abi & 0xffff,
        s.region_base,
        s.region_base + s.region_size,
        s.region_size >> 20,
        yes(abi::STATUS_REGION_OK),
        if s.flags & abi::STATUS_IMAGE_LOADED != 0 {
            "loaded"
        } else {
            "not loaded"
        },
        s.image_size,
        yes(abi::STATUS_IMAGE_LINUX_ENTRY),
        yes(abi::STATUS_ENABLED),
        s.online_cpus,
    )
}

/// Runs `cmd`: files and configurations are checked first, then `open`
/// gives the device (so a bad config never reaches the kernel). Output goes
/// to `out`.
pub fn execute(
    cmd: &Command,
    open: &mut dyn FnMut() -> Result<Box<dyn Device>>,
    out: &mut dyn Write,
) -> Result {
    // One write per line: a line-oriented sink such as `/dev/kmsg` (one
    // record per write, at most about 1 KiB) gets each line whole.
    let mut say = |s: String| {
        for line in s.split('\n') {
            let _ = out.write_all(format!("{line}\n").as_bytes());
        }
    };
    match cmd {
        Command::Help => say(cli::USAGE.trim_end().to_string()),
        Command::Status => {
            let mut dev = open()?;
            let mut b = [0u8; Status::SIZE];
            call(dev.as_mut(), "status", abi::IOC_STATUS, &mut b)?;
            say(describe_status(&Status::decode(&b)));
        }
        Command::Enable { image } => {
            let img = read(image)?;
            let mut dev = open()?;
            let mut arg = UserBuf {
                ptr: img.as_ptr() as u64,
                len: img.len() as u64,
            }
            .encode();
            call(dev.as_mut(), "load image", abi::IOC_LOAD_IMAGE, &mut arg)?;
            say(format!("loaded {} ({} bytes)", image.display(), img.len()));
            if let Err(e) = call(dev.as_mut(), "enable", abi::IOC_ENABLE, &mut []) {
                return Err(enable_error(dev.as_mut(), e));
            }
            say("hypervisor enabled: Linux runs as the root VM".into());
        }
        Command::Disable => {
            let mut dev = open()?;
            call(dev.as_mut(), "disable", abi::IOC_DISABLE, &mut [])?;
            say("hypervisor disabled: Linux runs natively".into());
        }
        Command::VmCreate { config, image } => {
            let (bin, img) = prepare_vm(config, image)?;
            say(format!(
                "{}: configuration valid ({} bytes binary), image {} bytes",
                config.display(),
                bin.len(),
                img.len()
            ));
            let mut dev = open()?;
            let mut arg = VmCreate {
                config: UserBuf {
                    ptr: bin.as_ptr() as u64,
                    len: bin.len() as u64,
                },
                image: UserBuf {
                    ptr: img.as_ptr() as u64,
                    len: img.len() as u64,
                },
                id: 0,
            }
            .encode();
            call(dev.as_mut(), "vm create", abi::IOC_VM_CREATE, &mut arg)?;
            say(format!("created VM {}", VmCreate::id_from(&arg)));
        }
        Command::VmList => {
            let mut dev = open()?;
            let mut buf = vec![0u8; 64 * VmEntry::SIZE];
            let mut arg = UserBuf {
                ptr: buf.as_mut_ptr() as u64,
                len: buf.len() as u64,
            }
            .encode();
            let n = call(dev.as_mut(), "vm list", abi::IOC_VM_LIST, &mut arg)?;
            say(format!("{n} VM(s)"));
            for e in buf.chunks(VmEntry::SIZE).take(n.max(0) as usize) {
                if let Some(e) = VmEntry::decode(e) {
                    say(format!(
                        "VM {}: {}, CPUs {:#x}",
                        e.id,
                        e.state_name(),
                        e.cpus
                    ));
                }
            }
        }
        Command::VmWait { id, timeout } => {
            let mut dev = open()?;
            let start = std::time::Instant::now();
            loop {
                let mut buf = vec![0u8; 64 * VmEntry::SIZE];
                let mut arg = UserBuf {
                    ptr: buf.as_mut_ptr() as u64,
                    len: buf.len() as u64,
                }
                .encode();
                let n = call(dev.as_mut(), "vm wait", abi::IOC_VM_LIST, &mut arg)?;
                let entry = buf
                    .chunks(VmEntry::SIZE)
                    .take(n.max(0) as usize)
                    .filter_map(VmEntry::decode)
                    .find(|e| e.id == *id);
                match entry {
                    None => return Err(Error::NoSuchVm(*id)),
                    Some(e) if e.state == 2 => {
                        say(format!("VM {id} has ended"));
                        break;
                    }
                    Some(_) if start.elapsed().as_secs() >= *timeout => {
                        return Err(Error::Timeout {
                            what: format!("VM {id} to end"),
                            secs: *timeout,
                        });
                    }
                    Some(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        }
        Command::SelfTest => {
            let mut dev = open()?;
            let mut b = [0u8; SelfTest::SIZE];
            call(dev.as_mut(), "selftest", abi::IOC_SELFTEST, &mut b)?;
            let t = SelfTest::decode(&b);
            let checks = [
                (
                    "vm_create with buffers in the hypervisor's region",
                    t.bad_buffer,
                    -14,
                    "EFAULT",
                ),
                ("unknown hypercall 0x7777", t.unknown_nr, -38, "ENOSYS"),
                ("vm_start of VM 0", t.bad_vm_id, -22, "EINVAL"),
                (
                    "root VM read of the hypervisor's memory",
                    t.hv_read,
                    -14,
                    "EFAULT",
                ),
            ];
            // The CPU's own virtualization feature, hidden from the root VM.
            let hidden: &[(&str, i64, i64, &str)] = if t.vendor == abi::VENDOR_INTEL {
                &[(
                    "CPUID VMX bit as the root VM reads it",
                    t.cpuid_vmx,
                    0,
                    "hidden",
                )]
            } else {
                &[
                    (
                        "EFER.SVME as the root VM reads it",
                        t.efer_svme,
                        0,
                        "hidden",
                    ),
                    (
                        "CPUID SVM bit as the root VM reads it",
                        t.cpuid_svm,
                        0,
                        "hidden",
                    ),
                ]
            };
            let mut bad = 0;
            for &(what, got, want, name) in checks.iter().chain(hidden) {
                let verdict = if got == want { "ok" } else { "UNEXPECTED" };
                if got != want {
                    bad += 1;
                }
                say(format!(
                    "selftest: {what} -> {got} ({name} expected): {verdict}"
                ));
            }
            if bad > 0 {
                return Err(Error::SelfTest(bad));
            }
            say("selftest: every probe got its error code".into());
        }
        Command::VmDestroy(id) => {
            let mut dev = open()?;
            let mut arg = id.to_le_bytes();
            call(dev.as_mut(), "vm destroy", abi::IOC_VM_DESTROY, &mut arg)?;
            say(format!("destroyed VM {id}"));
        }
        Command::VmFollow { id, follow } => {
            let mut dev = open()?;
            let start = std::time::Instant::now();
            let mut seen = Vec::new();
            let mut idle = 0u32;
            let mut last_output = std::time::Instant::now();
            loop {
                let chunk = read_console(dev.as_mut(), *id)?;
                let _ = out.write_all(&chunk);
                let _ = out.flush();
                seen.extend_from_slice(&chunk);
                if seen.len() > 64 << 10 {
                    seen.drain(..seen.len() - (16 << 10));
                }
                if let Some(t) = &follow.until
                    && seen.windows(t.len().max(1)).any(|w| w == t.as_bytes())
                {
                    let _ = writeln!(out);
                    break;
                }
                if !chunk.is_empty() {
                    last_output = std::time::Instant::now();
                    continue;
                }
                if let Some(secs) = follow.idle
                    && !seen.is_empty()
                    && last_output.elapsed().as_secs_f64() >= secs as f64
                {
                    break;
                }
                // Ended and drained: nothing more will come.
                idle += 1;
                if idle % 5 == 0 && vm_state(dev.as_mut(), *id)? == Some(2) {
                    let again = read_console(dev.as_mut(), *id)?;
                    let _ = out.write_all(&again);
                    seen.extend_from_slice(&again);
                    if again.is_empty() {
                        if let Some(t) = &follow.until
                            && !seen.windows(t.len().max(1)).any(|w| w == t.as_bytes())
                        {
                            return Err(Error::NotSeen {
                                text: t.clone(),
                                id: *id,
                            });
                        }
                        break;
                    }
                }
                if start.elapsed().as_secs() >= follow.timeout {
                    return Err(Error::Timeout {
                        what: match &follow.until {
                            Some(t) => format!("`{t}` on VM {id}'s console"),
                            None => format!("VM {id} to end"),
                        },
                        secs: follow.timeout,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Command::VmInput { id, bytes } => {
            let mut dev = open()?;
            let mut arg = VmConsole {
                id: *id,
                buf: UserBuf {
                    ptr: bytes.as_ptr() as u64,
                    len: bytes.len() as u64,
                },
            }
            .encode();
            let n = call(dev.as_mut(), "vm input", abi::IOC_VM_INPUT, &mut arg)?;
            say(format!("sent {n} of {} byte(s) to VM {id}", bytes.len()));
        }
        Command::VmConsole(id) => {
            let mut dev = open()?;
            let mut buf = vec![0u8; 64 << 10];
            let mut arg = VmConsole {
                id: *id,
                buf: UserBuf {
                    ptr: buf.as_mut_ptr() as u64,
                    len: buf.len() as u64,
                },
            }
            .encode();
            let n = call(dev.as_mut(), "vm console", abi::IOC_VM_CONSOLE, &mut arg)?;
            buf.truncate(n.max(0) as usize);
            say(String::from_utf8_lossy(&buf).trim_end().to_string());
        }
    }
    Ok(())
}

/// Moves what VM `id` wrote out of its console ring.
fn read_console(dev: &mut dyn Device, id: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 << 10];
    let mut arg = VmConsole {
        id,
        buf: UserBuf {
            ptr: buf.as_mut_ptr() as u64,
            len: buf.len() as u64,
        },
    }
    .encode();
    let n = call(dev, "vm console", abi::IOC_VM_CONSOLE, &mut arg)?;
    buf.truncate(n.max(0) as usize);
    Ok(buf)
}

/// The state of VM `id` (0 created, 1 running, 2 ended), `None` if there
/// is no such VM.
fn vm_state(dev: &mut dyn Device, id: u32) -> Result<Option<u32>> {
    let mut buf = vec![0u8; 64 * VmEntry::SIZE];
    let mut arg = UserBuf {
        ptr: buf.as_mut_ptr() as u64,
        len: buf.len() as u64,
    }
    .encode();
    let n = call(dev, "vm list", abi::IOC_VM_LIST, &mut arg)?;
    Ok(buf
        .chunks(VmEntry::SIZE)
        .take(n.max(0) as usize)
        .filter_map(VmEntry::decode)
        .find(|e| e.id == id)
        .map(|e| e.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ioctl the fake saw: command and argument bytes.
    type Log = std::rc::Rc<std::cell::RefCell<Vec<(u32, Vec<u8>)>>>;
    /// The fake's script: the answer to an ioctl.
    type Answer = fn(u32, &mut [u8]) -> core::result::Result<i32, i32>;

    /// A fake /dev/axhv: records each ioctl and answers from a script.
    struct Fake {
        log: Log,
        answer: Answer,
    }

    impl Device for Fake {
        fn ioctl(&mut self, cmd: u32, arg: &mut [u8]) -> core::result::Result<i32, i32> {
            self.log.borrow_mut().push((cmd, arg.to_vec()));
            (self.answer)(cmd, arg)
        }
    }

    fn run(args: &[&str], answer: Answer) -> (Result, String, Log) {
        let cmd = cli::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let log: Log = Default::default();
        let l2 = log.clone();
        let mut open = move || -> Result<Box<dyn Device>> {
            Ok(Box::new(Fake {
                log: l2.clone(),
                answer,
            }))
        };
        let mut out = Vec::new();
        let r = execute(&cmd, &mut open, &mut out);
        (r, String::from_utf8(out).unwrap(), log)
    }

    fn repo(p: &str) -> String {
        format!("{}/../{p}", env!("CARGO_MANIFEST_DIR"))
    }

    fn tmp_file(name: &str, data: &[u8]) -> String {
        let p = std::env::temp_dir().join(format!("hvctl-test-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    }

    #[test]
    fn enable_without_linux_entry_is_explained() {
        let img = tmp_file("hv.bin", &[0x90; 100]);
        let (r, out, log) = run(&["enable", "--image", &img], |cmd, _| {
            if cmd == abi::IOC_ENABLE {
                Err(errno::EOPNOTSUPP)
            } else {
                Ok(0)
            }
        });
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("enable: the hypervisor image has no Linux entry"),
            "{e}"
        );
        assert!(out.contains("(100 bytes)"), "{out}");
        let log = log.borrow();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].0, abi::IOC_LOAD_IMAGE);
        // The image length travels in bytes 8..16 of struct axhv_buf.
        assert_eq!(&log[0].1[8..16], &100u64.to_le_bytes());
        assert_eq!(log[1], (abi::IOC_ENABLE, vec![]));
        // The status (no Linux-entry flag) tells why.
        assert_eq!(log[2].0, abi::IOC_STATUS);
    }

    #[test]
    fn enable_refused_by_the_entry_is_told_apart() {
        let img = tmp_file("hv-entry.bin", &[0x90; 64]);
        let (r, _, _) = run(&["enable", "--image", &img], |cmd, arg| match cmd {
            abi::IOC_ENABLE => Err(errno::EOPNOTSUPP),
            abi::IOC_STATUS => {
                arg[4] = (abi::STATUS_REGION_OK
                    | abi::STATUS_IMAGE_LOADED
                    | abi::STATUS_IMAGE_LINUX_ENTRY) as u8;
                Ok(0)
            }
            _ => Ok(0),
        });
        assert_eq!(
            r.unwrap_err().to_string(),
            "enable: the hypervisor's Linux entry does not support this CPU (Operation not \
             supported); every CPU was rolled back to native (see dmesg and the hypervisor's \
             console lines)"
        );
    }

    /// A fake's answer to `AXHV_IOC_SELFTEST`: every probe as expected,
    /// the feature bits set (`1`: seen by the root VM).
    fn selftest_answer(arg: &mut [u8], vendor: u32, seen: bool) {
        for (i, v) in [-14i64, -38, -22, -14].into_iter().enumerate() {
            arg[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let bit = i64::from(seen).to_le_bytes();
        arg[32..40].copy_from_slice(&bit);
        arg[40..48].copy_from_slice(&bit);
        arg[48..52].copy_from_slice(&vendor.to_le_bytes());
        arg[56..64].copy_from_slice(&bit);
    }

    #[test]
    fn selftest_judges_the_vendors_feature() {
        let (r, out, log) = run(&["selftest"], |_, arg| {
            selftest_answer(arg, abi::VENDOR_AMD, false);
            Ok(0)
        });
        r.unwrap();
        assert_eq!(log.borrow()[0].0, abi::IOC_SELFTEST);
        assert!(out.contains("selftest: unknown hypercall 0x7777 -> -38 (ENOSYS expected): ok"));
        assert!(
            out.contains("selftest: EFER.SVME as the root VM reads it -> 0 (hidden expected): ok")
        );
        assert!(out.contains(
            "selftest: CPUID SVM bit as the root VM reads it -> 0 (hidden expected): ok"
        ));
        assert!(!out.contains("VMX"), "{out}");
        let (r, out, _) = run(&["selftest"], |_, arg| {
            selftest_answer(arg, abi::VENDOR_INTEL, false);
            Ok(0)
        });
        r.unwrap();
        assert!(out.contains(
            "selftest: CPUID VMX bit as the root VM reads it -> 0 (hidden expected): ok"
        ));
        assert!(!out.contains("SVM"), "{out}");
        // A VMX bit the root VM can see is reported and fails the selftest.
        let (r, out, _) = run(&["selftest"], |_, arg| {
            selftest_answer(arg, abi::VENDOR_INTEL, true);
            Ok(0)
        });
        assert!(matches!(r, Err(Error::SelfTest(1))), "{r:?}");
        assert!(out.contains(
            "selftest: CPUID VMX bit as the root VM reads it -> 1 (hidden expected): UNEXPECTED"
        ));
    }

    #[test]
    fn bad_config_never_reaches_the_device() {
        let bad = repo("axvmconfig/tests/data/bad-zero-vcpus.toml");
        let img = tmp_file("k", &[0; 16]);
        let (r, _, log) = run(&["vm", "create", &bad, "--image", &img], |_, _| Ok(0));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("invalid VM configuration") && e.contains("vcpus.count"),
            "{e}"
        );
        assert!(log.borrow().is_empty());
    }

    #[test]
    fn vm_create_sends_the_binary_config() {
        let good = repo("configs/test-guest.toml");
        let img = tmp_file("guest", &[0xf4; 4096]);
        let (r, out, log) = run(&["vm", "create", &good, "--image", &img], |_, arg| {
            arg[32] = 1; // the module writes the new VM id
            Ok(0)
        });
        r.unwrap();
        assert!(out.contains("configuration valid"), "{out}");
        assert!(out.contains("created VM 1"), "{out}");
        let log = log.borrow();
        assert_eq!(log[0].0, abi::IOC_VM_CREATE);
        let arg = &log[0].1;
        let cfg_len = u64::from_le_bytes(arg[8..16].try_into().unwrap());
        let want = prepare_vm(Path::new(&good), Path::new(&img)).unwrap().0;
        assert_eq!(cfg_len, want.len() as u64);
        assert_eq!(&arg[24..32], &4096u64.to_le_bytes());
    }

    #[test]
    fn errors_name_what_to_do() {
        let e = open_error(errno::ENOENT).to_string();
        assert_eq!(
            e,
            "cannot open /dev/axhv: is the axhv module loaded? (insmod axhv.ko hv_mem=... hv_size=...)"
        );
        let (r, _, _) = run(&["vm", "list"], |_, _| Err(errno::ENODEV));
        assert_eq!(
            r.unwrap_err().to_string(),
            "vm list: the hypervisor is not enabled (run `hvctl enable` first)"
        );
        let (r, _, _) = run(&["vm", "destroy", "3"], |_, arg| {
            assert_eq!(arg, &[3, 0, 0, 0]);
            Err(errno::ENOSYS)
        });
        assert!(r.unwrap_err().to_string().contains("not implemented"));
        let img = tmp_file("hv-eio.bin", &[0x90; 8]);
        let (r, _, _) = run(&["enable", "--image", &img], |cmd, _| {
            if cmd == abi::IOC_ENABLE {
                Err(5)
            } else {
                Ok(0)
            }
        });
        assert_eq!(
            r.unwrap_err().to_string(),
            "enable: Input/output error (os error 5); every CPU was rolled back to native (see dmesg)"
        );
        let missing = run(&["enable", "--image", "/nonexistent/hv.bin"], |_, _| Ok(0)).0;
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/hv.bin")
        );
    }

    #[test]
    fn status_is_described() {
        let (r, out, _) = run(&["status"], |_, arg| {
            arg[0..4].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            arg[4] = abi::STATUS_REGION_OK as u8;
            arg[8..16].copy_from_slice(&0x2000_0000u64.to_le_bytes());
            arg[16..24].copy_from_slice(&0x1000_0000u64.to_le_bytes());
            arg[32] = 2;
            Ok(0)
        });
        r.unwrap();
        assert!(
            out.contains("reserved region: 0x20000000..0x30000000 (256 MiB), verified: yes"),
            "{out}"
        );
        assert!(
            out.contains("enabled: no") && out.contains("online CPUs: 2"),
            "{out}"
        );
    }
}
