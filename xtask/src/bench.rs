//! `cargo xtask bench`: the exit-cost benchmark (issue #5).
//!
//! Runs the `bench` guest (guests/src/bin/bench.rs) twice on QEMU TCG with
//! `-icount shift=0,sleep=off -rtc clock=vm -seed 1`, where the guest's TSC
//! counts the instructions the emulated machine executes:
//!
//! 1. as a Type-1 guest under hv-app on emulated AMD SVM (one VM with
//!    configs/test-guest.toml), and
//! 2. alone on the same emulated machine (the floor).
//!
//! The guest prints one `bench:` line per kind of round trip; this module
//! parses them and renders one table (instructions per iteration under the
//! hypervisor, on the floor, and the difference: the cost of the exit),
//! plus the hv-app image size and what hv-app reports of its memory use.
//! The table goes to stdout and, as markdown and JSON, to
//! `target/bench/bench.{md,json}`. Nothing here judges a speed; a run fails
//! only if a QEMU run fails or a result line is missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::qemu::{self, QemuConfig, QemuOutcome};
use crate::tasks::{build_guests, build_hv_app, root};
use crate::{prereq, vms};

/// The kinds of round trip the guest times, in its order, with the row
/// label of the table.
pub const KINDS: [(&str, &str); 7] = [
    ("empty", "empty loop (`dec; jnz`)"),
    ("cpuid", "CPUID (leaf 0)"),
    ("pio_out", "OUT to port 0x3FF (16550 scratch)"),
    ("hypercall", "hypercall (`vmmcall`, HC_VERSION)"),
    ("rdmsr", "RDMSR IA32_EFER (emulated)"),
    ("mmio_read", "32-bit MMIO read (test device)"),
    ("self_ipi", "self-IPI delivered and EOI'd"),
];

/// Kinds the guest may skip under the hypervisor: it has no virtual LAPIC
/// wired to its VMs yet.
pub const HV_MAY_SKIP: [&str; 1] = ["self_ipi"];

/// Kinds the guest may skip on the floor: no hypervisor answers a
/// hypercall there (the instruction raises #UD).
pub const FLOOR_MAY_SKIP: [&str; 2] = ["hypercall", "self_ipi"];

/// The QEMU options that make the TSC count instructions.
pub const ICOUNT_ARGS: [&str; 6] = [
    "-icount",
    "shift=0,sleep=off",
    "-rtc",
    "clock=vm",
    "-seed",
    "1",
];

/// Memory of the emulated machine in both runs.
const MACHINE_MEM: &str = "256M";

/// The VM name the bench guest runs under.
const VM_NAME: &str = "bench";

/// The result of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// Timed: `cycles` TSC ticks (instructions under icount) for `iters`
    /// iterations.
    Measured {
        /// Timed iterations.
        iters: u64,
        /// TSC ticks for all of them.
        cycles: u64,
    },
    /// Not run where the guest was, with the guest's reason.
    Unsupported(String),
}

impl Sample {
    /// Ticks per iteration in tenths, rounded half up (the guest's `per`).
    pub fn per_tenths(&self) -> Option<u64> {
        match *self {
            Sample::Measured { iters, cycles } if iters > 0 => {
                Some(((u128::from(cycles) * 10 + u128::from(iters) / 2) / u128::from(iters)) as u64)
            }
            _ => None,
        }
    }
}

/// Everything one run of the bench guest printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BenchRun {
    /// The hypervisor the guest saw (`none`, or a CPUID signature).
    pub hypervisor: Option<String>,
    /// The result of each kind, by kind.
    pub samples: BTreeMap<String, Sample>,
    /// Whether `bench: done` came.
    pub done: bool,
}

/// Parses the guest's `bench:` lines out of a console log (hv-app prefixes
/// them with `[vmN] `). Lines without `bench: ` are ignored; a malformed
/// `bench:` line is an error naming it.
pub fn parse_lines<S: AsRef<str>>(lines: &[S]) -> Result<BenchRun, String> {
    let mut run = BenchRun::default();
    for line in lines {
        let line = line.as_ref();
        let Some(at) = line.find("bench: ") else {
            continue;
        };
        let rest = line[at + "bench: ".len()..].trim();
        let bad = |why: &str| format!("malformed result line `{line}`: {why}");
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "done" => run.done = true,
            "start" => {
                run.hypervisor = tail
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("hypervisor="))
                    .map(str::to_string);
            }
            kind => {
                let sample = if let Some(why) = tail.strip_prefix("unsupported") {
                    let why = why.trim();
                    let why = why
                        .strip_prefix('(')
                        .and_then(|w| w.strip_suffix(')'))
                        .unwrap_or(why);
                    Sample::Unsupported(why.to_string())
                } else {
                    let mut kv = BTreeMap::new();
                    for field in tail.split_whitespace() {
                        let (k, v) = field
                            .split_once('=')
                            .ok_or_else(|| bad(&format!("`{field}` is not key=value")))?;
                        kv.insert(k, v);
                    }
                    let num = |k: &str| -> Result<u64, String> {
                        kv.get(k)
                            .ok_or_else(|| bad(&format!("no `{k}=`")))?
                            .parse()
                            .map_err(|_| bad(&format!("`{k}` is not a number")))
                    };
                    let s = Sample::Measured {
                        iters: num("iters")?,
                        cycles: num("cycles")?,
                    };
                    let per = kv.get("per").ok_or_else(|| bad("no `per=`"))?;
                    let ours = fmt_tenths(s.per_tenths().ok_or_else(|| bad("iters=0"))?);
                    if *per != ours {
                        return Err(bad(&format!(
                            "per={per} does not match cycles/iters = {ours}"
                        )));
                    }
                    s
                };
                run.samples.insert(kind.to_string(), sample);
            }
        }
    }
    Ok(run)
}

impl BenchRun {
    /// Checks that every kind has a line, that only the kinds in `may_skip`
    /// are unsupported, and that the run ended with `bench: done`.
    pub fn check_complete(&self, what: &str, may_skip: &[&str]) -> Result<(), String> {
        for (kind, _) in KINDS {
            match self.samples.get(kind) {
                None => return Err(format!("{what}: no `bench: {kind} ...` line")),
                Some(Sample::Unsupported(why)) if !may_skip.contains(&kind) => {
                    return Err(format!("{what}: `{kind}` unsupported ({why})"));
                }
                _ => {}
            }
        }
        if !self.done {
            return Err(format!("{what}: no `bench: done` line"));
        }
        Ok(())
    }
}

/// `n` tenths as `n/10.n%10`.
pub fn fmt_tenths(n: u64) -> String {
    format!("{}.{}", n / 10, n % 10)
}

/// A signed difference of tenths, as `+12.3` / `-0.4` / `0.0`.
fn fmt_diff(a: u64, b: u64) -> String {
    match a.cmp(&b) {
        std::cmp::Ordering::Equal => "0.0".into(),
        std::cmp::Ordering::Greater => format!("+{}", fmt_tenths(a - b)),
        std::cmp::Ordering::Less => format!("-{}", fmt_tenths(b - a)),
    }
}

/// Sizes of an ELF64 image: the file, and the loaded segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Bytes of the file.
    pub file: u64,
    /// Sum of `p_filesz` of the `PT_LOAD` segments (bytes copied from the file).
    pub load_file: u64,
    /// Sum of `p_memsz` of the `PT_LOAD` segments (memory occupied, `.bss` included).
    pub load_mem: u64,
}

/// Reads the program headers of the little-endian ELF64 `data` (ELF
/// specification: `e_phoff` at 0x20, `e_phentsize` at 0x36, `e_phnum` at
/// 0x38; in each entry `p_type` at 0, `p_filesz` at 0x20, `p_memsz` at
/// 0x28; `PT_LOAD` = 1).
pub fn elf_image_size(data: &[u8]) -> Result<ImageSize, String> {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u64_at = |o: usize| -> Option<u64> {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let phoff = u64_at(0x20).unwrap_or(0) as usize;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    if phentsize < 0x38 {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    let mut size = ImageSize {
        file: data.len() as u64,
        load_file: 0,
        load_mem: 0,
    };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = data
            .get(ph..ph + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("program header {i} beyond the end of the file"))?;
        if p_type == 1 {
            let field = |o| u64_at(ph + o).ok_or_else(|| format!("program header {i} cut short"));
            size.load_file += field(0x20)?;
            size.load_mem += field(0x28)?;
        }
    }
    Ok(size)
}

/// What hv-app says about the memory of a VM: a console line
/// `VM <id> memory: <label> <n> KiB, <label> <n> KiB, ...`, for instance
/// `VM 1 memory: total 16516 KiB, guest RAM 16384 KiB, hypervisor 132 KiB, per vCPU 28 KiB`.
/// Returns the KiB by label, or `None` without such a line.
pub fn parse_memory_line<S: AsRef<str>>(lines: &[S], vm: usize) -> Option<BTreeMap<String, u64>> {
    let tag = format!("VM {vm} memory:");
    let line = lines.iter().map(AsRef::as_ref).find(|l| l.contains(&tag))?;
    let rest = &line[line.find(&tag)? + tag.len()..];
    let mut out = BTreeMap::new();
    for part in rest.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        if let [label @ .., n, "KiB"] = words.as_slice()
            && let Ok(n) = n.parse()
            && !label.is_empty()
        {
            out.insert(label.join(" "), n);
        }
    }
    Some(out)
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
    /// The run under hv-app.
    pub hv: BenchRun,
    /// The run without a hypervisor.
    pub floor: BenchRun,
    /// The hv-app ELF.
    pub image: ImageSize,
    /// hv-app's memory line for the bench VM, if it prints one.
    pub memory: Option<BTreeMap<String, u64>>,
    /// hv-app's exit-count line for the bench VM, if any.
    pub exits: Option<String>,
    /// NimbOS boot to its shell prompt, if asked for: a sentence.
    pub nimbos: Option<String>,
}

/// A KiB figure of hv-app's memory line.
fn memory_figure(mem: &Option<BTreeMap<String, u64>>, label: &str) -> String {
    match mem {
        None => "n/a (hv-app does not report it yet)".into(),
        Some(m) => match m.get(label) {
            Some(kib) => format!("{kib} KiB"),
            None => format!("n/a (hv-app's memory line has no `{label}` figure)"),
        },
    }
}

fn cell(s: &Sample) -> String {
    match s {
        Sample::Measured { .. } => fmt_tenths(s.per_tenths().unwrap_or(0)),
        Sample::Unsupported(why) => format!("n/a ({why})"),
    }
}

impl Report {
    /// The report as markdown: the round-trip table, then the sizes.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# axhv exit-cost benchmark\n");
        let iters = self
            .hv
            .samples
            .values()
            .find_map(|v| match v {
                Sample::Measured { iters, .. } => Some(*iters),
                _ => None,
            })
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "{}, TCG, `-cpu EPYC,+svm,+npt {} -smp 1 -m {MACHINE_MEM}`. Guest `bench` \
             (guests/src/bin/bench.rs): RDTSC around {iters} iterations of each kind after a \
             warm-up; under icount the TSC counts executed instructions, so the figures are \
             instructions per iteration, loop included (the empty loop is its cost). hv-app \
             runs it as a Type-1 VM on emulated AMD SVM; the floor is the same guest on the \
             same machine without a hypervisor.\n",
            self.qemu,
            ICOUNT_ARGS.join(" ")
        );
        let _ = writeln!(
            s,
            "| round trip | hv-app (SVM) | no hypervisor (floor) | hv - floor (exit cost) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (kind, label) in KINDS {
            let get = |r: &BenchRun| {
                r.samples
                    .get(kind)
                    .cloned()
                    .unwrap_or_else(|| Sample::Unsupported("no result line".into()))
            };
            let (hv, floor) = (get(&self.hv), get(&self.floor));
            let diff = match (hv.per_tenths(), floor.per_tenths()) {
                (Some(a), Some(b)) => fmt_diff(a, b),
                _ => "n/a".into(),
            };
            let _ = writeln!(s, "| {label} | {} | {} | {diff} |", cell(&hv), cell(&floor));
        }
        let _ = writeln!(s, "\n| hv-app | |\n|---|---:|");
        let _ = writeln!(s, "| ELF file size | {} bytes |", self.image.file);
        let _ = writeln!(
            s,
            "| loaded image (PT_LOAD, memory size) | {} bytes |",
            self.image.load_mem
        );
        let _ = writeln!(
            s,
            "| loaded image (PT_LOAD, file size) | {} bytes |",
            self.image.load_file
        );
        let _ = writeln!(
            s,
            "| memory per VM (hypervisor's own, bench VM) | {} |",
            memory_figure(&self.memory, "hypervisor")
        );
        let _ = writeln!(
            s,
            "| memory per vCPU | {} |",
            memory_figure(&self.memory, "per vCPU")
        );
        let _ = writeln!(
            s,
            "| NimbOS: instructions from power-on to the shell prompt | {} |",
            self.nimbos
                .as_deref()
                .unwrap_or("not measured (give --nimbos PATH)")
        );
        if let Some(exits) = &self.exits {
            let _ = writeln!(s, "\nhv-app: `{exits}`");
        }
        s
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        let mut kinds = Vec::new();
        for (kind, label) in KINDS {
            let side = |r: &BenchRun| match r.samples.get(kind) {
                Some(smp @ Sample::Measured { iters, cycles }) => format!(
                    "{{\"iters\": {iters}, \"cycles\": {cycles}, \"per_iteration\": {}}}",
                    fmt_tenths(smp.per_tenths().unwrap_or(0))
                ),
                Some(Sample::Unsupported(why)) => {
                    format!("{{\"unsupported\": {}}}", json_str(why))
                }
                None => "null".into(),
            };
            let diff = match (
                self.hv.samples.get(kind).and_then(Sample::per_tenths),
                self.floor.samples.get(kind).and_then(Sample::per_tenths),
            ) {
                (Some(a), Some(b)) => fmt_diff(a, b).trim_start_matches('+').to_string(),
                _ => "null".into(),
            };
            kinds.push(format!(
                "    {{\"kind\": {}, \"label\": {}, \"hv\": {}, \"floor\": {}, \"exit_cost\": {diff}}}",
                json_str(kind),
                json_str(label),
                side(&self.hv),
                side(&self.floor)
            ));
        }
        let opt_str = |o: &Option<String>| o.as_deref().map_or("null".into(), json_str);
        let memory = match &self.memory {
            None => "null".into(),
            Some(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{}: {v}", json_str(&format!("{k} KiB"))))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "{{\n  \"qemu\": {},\n  \"qemu_args\": {},\n  \"hypervisor_seen_by_guest\": {},\n  \
             \"round_trips\": [\n{}\n  ],\n  \"hv_app_image\": {{\"file_bytes\": {}, \
             \"load_mem_bytes\": {}, \"load_file_bytes\": {}}},\n  \"hv_app_memory\": {memory},\n  \
             \"hv_app_exits\": {},\n  \"nimbos_to_prompt\": {}\n}}\n",
            json_str(&self.qemu),
            json_str(&format!(
                "-accel tcg -cpu EPYC,+svm,+npt {} -smp 1 -m {MACHINE_MEM}",
                ICOUNT_ARGS.join(" ")
            )),
            opt_str(&self.hv.hypervisor),
            kinds.join(",\n"),
            self.image.file,
            self.image.load_mem,
            self.image.load_file,
            opt_str(&self.exits),
            opt_str(&self.nimbos),
        )
    }
}

/// `s` as a JSON string.
fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The QEMU settings of every bench run.
fn qemu_config(timeout: Duration) -> QemuConfig {
    QemuConfig {
        smp: 1,
        mem: MACHINE_MEM.into(),
        timeout,
        stream: false,
    }
}

/// Where the reports go: `<target dir>/bench`.
fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("bench")
}

/// Checks a QEMU run ended through the debug-exit port with `expected`.
fn check_exit(what: &str, out: &QemuOutcome, expected: i32) -> Result<(), String> {
    if out.timed_out {
        return Err(format!("{what}: QEMU did not end in time{}", tail(out)));
    }
    match out.debug_exit_value() {
        Some(v) if v == expected => Ok(()),
        v => Err(format!(
            "{what}: exit value {v:?} (QEMU status {:?}), expected {expected}{}",
            out.status,
            tail(out)
        )),
    }
}

/// The last console lines, for an error message.
fn tail(out: &QemuOutcome) -> String {
    let n = out.lines.len().saturating_sub(15);
    format!("; last lines:\n    {}", out.lines[n..].join("\n    "))
}

/// Runs the bench guest under hv-app (`icount`: with the icount options).
fn run_hv(elf: &Path, guest: &Path, icount: bool) -> Result<QemuOutcome, String> {
    let cfg = qemu_config(Duration::from_secs(300));
    let mut args = qemu::type1_args(elf, &cfg);
    if icount {
        args.extend(ICOUNT_ARGS.iter().map(|s| s.to_string()));
    }
    let dir = elf
        .parent()
        .expect("the ELF has a directory")
        .join("xtask-bench-vms");
    let spec = vms::VmSpec {
        config: root().join("configs/test-guest.toml"),
        image: guest.to_path_buf(),
        name: Some(VM_NAME.into()),
    };
    args.extend(["-initrd".into(), vms::prepare_modules(&[spec], &dir)?]);
    let out = qemu::run(&args, &cfg)?;
    check_exit("the run under hv-app", &out, 0)?;
    Ok(out)
}

/// Runs the bench guest alone on the emulated machine, with icount.
fn run_floor(guest: &Path) -> Result<QemuOutcome, String> {
    let cfg = qemu_config(Duration::from_secs(120));
    let mut args = qemu::type1_args(guest, &cfg);
    args.extend(ICOUNT_ARGS.iter().map(|s| s.to_string()));
    let out = qemu::run(&args, &cfg)?;
    check_exit("the run without a hypervisor", &out, 0)?;
    Ok(out)
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "QEMU (version unknown)".into())
}

/// `cargo xtask bench [--nimbos PATH] [--smoke]`.
pub fn bench(args: &[String]) -> Result<u8, String> {
    let mut nimbos = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => return smoke().map(|()| 0),
            "--nimbos" => {
                let p = it.next().ok_or("option --nimbos needs a value")?;
                nimbos = Some(PathBuf::from(p));
            }
            other => return Err(format!("bench: unknown option `{other}`")),
        }
    }
    let nimbos = nimbos.map(|p| nimbos_unsupported(&p)).transpose()?;
    prereq::check(&[prereq::QEMU])?;
    let elf = build_hv_app()?;
    let guest = build_guests()?.join("bench");

    println!("\n==> bench guest under hv-app (QEMU/SVM, icount)");
    let t = Instant::now();
    let hv_out = run_hv(&elf, &guest, true)?;
    let hv = parse_lines(&hv_out.lines)?;
    hv.check_complete("the run under hv-app", &HV_MAY_SKIP)
        .map_err(|e| e + &tail(&hv_out))?;
    println!("    ok ({:.1}s)", t.elapsed().as_secs_f64());

    println!("\n==> bench guest without a hypervisor (the floor, icount)");
    let t = Instant::now();
    let floor_out = run_floor(&guest)?;
    let floor = parse_lines(&floor_out.lines)?;
    floor
        .check_complete("the run without a hypervisor", &FLOOR_MAY_SKIP)
        .map_err(|e| e + &tail(&floor_out))?;
    println!("    ok ({:.1}s)", t.elapsed().as_secs_f64());

    let data = std::fs::read(&elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let image = elf_image_size(&data).map_err(|e| format!("{}: {e}", elf.display()))?;
    let exits = hv_out
        .lines
        .iter()
        .find(|l| l.contains("VM 1 exits:"))
        .map(|l| l.trim().to_string());
    let report = Report {
        qemu: qemu_version(),
        memory: parse_memory_line(&hv_out.lines, 1),
        hv,
        floor,
        image,
        exits,
        nimbos,
    };

    let dir = out_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let md = report.markdown();
    for (name, text) in [("bench.md", &md), ("bench.json", &report.json())] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    println!("\n{md}");
    println!(
        "==> written {} and {}",
        dir.join("bench.md").display(),
        dir.join("bench.json").display()
    );
    Ok(0)
}

/// What the report says for `--nimbos PATH` (after checking the image):
/// the measurement is not available yet, and why.
fn nimbos_unsupported(path: &Path) -> Result<String, String> {
    vms::check_image(path)?;
    Ok(
        "unsupported: (1) QEMU 7.2 gives the host no deterministic instruction count at a \
        console line (it would take parsing the record/replay log's character-write events, \
        whose format changes between QEMU versions, or a TCG plugin, which Debian does not \
        ship), and NimbOS prints no TSC reading of its own; (2) hv-app cannot boot NimbOS \
        yet: axvm does not emulate the hpet, lapic and pic8259 devices of \
        configs/nimbos.toml"
            .into(),
    )
}

/// The bench smoke test for `cargo xtask test`: builds hv-app and the
/// guests, runs the bench guest under hv-app once (without icount: the
/// figures mean nothing, only the lines count) and checks that every kind
/// printed its line (only the self-IPI may be unsupported) and `bench:
/// done` came. Asserts no speed.
pub fn smoke() -> Result<(), String> {
    prereq::check(&[prereq::QEMU])?;
    let elf = build_hv_app()?;
    let guest = build_guests()?.join("bench");
    println!("\n==> bench guest under hv-app prints its table (QEMU/SVM)");
    let t = Instant::now();
    let out = run_hv(&elf, &guest, false)?;
    let run = parse_lines(&out.lines)?;
    run.check_complete("bench under hv-app", &HV_MAY_SKIP)
        .map_err(|e| e + &tail(&out))?;
    println!(
        "    ok: {} result lines and `bench: done` ({:.1}s)",
        run.samples.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guest prints without a hypervisor (taken from a run).
    const FLOOR: &[&str] = &[
        "Booting from ROM..",
        "bench: start hypervisor=none iters=10000 warmup=64",
        "bench: empty iters=10000 cycles=20008 per=2.0",
        "bench: cpuid iters=10000 cycles=40010 per=4.0",
        "bench: pio_out iters=10000 cycles=30010 per=3.0",
        "bench: hypercall unsupported (no hypervisor: the instruction raises #UD)",
        "bench: rdmsr iters=10000 cycles=30009 per=3.0",
        "bench: mmio_read iters=10000 cycles=30009 per=3.0",
        "bench: self_ipi iters=10000 cycles=120016 per=12.0",
        "bench: done",
    ];

    /// Under hv-app: prefixed lines, invented figures.
    fn hv_lines() -> Vec<String> {
        let mut v: Vec<String> = vec![
            "[vm1] bench: start hypervisor=AxHvAxHvAxHv iters=10000 warmup=64".into(),
            "[vm1] bench: empty iters=10000 cycles=20008 per=2.0".into(),
            "[vm1] bench: cpuid iters=10000 cycles=2500049 per=250.0".into(),
            "[vm1] bench: pio_out iters=10000 cycles=3333333 per=333.3".into(),
            "[vm1] bench: hypercall iters=10000 cycles=2000050 per=200.0".into(),
            "[vm1] bench: rdmsr iters=10000 cycles=1999949 per=200.0".into(),
            "[vm1] bench: mmio_read iters=10000 cycles=7000000 per=700.0".into(),
            "[vm1] bench: self_ipi unsupported (no virtual LAPIC yet)".into(),
            "[vm1] bench: done".into(),
        ];
        v.push("VM 1 (bench) exited with status 0".into());
        v.push(
            "VM 1 memory: total 16516 KiB, guest RAM 16384 KiB, hypervisor 132 KiB, per vCPU 28 KiB"
                .into(),
        );
        v
    }

    #[test]
    fn parses_a_floor_run() {
        let r = parse_lines(FLOOR).unwrap();
        assert_eq!(r.hypervisor.as_deref(), Some("none"));
        assert!(r.done);
        assert_eq!(
            r.samples["cpuid"],
            Sample::Measured {
                iters: 10000,
                cycles: 40010
            }
        );
        assert_eq!(r.samples["cpuid"].per_tenths(), Some(40));
        assert_eq!(r.samples["self_ipi"].per_tenths(), Some(120));
        assert_eq!(
            r.samples["hypercall"],
            Sample::Unsupported("no hypervisor: the instruction raises #UD".into())
        );
        r.check_complete("floor", &FLOOR_MAY_SKIP).unwrap();
        // The hypervisor run may not skip the hypercall.
        let e = r.check_complete("hv", &HV_MAY_SKIP).unwrap_err();
        assert!(e.contains("`hypercall` unsupported"), "{e}");
    }

    #[test]
    fn missing_and_malformed_lines_are_errors() {
        let r = parse_lines(&FLOOR[..FLOOR.len() - 1]).unwrap();
        let e = r.check_complete("floor", &FLOOR_MAY_SKIP).unwrap_err();
        assert!(e.contains("no `bench: done`"), "{e}");
        let r = parse_lines(&[FLOOR[0], FLOOR[1], FLOOR[2], FLOOR[9]]).unwrap();
        let e = r.check_complete("floor", &FLOOR_MAY_SKIP).unwrap_err();
        assert!(e.contains("no `bench: cpuid ...` line"), "{e}");
        let e = parse_lines(&["bench: cpuid iters=10 cycles=x per=1.0"]).unwrap_err();
        assert!(e.contains("`cycles` is not a number"), "{e}");
        let e = parse_lines(&["bench: cpuid iters=10 per=1.0"]).unwrap_err();
        assert!(e.contains("no `cycles=`"), "{e}");
        // per must agree with cycles / iters (45 / 10 = 4.5).
        let e = parse_lines(&["bench: cpuid iters=10 cycles=45 per=4.4"]).unwrap_err();
        assert!(e.contains("does not match cycles/iters = 4.5"), "{e}");
        assert!(parse_lines(&["bench: cpuid iters=10 cycles=45 per=4.5"]).is_ok());
    }

    #[test]
    fn renders_the_table() {
        let hv_out = hv_lines();
        let report = Report {
            qemu: "QEMU emulator version 7.2.22".into(),
            hv: parse_lines(&hv_out).unwrap(),
            floor: parse_lines(FLOOR).unwrap(),
            image: ImageSize {
                file: 1_000_000,
                load_file: 300_000,
                load_mem: 400_000,
            },
            memory: parse_memory_line(&hv_out, 1),
            exits: None,
            nimbos: None,
        };
        let md = report.markdown();
        assert!(
            md.contains("| CPUID (leaf 0) | 250.0 | 4.0 | +246.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| OUT to port 0x3FF (16550 scratch) | 333.3 | 3.0 | +330.3 |"),
            "{md}"
        );
        assert!(md.contains(
            "| hypercall (`vmmcall`, HC_VERSION) | 200.0 | n/a (no hypervisor: the instruction raises #UD) | n/a |"
        ));
        assert!(md.contains(
            "| self-IPI delivered and EOI'd | n/a (no virtual LAPIC yet) | 12.0 | n/a |"
        ));
        assert!(md.contains("| empty loop (`dec; jnz`) | 2.0 | 2.0 | 0.0 |"));
        assert!(md.contains("| loaded image (PT_LOAD, memory size) | 400000 bytes |"));
        assert!(md.contains("| memory per VM (hypervisor's own, bench VM) | 132 KiB |"));
        assert!(md.contains("| memory per vCPU | 28 KiB |"));
        let json = report.json();
        assert!(
            json.contains(
                "{\"kind\": \"cpuid\", \"label\": \"CPUID (leaf 0)\", \"hv\": {\"iters\": 10000, \
             \"cycles\": 2500049, \"per_iteration\": 250.0}, \"floor\": {\"iters\": 10000, \
             \"cycles\": 40010, \"per_iteration\": 4.0}, \"exit_cost\": 246.0}"
            ),
            "{json}"
        );
        assert!(json.contains("\"exit_cost\": null"));
        assert!(json.contains("\"hv_app_memory\": {\"guest RAM KiB\": 16384, \"hypervisor KiB\": 132, \"per vCPU KiB\": 28, \"total KiB\": 16516}"), "{json}");
    }

    #[test]
    fn memory_line_absent_or_partial() {
        assert_eq!(parse_memory_line(FLOOR, 1), None);
        assert_eq!(
            memory_figure(&None, "hypervisor"),
            "n/a (hv-app does not report it yet)"
        );
        let m = parse_memory_line(&["VM 2 memory: hypervisor 40 KiB, junk"], 2).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["hypervisor"], 40);
        assert!(memory_figure(&Some(m), "per vCPU").contains("no `per vCPU` figure"));
    }

    #[test]
    fn options_are_checked_before_any_build() {
        let e = bench(&["--bogus".to_string()]).unwrap_err();
        assert!(e.contains("unknown option `--bogus`"), "{e}");
        let e = bench(&["--nimbos".to_string()]).unwrap_err();
        assert!(e.contains("--nimbos needs a value"), "{e}");
        let e = bench(&["--nimbos".to_string(), "/nonexistent/nimbos".into()]).unwrap_err();
        assert!(e.contains("/nonexistent/nimbos"), "{e}");
    }

    #[test]
    fn differences_and_json_strings() {
        assert_eq!(fmt_diff(2500, 40), "+246.0");
        assert_eq!(fmt_diff(40, 45), "-0.5");
        assert_eq!(fmt_diff(7, 7), "0.0");
        assert_eq!(
            json_str("a \"b\"\\\n\u{1}"),
            "\"a \\\"b\\\"\\\\\\n\\u0001\""
        );
    }

    /// A minimal ELF64 header with two PT_LOAD and one PT_NOTE program header.
    fn elf(phdrs: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2; // ELFCLASS64
        d[5] = 1; // little endian
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(ty, filesz, memsz) in phdrs {
            let mut ph = vec![0u8; 0x38];
            ph[..4].copy_from_slice(&ty.to_le_bytes());
            ph[0x20..0x28].copy_from_slice(&filesz.to_le_bytes());
            ph[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
            d.extend(ph);
        }
        d
    }

    #[test]
    fn elf_load_sizes() {
        let d = elf(&[(1, 0x1000, 0x1000), (4, 0x40, 0x40), (1, 0x200, 0x3000)]);
        let s = elf_image_size(&d).unwrap();
        assert_eq!(s.file, 64 + 3 * 0x38);
        assert_eq!(s.load_file, 0x1200);
        assert_eq!(s.load_mem, 0x4000);
        assert!(elf_image_size(b"nope").unwrap_err().contains("ELF64"));
        let mut cut = elf(&[(1, 1, 1)]);
        cut.truncate(64 + 0x2c);
        assert!(elf_image_size(&cut).unwrap_err().contains("cut short"));
    }
}
