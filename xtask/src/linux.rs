//! Type-1.5 on QEMU: the Debian kernel boots a busybox initramfs holding
//! the `axhv` kernel module (`hv-app/linux/`), `hvctl`, the hypervisor image
//! and a guest; its `/init` loads the module on the region reserved with
//! `memmap=`, asks `hvctl` to enable the hypervisor, proves user space still
//! runs, tries to create the guest VM and powers off.
//!
//! hv-app has no Linux entry yet, so `hvctl enable` fails cleanly
//! (`EOPNOTSUPP`); the scenario checks exactly that, and Type-1 stays the
//! default of `cargo xtask run` until the entry exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::prereq;
use crate::qemu::{self, QemuConfig};
use crate::tasks;

/// Physical base of the hypervisor's region (`memmap=256M$0x20000000`).
pub const HV_MEM: u64 = 0x2000_0000;
/// Size of the hypervisor's region.
pub const HV_SIZE: u64 = 256 << 20;

/// How `cargo xtask run` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// hv-app boots directly (multiboot).
    Type1,
    /// Linux boots first and loads hv-app through the kernel module.
    Type15,
}

/// Takes `--mode type1|type15` out of `args`; `None` if not given (the
/// caller picks the default: Type-1.5).
pub fn split_mode(args: &[String]) -> Result<(Option<Mode>, Vec<String>), String> {
    let mut mode = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--mode" {
            let v = it.next().ok_or("option --mode needs a value")?;
            mode = Some(match v.as_str() {
                "type1" => Mode::Type1,
                "type15" | "type1.5" => Mode::Type15,
                other => {
                    return Err(format!(
                        "--mode: `{other}` is not type1 or type15 (Type-1.5)"
                    ));
                }
            });
        } else {
            rest.push(a.clone());
        }
    }
    Ok((mode, rest))
}

/// The newest kernel version with both an image in `/boot` and headers in
/// `/lib/modules/<ver>/build` (derived from what is installed, not from the
/// running kernel).
pub fn kernel_version() -> Result<String, String> {
    let mut vers: Vec<String> = std::fs::read_dir("/lib/modules")
        .map_err(|e| format!("/lib/modules: {e} (install linux-headers-amd64)"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|v| {
            Path::new("/lib/modules")
                .join(v)
                .join("build/Makefile")
                .is_file()
                && Path::new("/boot").join(format!("vmlinuz-{v}")).is_file()
        })
        .collect();
    vers.sort_by_key(|v| version_key(v));
    vers.pop().ok_or_else(|| {
        "no kernel with both /boot/vmlinuz-<ver> and /lib/modules/<ver>/build; \
         install linux-image-amd64 linux-headers-amd64"
            .to_string()
    })
}

/// Sort key of a kernel version: its numbers in order (`6.1.0-56-amd64`
/// gives `[6, 1, 0, 56]`).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

pub(crate) fn out_dir() -> PathBuf {
    tasks::hv_app_elf()
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("<target>/x86_64-unknown-none/release/hv-app")
        .join("axhv-linux")
}

fn run_step(what: &str, mut cmd: Command) -> Result<(), String> {
    println!("\n==> {what}");
    let t = Instant::now();
    let st = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !st.success() {
        return Err(format!("{what}: failed ({st})"));
    }
    println!("    ok ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// Builds `hv-app/linux/axhv.ko` against the installed headers of `ver`,
/// in a copy of the sources (the source directory stays clean).
pub fn build_module(ver: &str) -> Result<PathBuf, String> {
    let src = tasks::root().join("hv-app/linux");
    let dir = out_dir().join("module");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for f in ["axhv.c", "axhv_ioctl.h", "Kbuild", "Makefile"] {
        std::fs::copy(src.join(f), dir.join(f))
            .map_err(|e| format!("{}: {e}", src.join(f).display()))?;
    }
    let mut c = Command::new("make");
    c.current_dir(&dir)
        .arg(format!("KDIR=/lib/modules/{ver}/build"))
        .arg("modules");
    run_step(&format!("build the axhv kernel module (Linux {ver})"), c)?;
    Ok(dir.join("axhv.ko"))
}

/// Builds `hvctl` as a static binary (glibc, `+crt-static`: the musl target
/// is not installed offline) and returns its path.
pub fn build_hvctl() -> Result<PathBuf, String> {
    let host = "x86_64-unknown-linux-gnu";
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(tasks::root())
        .args(["build", "-p", "hvctl", "--release", "--target", host])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        );
    run_step("build hvctl (static, x86_64-unknown-linux-gnu)", c)?;
    Ok(tasks::hv_app_elf()
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .join(host)
        .join("release/hvctl"))
}

/// A rendezvous probe: a test image with a valid Linux-entry header
/// (`hv-app/linux/axhv_ioctl.h`, `struct axhv_linux_header`) whose entry
/// does nothing but return: 0, or -5 (`EIO`) on CPU `fail_cpu`. It lets the
/// module's all-CPU enable, its roll back and disable run for real before
/// hv-app has its Linux entry; Linux stays native throughout.
pub fn probe_image(fail_cpu: Option<u32>) -> Vec<u8> {
    const ENTRY: usize = 0x100;
    const LEAVE: usize = 0x180;
    const SIZE: usize = 0x1000;
    let mut img = vec![0xcc; SIZE]; // int3 everywhere else
    img[..8].copy_from_slice(b"AXHVLNX1");
    img[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
    img[12..16].copy_from_slice(&40u32.to_le_bytes()); // header_size
    img[16..24].copy_from_slice(&(ENTRY as u64).to_le_bytes());
    img[24..32].copy_from_slice(&(LEAVE as u64).to_le_bytes());
    img[32..40].copy_from_slice(&(SIZE as u64).to_le_bytes());
    img[40..48].fill(0);
    let endbr64 = [0xf3, 0x0f, 0x1e, 0xfa];
    let mut entry = endbr64.to_vec();
    entry.extend([0x81, 0xff]); // cmp edi, imm32 (edi = the CPU number)
    entry.extend(fail_cpu.unwrap_or(u32::MAX).to_le_bytes());
    entry.extend([0x74, 0x03]); // je fail
    entry.extend([0x31, 0xc0, 0xc3]); // xor eax, eax; ret
    entry.extend([0xb8, 0xfb, 0xff, 0xff, 0xff, 0xc3]); // fail: mov eax, -5; ret
    img[ENTRY..ENTRY + entry.len()].copy_from_slice(&entry);
    img[LEAVE..LEAVE + 5].copy_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0xc3]); // endbr64; ret
    img
}

/// The start of every `/init` of ours: busybox's applets, /proc, /sys,
/// /dev.
pub const INIT_PRELUDE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
";

/// The initramfs's `/init`.
pub fn init_script() -> String {
    format!(
        r#"{INIT_PRELUDE}echo "axhv-initramfs: Linux up ($(uname -r), CPUs online $(cat /sys/devices/system/cpu/online))"
echo "axhv-initramfs: a region that is System RAM must be refused:"
insmod /lib/modules/axhv.ko hv_mem=0x1000000 hv_size=0x200000 && rmmod axhv
echo "axhv-initramfs: without the region parameters it must refuse too:"
insmod /lib/modules/axhv.ko && rmmod axhv
if insmod /lib/modules/axhv.ko hv_mem={mem:#x} hv_size={size:#x}; then
    echo "axhv-initramfs: module loaded"
else
    echo "axhv-initramfs: insmod failed"
fi
hvctl status
hvctl enable
echo "axhv-initramfs: hvctl enable exit status $?"
echo "axhv-initramfs: user space still running after enable (pid $$, uptime $(cut -d' ' -f1 /proc/uptime) s)"
hvctl vm create /axhv/test-guest.toml --image /axhv/guest
echo "axhv-initramfs: hvctl vm create exit status $?"
hvctl vm create /axhv/bad-zero-vcpus.toml --image /axhv/guest
echo "axhv-initramfs: hvctl vm create (bad config) exit status $?"
echo "axhv-initramfs: rendezvous probe: an image whose entry fails on CPU 1 (rolled back)"
hvctl enable --image /axhv/probe-fail-cpu1.bin
echo "axhv-initramfs: rendezvous probe: an image whose entry only returns (Linux stays native)"
hvctl enable --image /axhv/probe-ok.bin && hvctl status | grep enabled
hvctl disable
echo "axhv-initramfs: CPUs online after the probes: $(cat /sys/devices/system/cpu/online)"
echo "axhv-initramfs: done"
poweroff -f
"#,
        mem = HV_MEM,
        size = HV_SIZE
    )
}

/// Builds the gzip'ed newc initramfs: busybox, `/init`, the module,
/// `hvctl`, the hypervisor image (`/lib/firmware/axhv.bin`), the guest and
/// its config (`/axhv/`).
pub fn build_initramfs(
    module: &Path,
    hvctl: &Path,
    hv_image: &Path,
    guest: &Path,
) -> Result<PathBuf, String> {
    let root = out_dir().join("initramfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    }
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "lib/modules",
        "lib/firmware",
        "axhv",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    let busybox = Path::new("/bin/busybox");
    let copies: [(&Path, &str); 7] = [
        (busybox, "bin/busybox"),
        (hvctl, "bin/hvctl"),
        (module, "lib/modules/axhv.ko"),
        (hv_image, "lib/firmware/axhv.bin"),
        (guest, "axhv/guest"),
        (
            &tasks::root().join("configs/test-guest.toml"),
            "axhv/test-guest.toml",
        ),
        (
            &tasks::root().join("axvmconfig/tests/data/bad-zero-vcpus.toml"),
            "axhv/bad-zero-vcpus.toml",
        ),
    ];
    for (from, to) in copies {
        std::fs::copy(from, root.join(to))
            .map_err(|e| format!("initramfs: {} -> {to}: {e}", from.display()))?;
    }
    for (name, fail) in [("probe-fail-cpu1.bin", Some(1)), ("probe-ok.bin", None)] {
        std::fs::write(root.join("axhv").join(name), probe_image(fail))
            .map_err(|e| format!("{name}: {e}"))?;
    }
    let init = root.join("init");
    std::fs::write(&init, init_script()).map_err(|e| format!("init: {e}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("init: {e}"))?;
    let out = out_dir().join("initramfs.cpio.gz");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$2""#)
        .arg("sh")
        .arg(&root)
        .arg(&out);
    run_step("build the busybox initramfs (cpio newc, gzip)", c)?;
    Ok(out)
}

/// The kernel command line: serial console, the hypervisor's region kept
/// from Linux with `memmap=SIZE$ADDR`, our `/init`. The console runs at
/// 115200 baud, not Linux's default 9600: Bochs's UART takes the emulated
/// time of each character at that rate (QEMU's none).
pub fn kernel_cmdline() -> String {
    format!(
        "console=ttyS0,115200 memmap={}M${:#x} rdinit=/init panic=-1 loglevel=7 nokaslr",
        HV_SIZE >> 20,
        HV_MEM
    )
}

/// QEMU's arguments for the Type-1.5 boot (passed directly, no shell: the
/// `$` of `memmap=` needs no quoting).
pub fn qemu_args(kernel: &Path, initrd: &Path, cfg: &QemuConfig) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "EPYC,+svm,+npt",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["-smp".into(), cfg.smp.to_string()]);
    a.extend(["-m".into(), cfg.mem.clone()]);
    a.extend(["-kernel".into(), kernel.display().to_string()]);
    a.extend(["-initrd".into(), initrd.display().to_string()]);
    a.extend(["-append".into(), kernel_cmdline()]);
    a
}

/// Builds everything and boots Linux with the initramfs.
fn boot(guest: &str, cfg: &QemuConfig) -> Result<qemu::QemuOutcome, String> {
    prereq::check(&prereq::LINUX)?;
    let ver = kernel_version()?;
    let module = build_module(&ver)?;
    let hvctl = build_hvctl()?;
    let hv = tasks::build_hv_app()?;
    let guests = tasks::build_guests()?;
    let image = guests.join(guest);
    if !image.is_file() {
        return Err(format!("unknown guest `{guest}` (no {})", image.display()));
    }
    let initrd = build_initramfs(&module, &hvctl, &hv, &image)?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{ver}"));
    let args = qemu_args(&kernel, &initrd, cfg);
    if cfg.stream {
        println!("==> qemu-system-x86_64 {}", args.join(" "));
    }
    qemu::run_linux(&args, cfg)
}

/// `cargo xtask run --mode type15 [--guest NAME] [--smp N] [--mem SIZE]
/// [--timeout SECS]`; `--check` runs the test scenario instead (what
/// `cargo xtask test` runs), with its assertions.
pub fn run(args: &[String]) -> Result<u8, String> {
    let mut guest = "hello".to_string();
    let mut cfg = QemuConfig {
        smp: 2,
        mem: "1G".into(),
        timeout: Duration::from_secs(180),
        stream: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |n: &str| {
            it.next()
                .cloned()
                .ok_or(format!("option {n} needs a value"))
        };
        match a.as_str() {
            "--check" => return test_scenario().map(|_| 0),
            "--root-vm" => {
                return crate::rootvm::run(it.any(|a| a == "--check"));
            }
            "--guest" => guest = val("--guest")?,
            "--smp" => {
                let v = val("--smp")?;
                cfg.smp = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(format!("--smp: `{v}` is not a CPU count from 1 to 64"))?;
            }
            "--mem" => cfg.mem = val("--mem")?,
            "--timeout" => {
                let v = val("--timeout")?;
                cfg.timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout: `{v}` is not seconds"))?,
                );
            }
            other => return Err(format!("run --mode type15: unknown option `{other}`")),
        }
    }
    let out = boot(&guest, &cfg)?;
    if out.timed_out {
        return Err(format!(
            "Linux did not power off within {}s (stopped)",
            cfg.timeout.as_secs()
        ));
    }
    println!("==> QEMU ended (status {:?})", out.status);
    Ok(if out.status == Some(0) { 0 } else { 1 })
}

/// The user-space console lines (`/init` and `hvctl`) the Type-1.5
/// scenario expects, in order.
pub const EXPECT: &[&str] = &[
    "axhv-initramfs: Linux up",
    "axhv-initramfs: module loaded",
    "reserved region: 0x20000000..0x30000000 (256 MiB), verified: yes",
    "online CPUs: 2",
    "loaded /lib/firmware/axhv.bin (",
    "hvctl: enable: the hypervisor image has no Linux entry (Type-1.5 entry not implemented in hv-app yet; see dmesg)",
    "axhv-initramfs: hvctl enable exit status 1",
    "axhv-initramfs: user space still running after enable",
    "/axhv/test-guest.toml: configuration valid",
    "hvctl: vm create: the hypervisor is not enabled (run `hvctl enable` first)",
    "hvctl: /axhv/bad-zero-vcpus.toml: invalid VM configuration:",
    "axhv-initramfs: hvctl vm create (bad config) exit status 1",
    "axhv-initramfs: rendezvous probe: an image whose entry fails on CPU 1",
    "hvctl: enable: Input/output error (os error 5); every CPU was rolled back to native (see dmesg)",
    "axhv-initramfs: rendezvous probe: an image whose entry only returns",
    "enabled: yes",
    "hypervisor disabled: Linux runs natively",
    "axhv-initramfs: CPUs online after the probes: 0-1",
    "axhv-initramfs: done",
];

/// The kernel's lines (the module's), in order. Kernel and user-space
/// lines interleave as the console prints them, so each group is checked
/// in its own order.
pub const EXPECT_DMESG: &[&str] = &[
    "axhv: refusing region 0x1000000-0x11fffff: it is (partly) System RAM",
    "axhv: hv_mem= and hv_size= are required",
    "axhv: region 0x20000000-0x2fffffff (256 MiB) verified: reserved, not System RAM; /dev/axhv ready",
    "axhv: loaded the hypervisor image (",
    "axhv: image has no Linux entry (Type-1.5 entry not implemented in hv-app yet)",
    "axhv: entering the hypervisor on 2 CPUs",
    "axhv: enable failed on 1 CPU(s) (first error -5); the 1 CPU(s) that entered were rolled back: every CPU is native",
    "axhv: entering the hypervisor on 2 CPUs",
    "axhv: hypervisor enabled on 2 CPUs",
    "axhv: hypervisor disabled: Linux runs natively",
];

/// `cargo xtask test`'s Type-1.5 scenario on QEMU/SVM with 2 CPUs.
pub fn test_scenario() -> Result<(), String> {
    println!("\n==> end-to-end Type-1.5 (Linux + axhv.ko + hvctl, QEMU/SVM, 2 CPUs)");
    let t = Instant::now();
    let cfg = QemuConfig {
        smp: 2,
        mem: "1G".into(),
        timeout: Duration::from_secs(240),
        stream: false,
    };
    let out = boot("hello", &cfg)?;
    let ctx = |e: String| format!("Type-1.5 scenario: {e}");
    out.expect_in_order(EXPECT).map_err(ctx)?;
    out.expect_in_order(EXPECT_DMESG).map_err(ctx)?;
    if out.status != Some(0) {
        return Err(format!(
            "Type-1.5 scenario: QEMU status {:?} (expected 0 after `poweroff -f`)",
            out.status
        ));
    }
    println!(
        "    ok: {} lines matched, Linux powered off ({:.1}s)",
        EXPECT.len() + EXPECT_DMESG.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn mode_is_taken_out_and_optional() {
        let (m, rest) = split_mode(&s(&["--guest", "hello"])).unwrap();
        assert_eq!((m, rest), (None, s(&["--guest", "hello"])));
        let (m, rest) = split_mode(&s(&["--mode", "type15", "--smp", "2"])).unwrap();
        assert_eq!((m, rest), (Some(Mode::Type15), s(&["--smp", "2"])));
        assert!(
            split_mode(&s(&["--mode", "x"]))
                .unwrap_err()
                .contains("`x`")
        );
        assert!(
            split_mode(&s(&["--mode"]))
                .unwrap_err()
                .contains("needs a value")
        );
    }

    #[test]
    fn cmdline_reserves_the_region() {
        let c = kernel_cmdline();
        assert!(c.contains("memmap=256M$0x20000000"), "{c}");
        assert!(c.contains("console=ttyS0"), "{c}");
        let init = init_script();
        assert!(
            init.contains("hv_mem=0x20000000 hv_size=0x10000000"),
            "{init}"
        );
        assert!(init.ends_with("poweroff -f\n"));
    }

    #[test]
    fn probe_image_layout() {
        let img = probe_image(Some(1));
        assert_eq!(&img[..8], b"AXHVLNX1");
        assert_eq!(u32::from_le_bytes(img[8..12].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(img[12..16].try_into().unwrap()), 40);
        let entry = u64::from_le_bytes(img[16..24].try_into().unwrap()) as usize;
        let leave = u64::from_le_bytes(img[24..32].try_into().unwrap()) as usize;
        // ENDBR64 (F3 0F 1E FA) at both entries, for indirect-branch tracking.
        assert_eq!(&img[entry..entry + 4], &[0xf3, 0x0f, 0x1e, 0xfa]);
        assert_eq!(&img[leave..leave + 5], &[0xf3, 0x0f, 0x1e, 0xfa, 0xc3]);
        // cmp edi, 1; je +3 (over xor eax, eax; ret); mov eax, -5.
        assert_eq!(
            &img[entry + 4..entry + 12],
            &[0x81, 0xff, 1, 0, 0, 0, 0x74, 0x03]
        );
        assert_eq!(
            &img[entry + 15..entry + 21],
            &[0xb8, 0xfb, 0xff, 0xff, 0xff, 0xc3]
        );
        assert_eq!(&probe_image(None)[entry + 6..entry + 10], &[0xff; 4]);
    }

    #[test]
    fn newest_kernel_version_wins() {
        let mut v = ["6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|a| version_key(a));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64"]);
    }
}
