//! The xtask commands.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::prereq;
use crate::qemu::{self, QemuConfig};
use crate::vms;

/// Library crates: each is published alone and must test alone.
const LIB_CRATES: [&str; 7] = [
    "axaddrspace",
    "axvcpu",
    "axdevice",
    "x86_vcpu",
    "x86_vlapic",
    "axvmconfig",
    "axvm",
];

/// Crates checked with `cargo package`.
const PUBLISHED: [&str; 4] = ["axaddrspace", "axvcpu", "axdevice", "axvmconfig"];

/// The project's test guests (built from `guests/`).
const GUESTS: [&str; 8] = [
    "hello",
    "hypercall",
    "mmio",
    "isolation",
    "triple-fault",
    "bench",
    "timer",
    "usermode",
];

/// Guests `run --guest` can run: the test guests.
const KNOWN_GUESTS: [&str; 8] = GUESTS;

const BARE_TARGET: &str = "x86_64-unknown-none";

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, failing with its description if it does not succeed.
fn step(what: &str, mut cmd: Command) -> Result<(), String> {
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

/// The path of the hv-app ELF built by [`build_hv_app`].
pub fn hv_app_elf() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target_dir.join(BARE_TARGET).join("release").join("hv-app")
}

/// Builds the hypervisor ELF and checks it is a multiboot kernel.
pub fn build_hv_app() -> Result<PathBuf, String> {
    let mut c = cargo();
    c.args([
        "build",
        "-p",
        "hv-app",
        "--release",
        "--target",
        BARE_TARGET,
    ]);
    step("build hv-app (x86_64-unknown-none, release)", c)?;
    let elf = hv_app_elf();
    check_multiboot_elf(&elf)?;
    Ok(elf)
}

/// Checks `path` is an x86_64 ELF64 with a valid multiboot v1 header in its
/// first 8 KiB that carries the address fields (QEMU needs them for ELF64).
pub fn check_multiboot_elf(path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[18] != 0x3e {
        return Err(format!("{}: not an x86_64 ELF64 file", path.display()));
    }
    let scan = &data[..data.len().min(8192)];
    for off in (0..scan.len().saturating_sub(12)).step_by(4) {
        let word = |i: usize| u32::from_le_bytes(scan[off + i..off + i + 4].try_into().unwrap());
        if word(0) == 0x1BAD_B002 {
            let (flags, sum) = (word(4), word(8));
            if word(0).wrapping_add(flags).wrapping_add(sum) != 0 {
                return Err(format!(
                    "{}: multiboot header at {off:#x} has a bad checksum",
                    path.display()
                ));
            }
            if flags & (1 << 16) == 0 {
                return Err(format!(
                    "{}: multiboot header lacks the address fields (flag bit 16)",
                    path.display()
                ));
            }
            println!(
                "    {}: ELF64 with multiboot header at {off:#x}",
                path.display()
            );
            return Ok(());
        }
    }
    Err(format!(
        "{}: no multiboot v1 header in the first 8 KiB",
        path.display()
    ))
}

/// `cargo xtask build`.
pub fn build(args: &[String]) -> Result<u8, String> {
    if let Some(a) = args.first() {
        return Err(format!("build takes no arguments (got `{a}`)"));
    }
    build_hv_app()?;
    let mut c = cargo();
    c.args(["build", "-p", "axvmconfig", "--release"]);
    step("build the axvmconfig tool", c)?;
    Ok(0)
}

/// Which virtualization the emulated machine offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    /// AMD SVM with nested paging: QEMU TCG.
    Amd,
    /// Intel VMX with EPT: Bochs booting a GRUB ISO.
    Intel,
}

impl Vendor {
    fn emulator(self) -> &'static str {
        match self {
            Vendor::Amd => "QEMU/SVM",
            Vendor::Intel => "Bochs/VMX",
        }
    }
}

/// Options of `cargo xtask run`.
#[derive(Debug)]
struct RunOpts {
    vendor: Vendor,
    guests: Vec<String>,
    config: Option<PathBuf>,
    image: Option<PathBuf>,
    log: Option<String>,
    qemu: QemuConfig,
    /// Console input and end marker (`--input`, `--until`, a terminal).
    console: qemu::ConsoleIo,
}

fn parse_run(args: &[String]) -> Result<RunOpts, String> {
    let mut o = RunOpts {
        vendor: Vendor::Amd,
        guests: Vec::new(),
        config: None,
        image: None,
        log: None,
        qemu: QemuConfig {
            smp: 1,
            mem: "512M".into(),
            timeout: Duration::from_secs(60),
            stream: true,
        },
        console: qemu::ConsoleIo {
            stdin: std::io::IsTerminal::is_terminal(&std::io::stdin()),
            ..Default::default()
        },
    };
    let mut external = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {name} needs a value"))
        };
        match a.as_str() {
            "--guest" => {
                let g = val("--guest")?;
                match vms::external_guest(&g) {
                    Some(ext) => external = Some(ext),
                    None => o.guests.push(g),
                }
            }
            "--input" => o
                .console
                .input
                .push(qemu::unescape_input(&val("--input")?)?),
            "--until" => o.console.until = Some(val("--until")?),
            "--vendor" => {
                let v = val("--vendor")?;
                o.vendor = match v.as_str() {
                    "amd" => Vendor::Amd,
                    "intel" => Vendor::Intel,
                    _ => return Err(format!("--vendor: `{v}` is not `amd` or `intel`")),
                };
            }
            "--config" => o.config = Some(PathBuf::from(val("--config")?)),
            "--image" => o.image = Some(PathBuf::from(val("--image")?)),
            "--log" => {
                let v = val("--log")?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(format!(
                        "--log: `{v}` is not one of error, warn, info, debug, trace"
                    ));
                }
                o.log = Some(v);
            }
            "--smp" => {
                let v = val("--smp")?;
                o.qemu.smp = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--smp: `{v}` is not a CPU count from 1 to 64"))?;
            }
            "--mem" => {
                let v = val("--mem")?;
                let ok = v.len() > 1
                    && v[..v.len() - 1].chars().all(|c| c.is_ascii_digit())
                    && matches!(v.chars().last(), Some('M' | 'G'));
                if !ok {
                    return Err(format!("--mem: `{v}` is not a size like 512M or 2G"));
                }
                o.qemu.mem = v;
            }
            "--timeout" => {
                let v = val("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout: `{v}` is not a number of seconds"))?;
                o.qemu.timeout = Duration::from_secs(secs);
            }
            other => return Err(format!("run: unknown option `{other}`")),
        }
    }
    for g in &o.guests {
        if !KNOWN_GUESTS.contains(&g.as_str()) {
            return Err(format!(
                "unknown guest `{g}`; known guests: {}, and with --image: {}",
                KNOWN_GUESTS.join(", "),
                vms::EXTERNAL_GUESTS.map(|g| g.name).join(", ")
            ));
        }
    }
    if let Some(ext) = external {
        let image = o.image.as_ref().ok_or_else(|| ext.image_needed())?;
        ext.check_image(image)?;
        o.config.get_or_insert_with(|| root().join(ext.config));
    }
    match (&o.config, &o.image) {
        (Some(_), None) => return Err("--config needs --image KERNEL (the guest to run)".into()),
        (None, Some(_)) => {
            return Err("--image needs --config VM.toml (memory, devices, boot protocol)".into());
        }
        _ => {}
    }
    Ok(o)
}

/// The config every project test guest runs under.
fn test_guest_config() -> PathBuf {
    root().join("configs/test-guest.toml")
}

/// The VMs `opts` asks for: one per `--guest` (built from guests/, under
/// configs/test-guest.toml), then `--config` with `--image`.
fn vm_specs(opts: &RunOpts) -> Result<Vec<vms::VmSpec>, String> {
    let mut specs = Vec::new();
    if !opts.guests.is_empty() {
        let dir = build_guests()?;
        for g in &opts.guests {
            specs.push(vms::VmSpec {
                config: test_guest_config(),
                image: dir.join(g),
                name: Some(g.clone()),
            });
        }
    }
    if let (Some(config), Some(image)) = (&opts.config, &opts.image) {
        specs.push(vms::VmSpec {
            config: config.clone(),
            image: image.clone(),
            name: None,
        });
    }
    Ok(specs)
}

/// Builds hv-app (and the guests it needs), boots QEMU with the VMs of
/// `opts` as multiboot modules and returns the outcome.
fn boot(opts: &RunOpts) -> Result<qemu::QemuOutcome, String> {
    match opts.vendor {
        Vendor::Amd => prereq::check(&[prereq::QEMU])?,
        Vendor::Intel => crate::bochs::check_prereqs()?,
    }
    let elf = build_hv_app()?;
    let specs = vm_specs(opts)?;
    let initrd = if specs.is_empty() {
        None
    } else {
        let dir = hv_app_elf()
            .parent()
            .expect("ELF has a directory")
            .join("xtask-vms");
        Some(vms::prepare_modules(&specs, &dir)?)
    };
    let cmdline = opts.log.as_ref().map(|level| format!("log={level}"));
    if opts.vendor == Vendor::Intel {
        if opts.qemu.smp != 1 || opts.qemu.mem != "512M" {
            eprintln!(
                "xtask: note: --smp and --mem apply to QEMU; the Bochs machine has 1 CPU and 256 MiB"
            );
        }
        let modules = initrd
            .as_deref()
            .map(crate::bochs::modules_from_initrd)
            .unwrap_or_default();
        if opts.qemu.stream {
            println!("==> Bochs (Intel VMX, corei7_skylake_x) booting a GRUB ISO");
        }
        return crate::bochs::run_bochs_with(
            &elf,
            &modules,
            cmdline.as_deref(),
            opts.qemu.timeout,
            opts.qemu.stream,
        );
    }
    let mut qargs = qemu::type1_args(&elf, &opts.qemu);
    if let Some(initrd) = initrd {
        qargs.extend(["-initrd".into(), initrd]);
    }
    if let Some(c) = cmdline {
        qargs.extend(["-append".into(), c]);
    }
    if opts.qemu.stream {
        println!("==> qemu-system-x86_64 {}", qargs.join(" "));
    }
    qemu::run_with(&qargs, &opts.qemu, &opts.console)
}

/// `cargo xtask run`.
pub fn run(args: &[String]) -> Result<u8, String> {
    use crate::linux::Mode;
    let (mode, args) = crate::linux::split_mode(args)?;
    let legacy = args.iter().any(|a| a == "--check" || a == "--root-vm");
    let intel = args
        .windows(2)
        .any(|w| w[0] == "--vendor" && w[1] == "intel");
    let mode = match mode {
        Some(m) => m,
        None if intel && !legacy => {
            eprintln!(
                "xtask: note: --vendor intel boots hv-app directly (Type-1, as --mode type1): \
                 quick on Bochs; add --mode type15 for Linux and the VMX root VM (minutes)"
            );
            Mode::Type1
        }
        None => Mode::Type15,
    };
    if mode == Mode::Type15 {
        if legacy && intel {
            return bochs_root_vm(&args);
        }
        if legacy {
            return crate::linux::run(&args);
        }
        let opts = parse_run(&args)?;
        let platform = if opts.vendor == Vendor::Intel {
            crate::rootvm::Platform::BochsVmx
        } else {
            crate::rootvm::Platform::QemuSvm
        };
        if opts.log.is_some() {
            eprintln!("xtask: note: --log applies to Type-1 boots only");
        }
        let specs = vm_specs(&opts)?;
        if specs.is_empty() {
            return Err(
                "run: no VM given: add --guest NAME (e.g. --guest hello) or --config VM.toml \
                 --image KERNEL"
                    .into(),
            );
        }
        if opts.console.stdin {
            eprintln!(
                "xtask: note: in Type-1.5 mode the guest's console is shown through hvctl; \
                 typing is not forwarded (use --input TEXT, or --mode type1)"
            );
        }
        return crate::rootvm::run_guests(&specs, &opts.qemu, &opts.console, platform);
    }
    let opts = parse_run(&args)?;
    let out = boot(&opts)?;
    if let Some(m) = &opts.console.until
        && !out.timed_out
        && out.lines.iter().any(|l| l.contains(m.as_str()))
    {
        println!("==> stopped at `{m}`");
        return Ok(0);
    }
    if out.timed_out {
        return Err(format!(
            "QEMU did not end within {}s (stopped)",
            opts.qemu.timeout.as_secs()
        ));
    }
    match out.debug_exit_value() {
        Some(v) => {
            println!("==> hypervisor exited with status {v}");
            Ok(u8::try_from(v).unwrap_or(255))
        }
        None => Err(format!(
            "QEMU ended without the hypervisor's exit port write (status {:?})",
            out.status
        )),
    }
}

/// `cargo xtask run --mode type15 --vendor intel --root-vm [--check]
/// [--timeout SECS]`: the root-VM scenario on Bochs/VMX
/// ([`crate::rootvm::run_bochs`]).
fn bochs_root_vm(args: &[String]) -> Result<u8, String> {
    let mut check = false;
    let mut timeout = crate::rootvm::BOCHS_TIMEOUT;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root-vm" => {}
            "--check" => check = true,
            "--vendor" => {
                it.next();
            }
            "--timeout" => {
                let v = it.next().ok_or("option --timeout needs a value")?;
                timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout: `{v}` is not a number of seconds"))?,
                );
            }
            other => {
                return Err(format!(
                    "run --mode type15 --vendor intel --root-vm: unknown option `{other}` \
                     (takes --check, --timeout SECS)"
                ));
            }
        }
    }
    crate::rootvm::run_bochs(check, timeout)
}

/// `cargo xtask test`.
pub fn test(args: &[String]) -> Result<u8, String> {
    let mut quick = false;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            other => return Err(format!("test: unknown option `{other}`")),
        }
    }
    let t0 = Instant::now();

    let mut c = cargo();
    c.args(["fmt", "--all", "--", "--check"]);
    step("cargo fmt --check", c)?;

    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step(
        "cargo clippy --workspace --all-targets (warnings are errors)",
        c,
    )?;

    let mut c = cargo();
    c.args(["test", "--workspace"]);
    step("host tests of the whole workspace", c)?;

    for krate in LIB_CRATES {
        let mut c = cargo();
        c.current_dir(root().join(krate)).arg("test");
        step(&format!("`cargo test` inside {krate}/ on its own"), c)?;
    }

    for krate in LIB_CRATES {
        let mut c = cargo();
        c.args(["build", "-p", krate, "--target", BARE_TARGET]);
        if krate == "axvmconfig" {
            c.arg("--no-default-features");
        }
        step(&format!("{krate} builds for {BARE_TARGET} (no_std)"), c)?;
    }

    let mut c = cargo();
    c.args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings");
    step("cargo doc (warnings are errors)", c)?;

    let elf = build_hv_app()?;
    check_guests()?;

    check_configs()?;

    if !quick {
        let mut c = cargo();
        c.args(["package", "--no-verify", "--allow-dirty"]);
        for p in PUBLISHED {
            c.args(["-p", p]);
        }
        step(&format!("cargo package {}", PUBLISHED.join(", ")), c)?;

        boot_smoke(&elf)?;
        guest_scenarios()?;
        crate::linux::test_scenario()?;
        crate::rootvm::run(true)?;
        crate::rootvm::run_bochs(true, crate::rootvm::BOCHS_TIMEOUT)?;
        crate::bench::smoke()?;
    }

    println!("\nall checks passed in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(0)
}

/// The manifest of the test guests (a workspace of their own).
fn guests_manifest() -> PathBuf {
    root().join("guests").join("Cargo.toml")
}

/// Builds the test guests for bare metal and returns their directory.
pub fn build_guests() -> Result<PathBuf, String> {
    let mut c = cargo();
    c.arg("build")
        .arg("--manifest-path")
        .arg(guests_manifest())
        .args(["--release", "--target", BARE_TARGET])
        // Always guests/target, where the images are looked for, whatever
        // CARGO_TARGET_DIR the caller has.
        .env("CARGO_TARGET_DIR", root().join("guests/target"));
    step("build the test guests (x86_64-unknown-none, release)", c)?;
    Ok(root()
        .join("guests/target")
        .join(BARE_TARGET)
        .join("release"))
}

/// Lints, host-tests and builds the test guests; each must be a multiboot ELF.
fn check_guests() -> Result<(), String> {
    let mut c = cargo();
    c.args(["fmt", "--manifest-path"])
        .arg(guests_manifest())
        .args(["--", "--check"]);
    step("cargo fmt --check (guests)", c)?;
    let mut c = cargo();
    c.args(["clippy", "--manifest-path"])
        .arg(guests_manifest())
        .args(["--release", "--target", BARE_TARGET, "--", "-D", "warnings"]);
    step("cargo clippy (guests, warnings are errors)", c)?;
    let mut c = cargo();
    c.args(["test", "--manifest-path"])
        .arg(guests_manifest())
        .arg("--lib");
    step("host tests of the guest runtime", c)?;
    let dir = build_guests()?;
    for g in GUESTS {
        check_multiboot_elf(&dir.join(g))?;
    }
    Ok(())
}

/// `axvmconfig check` accepts every shipped config and rejects the bad ones
/// with a message naming the field.
fn check_configs() -> Result<(), String> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("configs"))
        .map_err(|e| format!("configs/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    configs.sort();
    if configs.is_empty() {
        return Err("configs/ holds no *.toml file".into());
    }
    let mut c = cargo();
    c.args(["run", "--quiet", "-p", "axvmconfig", "--", "check"])
        .args(&configs);
    step("axvmconfig check configs/*.toml", c)?;

    let bad = root().join("axvmconfig/tests/data/bad-zero-vcpus.toml");
    println!("\n==> axvmconfig check rejects {}", bad.display());
    let out = cargo()
        .args(["run", "--quiet", "-p", "axvmconfig", "--", "check"])
        .arg(&bad)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !text.contains("vcpus.count") {
        return Err(format!(
            "axvmconfig check should reject {} naming `vcpus.count`; it printed:\n{text}",
            bad.display()
        ));
    }
    println!("    ok: {}", text.trim());
    Ok(())
}

/// One end-to-end run: the guests to start (one VM each, in order), the
/// console lines expected in order, and the hypervisor's exit value.
struct Scenario {
    name: &'static str,
    smp: u32,
    guests: &'static [&'static str],
    expect: &'static [&'static str],
    exit: i32,
}

/// The end-to-end scenarios on QEMU/SVM (issue #3).
const SCENARIOS: &[Scenario] = &[
    Scenario {
        smp: 1,
        name: "hello",
        guests: &["hello"],
        expect: &[
            "virtualization: ",
            "[vm1] hello: Hello from axhv guest!",
            "[vm1] hello: ok",
            "VM 1 (hello) exited with status 0",
            "VM 1 exits:",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "hypercall",
        guests: &["hypercall"],
        expect: &[
            "[vm1] hypercall: version 0x00010000",
            "[vm1] hypercall: unknown -> -38",
            "[vm1] hypercall: ok",
            "VM 1 (hypercall) exited with status 0",
            "Hypercall 2",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "mmio",
        guests: &["mmio"],
        expect: &[
            "[vm1] mmio:",
            "accesses ok",
            "VM 1 (mmio) exited with status 0",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "isolation",
        guests: &["isolation"],
        expect: &[
            "[vm1] isolation: wrote over GPA 0x100000 ok",
            "[vm1] isolation: reading GPA 0x40000000",
            "VM 1 stopped: access to GPA 0x40000000 outside its memory (RIP 0x",
            "VM 1 exits:",
        ],
        exit: 5,
    },
    Scenario {
        smp: 1,
        name: "triple-fault",
        guests: &["triple-fault"],
        expect: &[
            "[vm1] triple-fault: loading an empty IDT",
            "VM 1 stopped: triple fault at RIP 0x",
            "VM 1 exits:",
        ],
        exit: 5,
    },
    Scenario {
        smp: 1,
        name: "isolation then hello (the second VM finishes)",
        guests: &["isolation", "hello"],
        expect: &[
            "VM 1 stopped: access to GPA 0x40000000 outside its memory",
            "[vm2] hello: Hello from axhv guest!",
            "VM 2 (hello) exited with status 0",
            "axhv: all VMs ended (1 exited, 1 stopped)",
        ],
        exit: 5,
    },
    Scenario {
        smp: 2,
        name: "two CPUs: the AP comes up, the guest runs on the BSP",
        guests: &["hello"],
        expect: &[
            "CPU 1 online (APIC ID 1)",
            "SMP: 2 of 2 CPUs online",
            "[vm1] hello: ok",
            "VM 1 (hello) exited with status 0",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "timer",
        guests: &["timer"],
        expect: &[
            "[vm1] timer: cpuid tsc ",
            "[vm1] timer: one-shot ok",
            "[vm1] timer: periodic 5 ticks ok",
            "[vm1] timer: hpet counter advances ok",
            "[vm1] timer: x2apic mode on, IA32_APIC_BASE 0xfee00900 -> 0xfee00d00",
            "[vm1] timer: x2apic id 0x0 version 0x60014 ldr 0x1 ok",
            "[vm1] timer: x2apic one-shot ok",
            "[vm1] timer: x2apic periodic 5 ticks ok",
            "[vm1] timer: x2apic self-ipi 0xe0 ok",
            "[vm1] timer: x2apic xapic page disabled ok",
            "VM 1 (timer) exited with status 0",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "usermode",
        guests: &["usermode"],
        expect: &[
            "[vm1] usermode: cpuid leaf 0x16 base ",
            "[vm1] usermode: syscall MSRs start at 0",
            "[vm1] usermode: MSRs persist across exits ok",
            "[vm1] usermode: user says: hello from ring 3 via syscall",
            "[vm1] usermode: ring 3 ok: CPL 3, write -> 29, getpid -> 42 (syscall), 42 (int 0x80)",
            "[vm1] usermode: user #PF ok: CR2 0x8000003008, error 0x4 (user read, not present)",
            "[vm1] usermode: 1 GiB pages offered",
            "[vm1] usermode: read and wrote through a 1 GiB page ok",
            "[vm1] usermode: ok",
            "VM 1 (usermode) exited with status 0",
        ],
        exit: 0,
    },
    Scenario {
        smp: 1,
        name: "usermode twice (the second VM starts with its own syscall MSRs)",
        guests: &["usermode", "usermode"],
        expect: &[
            "[vm1] usermode: ok",
            "VM 1 (usermode) exited with status 0",
            "[vm2] usermode: syscall MSRs start at 0",
            "[vm2] usermode: MSRs persist across exits ok",
            "[vm2] usermode: ok",
            "VM 2 (usermode) exited with status 0",
        ],
        exit: 0,
    },
];

/// Runs every guest scenario under hv-app on both vendors (QEMU/SVM, then
/// Bochs/VMX, whose machine has one CPU) and checks the console.
fn guest_scenarios() -> Result<(), String> {
    for vendor in [Vendor::Amd, Vendor::Intel] {
        for sc in SCENARIOS {
            if vendor == Vendor::Intel && sc.smp > 1 {
                continue;
            }
            guest_scenario(vendor, sc)?;
        }
    }
    Ok(())
}

fn guest_scenario(vendor: Vendor, sc: &Scenario) -> Result<(), String> {
    {
        println!("\n==> end-to-end ({}): {}", vendor.emulator(), sc.name);
        let t = Instant::now();
        let mut args = Vec::new();
        for g in sc.guests {
            args.extend(["--guest".to_string(), g.to_string()]);
        }
        let mut opts = parse_run(&args)?;
        opts.qemu.stream = false;
        opts.qemu.smp = sc.smp;
        opts.vendor = vendor;
        if vendor == Vendor::Intel {
            opts.qemu.timeout = Duration::from_secs(180);
        }
        opts.qemu.mem = "256M".into();
        let out = boot(&opts)?;
        out.expect_in_order(sc.expect)
            .map_err(|e| format!("scenario `{}` on {}: {e}", sc.name, vendor.emulator()))?;
        if vendor == Vendor::Intel {
            out.expect_in_order(&["virtualization: Intel VMX"])
                .map_err(|e| format!("scenario `{}` on Bochs/VMX: {e}", sc.name))?;
        } else {
            out.expect_in_order(&["virtualization: AMD SVM"])
                .map_err(|e| format!("scenario `{}` on QEMU/SVM: {e}", sc.name))?;
        }
        if out.debug_exit_value() != Some(sc.exit) {
            return Err(format!(
                "scenario `{}` on {}: hypervisor exit value {:?}, expected {} (status {:?})",
                sc.name,
                vendor.emulator(),
                out.debug_exit_value(),
                sc.exit,
                out.status
            ));
        }
        println!(
            "    ok: {} lines matched, exit value {} ({:.1}s)",
            sc.expect.len(),
            sc.exit,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Boots hv-app alone in QEMU/TCG with SVM and checks its console.
fn boot_smoke(elf: &Path) -> Result<(), String> {
    prereq::check(&[prereq::QEMU])?;
    println!("\n==> boot hv-app in QEMU (TCG, EPYC+svm+npt)");
    let cfg = QemuConfig {
        smp: 1,
        mem: "256M".into(),
        timeout: Duration::from_secs(60),
        stream: false,
    };
    let out = qemu::run(&qemu::type1_args(elf, &cfg), &cfg)?;
    out.expect_in_order(&["axhv hv-app", "self-check passed", "powering off"])?;
    match out.debug_exit_value() {
        Some(0) => println!("    ok: banner printed, exit status 0"),
        v => {
            return Err(format!(
                "hv-app should exit with status 0 through port 0xf4, got {v:?} (QEMU status {:?})",
                out.status
            ));
        }
    }

    println!("\n==> hv-app reports an exception instead of rebooting (crash=ud)");
    let mut args = qemu::type1_args(elf, &cfg);
    args.extend(["-append".into(), "crash=ud".into()]);
    let out = qemu::run(&args, &cfg)?;
    out.expect_in_order(&["axhv hv-app", "#UD Invalid Opcode (vector 6)", "RIP 0x"])?;
    match out.debug_exit_value() {
        Some(4) => {
            println!("    ok: #UD reported with RIP, exit status 4");
            Ok(())
        }
        v => Err(format!(
            "hv-app should exit with status 4 (exception) after crash=ud, got {v:?} (QEMU status {:?})",
            out.status
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn run_options() {
        let o = parse_run(&s(&["--smp", "2", "--mem", "1G"])).unwrap();
        assert_eq!(o.qemu.smp, 2);
        assert_eq!(o.qemu.mem, "1G");
        assert!(
            parse_run(&s(&["--smp", "0"]))
                .unwrap_err()
                .contains("--smp")
        );
        assert!(
            parse_run(&s(&["--mem", "lots"]))
                .unwrap_err()
                .contains("--mem")
        );
        assert!(
            parse_run(&s(&["--smp"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse_run(&s(&["--bogus"])).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn intel_root_vm_goes_to_bochs() {
        // Options are checked before anything is built.
        let e = run(&s(&[
            "--mode",
            "type15",
            "--vendor",
            "intel",
            "--root-vm",
            "--smp",
            "2",
        ]))
        .unwrap_err();
        assert!(
            e.starts_with("run --mode type15 --vendor intel --root-vm: unknown option `--smp`"),
            "{e}"
        );
        // --root-vm implies Type-1.5 with --vendor intel too.
        let e = run(&s(&["--vendor", "intel", "--root-vm", "--timeout", "x"])).unwrap_err();
        assert!(e.contains("--timeout: `x`"), "{e}");
        // The guest path on Intel in Type-1.5 checks its options first too.
        let e = run(&s(&[
            "--mode", "type15", "--vendor", "intel", "--guest", "nosuch",
        ]))
        .unwrap_err();
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn unknown_guest_is_named() {
        let e = run(&s(&["--guest", "nosuch"])).unwrap_err();
        assert!(e.contains("unknown guest `nosuch`"), "{e}");
    }

    #[test]
    fn multiboot_check_rejects_non_elf() {
        let p = std::env::temp_dir().join("xtask-not-elf");
        std::fs::write(&p, b"hello").unwrap();
        assert!(
            check_multiboot_elf(&p)
                .unwrap_err()
                .contains("not an x86_64 ELF64")
        );
    }
}
