//! Type-1.5 with the real hypervisor: `cargo xtask run --mode type15
//! --root-vm [--check]`.
//!
//! Builds the Linux-linked variant of hv-app (`AXHV_LINK=linux`, linked at
//! the reserved region [`HV_MEM`], see `hv-app/linker-linux.ld`) in its own
//! target directory, turns its ELF into the flat image the kernel module
//! copies to offset 0 of the region (`hv-app-linux.bin`: the PT_LOAD
//! segments from the lowest address, `.bss` as zeros), and boots Linux
//! with an `/init` that enables the hypervisor with that image: Linux goes
//! on as the root VM (AMD SVM; QEMU/TCG, 2 CPUs), user space prints after
//! the enable, `hvctl status` answers, a sleep runs on the timer, then
//! `disable` returns every CPU to native execution; three such cycles (each
//! enable loads the image into the region again, which only works once
//! the region is Linux's again), then power off.
//!
//! The same scenario runs on Intel VMX in Bochs ([`Platform::BochsVmx`],
//! `cargo xtask run --mode type15 --vendor intel --root-vm [--check]`):
//! Bochs cannot load a kernel itself, so a GRUB ISO boots the Debian kernel
//! with the same command line and initramfs; Bochs is about 50 times
//! slower than QEMU, so it runs one cycle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bochs::{self, Machine, RunSpec};
use crate::linux::{self, HV_MEM};
use crate::qemu::{self, QemuConfig, QemuOutcome};
use crate::{prereq, tasks};

/// Where the root-VM scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// QEMU/TCG with AMD SVM and nested paging, 2 CPUs: three cycles.
    QemuSvm,
    /// Bochs with Intel VMX and EPT (`corei7_skylake_x`), 2 CPUs, booted
    /// from a GRUB ISO: one cycle.
    BochsVmx,
}

impl Platform {
    /// How many enable/disable cycles `/init` runs.
    pub fn cycles(self) -> u32 {
        match self {
            Platform::QemuSvm => 3,
            Platform::BochsVmx => 1,
        }
    }

    /// How long `/init` sleeps as the root VM in each cycle (the timer
    /// works): 1 s on QEMU; on Bochs an idle emulated second costs about
    /// 90 s of wall-clock time, so 0.2 s there.
    pub fn sleep(self) -> &'static str {
        match self {
            Platform::QemuSvm => "1",
            Platform::BochsVmx => "0.2",
        }
    }

    /// The cycle in which the `isolation` guest (stopped for touching
    /// memory outside its own) runs: the second on QEMU, the only one on
    /// Bochs.
    pub fn isolation_cycle(self) -> u32 {
        match self {
            Platform::QemuSvm => 2,
            Platform::BochsVmx => 1,
        }
    }

    /// What `/init` runs first to route its own output: on Bochs through
    /// the kernel log (see [`init_script`]), on QEMU nothing.
    pub fn console_redirect(self) -> &'static str {
        match self {
            Platform::QemuSvm => "",
            Platform::BochsVmx => BOCHS_KMSG,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::QemuSvm => "QEMU/SVM",
            Platform::BochsVmx => "Bochs/VMX",
        }
    }
}

/// The line `/init` prints last, before `poweroff -f`.
pub const DONE: &str = "axhv-rootvm: done";

/// `/init`'s first lines on Bochs: its output (and hvctl's) through the
/// kernel log, whole lines in order with the kernel's and hv-app's.
const BOCHS_KMSG: &str = "echo on > /proc/sys/kernel/printk_devkmsg\nexec > /dev/kmsg 2>&1\n";

/// The Bochs machine of the scenario: 2 CPUs, and memory beyond the
/// hypervisor's region (`memmap=256M$0x20000000`).
pub const BOCHS_MACHINE: Machine = Machine {
    megs: 1024,
    cpus: 2,
};

/// Wall-clock bound of the Bochs run. Measured here: the kernel reaches
/// `/init` after about 165 s (most of it the kernel's own XZ
/// decompression; 190 s with the console at 9600 baud); a busy machine
/// makes that 2-3 times slower.
pub const BOCHS_TIMEOUT: Duration = Duration::from_secs(900);

/// How long Bochs may take to power off after [`DONE`] (`poweroff -f`
/// ends it through ACPI S5) before it is stopped.
const BOCHS_GRACE: Duration = Duration::from_secs(20);

/// Once `/init` runs, how long the console may stay quiet before the run
/// counts as hung and is stopped. Measured here: a second of emulated time
/// with both CPUs idle (`sleep`) takes about 90 s; the script's quiet steps
/// are shorter (the guest's run keeps a CPU busy).
const BOCHS_STALL: Duration = Duration::from_secs(240);

/// The flat memory image of an ELF64 file: its PT_LOAD segments placed
/// from the lowest physical address, the bytes beyond each segment's file
/// size (`.bss`) as zeros. Returns the base address and the image.
pub fn flat_image(elf: &[u8]) -> Result<(u64, Vec<u8>), String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let bad = || "truncated ELF program headers".to_string();
    let phoff = u64_at(32).ok_or_else(bad)? as usize;
    let phentsize = u16_at(54).ok_or_else(bad)? as usize;
    let phnum = u16_at(56).ok_or_else(bad)? as usize;
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(bad)? != 1 {
            continue; // not PT_LOAD
        }
        let off = u64_at(ph + 8).ok_or_else(bad)?;
        let paddr = u64_at(ph + 24).ok_or_else(bad)?;
        let filesz = u64_at(ph + 32).ok_or_else(bad)?;
        let memsz = u64_at(ph + 40).ok_or_else(bad)?;
        if filesz > memsz || off.checked_add(filesz).is_none_or(|e| e > elf.len() as u64) {
            return Err(format!("PT_LOAD {i}: file bytes outside the file"));
        }
        segs.push((paddr, off, filesz, memsz));
    }
    let base = segs.iter().map(|s| s.0).min().ok_or("no PT_LOAD segment")?;
    let end = segs.iter().map(|s| s.0 + s.3).max().unwrap_or(base);
    if end - base > 64 << 20 {
        return Err(format!("image of {} bytes is too large", end - base));
    }
    let mut img = vec![0u8; (end - base) as usize];
    for (paddr, off, filesz, _) in segs {
        let at = (paddr - base) as usize;
        img[at..at + filesz as usize].copy_from_slice(&elf[off as usize..(off + filesz) as usize]);
    }
    Ok((base, img))
}

/// Builds the Linux-linked hv-app and writes `hv-app-linux.bin`; checks it
/// is linked at [`HV_MEM`] and starts with the Linux-entry header.
pub fn build_hv_app_linux() -> Result<PathBuf, String> {
    let target = linux::out_dir().join("hv-app-target");
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(tasks::root())
        .env("AXHV_LINK", "linux")
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "-p",
            "hv-app",
            "--release",
            "--target",
            "x86_64-unknown-none",
        ]);
    println!("\n==> build hv-app, Linux-linked variant (AXHV_LINK=linux)");
    let t = Instant::now();
    let st = c.status().map_err(|e| format!("cargo: {e}"))?;
    if !st.success() {
        return Err(format!("build hv-app (AXHV_LINK=linux): failed ({st})"));
    }
    println!("    ok ({:.1}s)", t.elapsed().as_secs_f64());
    let elf_path = target.join("x86_64-unknown-none/release/hv-app");
    let elf = std::fs::read(&elf_path).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let (base, img) = flat_image(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    if base != HV_MEM || !img.starts_with(b"AXHVLNX1") {
        return Err(format!(
            "{}: linked at {base:#x}, header {:?}: want {HV_MEM:#x} and AXHVLNX1 first",
            elf_path.display(),
            String::from_utf8_lossy(&img[..8.min(img.len())])
        ));
    }
    let out = target.join("hv-app-linux.bin");
    std::fs::write(&out, &img).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The `/init` of the root-VM scenario: [`Platform::cycles`] cycles of
/// enable, a guest VM on CPU 1 (the `hello` test guest) while Linux runs on
/// CPU 0, destroy (CPU 1 back online), disable; the first cycle also runs
/// `hvctl selftest` (malformed hypercalls, a root-VM read of the
/// hypervisor's memory, the virtualization feature hidden from the root
/// VM), the second a guest that reads a line typed with `hvctl vm input`,
/// the third a guest that never ends, destroyed while it runs. A guest that
/// is stopped for touching memory outside its own runs in
/// [`Platform::isolation_cycle`].
///
/// On Bochs, `/init` writes its output (and hvctl's) to `/dev/kmsg`: the
/// emulated UART takes real time per character, so output written
/// through the tty (drained later by the UART's interrupt) lags behind the
/// kernel's and the hypervisor's lines, written at once, and they cut into
/// each other mid-line; through the kernel log every line comes whole and
/// in order. It also reports the kernel command line, the cpuidle driver,
/// the CPU flags that matter to a VMX root VM, and, after each enable,
/// whether a line written through the tty gets its UART interrupts.
pub fn init_script(platform: Platform) -> String {
    let (console, diagnostics, after_enable) = match platform {
        Platform::QemuSvm => ("", "", ""),
        Platform::BochsVmx => (
            BOCHS_KMSG,
            r#"echo "axhv-rootvm: CPUs online at boot: $(cat /sys/devices/system/cpu/online)"
echo "axhv-rootvm: kernel command line: $(cat /proc/cmdline)"
echo "axhv-rootvm: cpuidle driver: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>&1), governor: $(cat /sys/devices/system/cpu/cpuidle/current_governor_ro 2>&1)"
echo "axhv-rootvm: CPU flags: $(grep -o -w 'vmx\|mwait\|monitor\|invpcid\|xsaves\|pcid\|x2apic\|tsc_deadline_timer\|hypervisor' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "axhv-rootvm: interrupts before enable: $(grep -E 'ttyS|LOC:' /proc/interrupts | tr -s ' ' | tr '\n' '|')"
"#,
            r#"    echo "axhv-rootvm: cycle $i: this line goes through the tty (UART interrupts)" > /dev/console
    sleep 0.1
    echo "axhv-rootvm: cycle $i: interrupts 0.1 s after enable: $(grep -E 'ttyS|LOC:' /proc/interrupts | tr -s ' ' | tr '\n' '|')"
"#,
        ),
    };
    let cycles: Vec<String> = (1..=platform.cycles()).map(|i| i.to_string()).collect();
    format!(
        r#"{prelude}{console}echo "axhv-rootvm: Linux up ($(uname -r), CPUs online $(cat /sys/devices/system/cpu/online))"
{diagnostics}insmod /lib/modules/axhv.ko hv_mem={mem:#x} hv_size={size:#x} && echo "axhv-rootvm: module loaded"
for i in {cycles}; do
    hvctl enable --image /axhv/hv-app-linux.bin
    echo "axhv-rootvm: cycle $i: hvctl enable exit status $?"
    echo "axhv-rootvm: cycle $i: user space still running after enable (pid $$, uptime $(cut -d' ' -f1 /proc/uptime) s)"
{after_enable}    hvctl status | grep enabled
    hvctl vm create /axhv/test-guest.toml --image /axhv/guest
    echo "axhv-rootvm: cycle $i: vm create exit status $?, CPUs online $(cat /sys/devices/system/cpu/online)"
    echo "axhv-rootvm: cycle $i: Linux runs beside the guest VM (uptime $(cut -d' ' -f1 /proc/uptime) s)"
    hvctl vm wait 1 --timeout 60
    hvctl vm list
    hvctl vm console 1
    hvctl vm destroy 1
    echo "axhv-rootvm: cycle $i: vm destroy exit status $?, CPUs online $(cat /sys/devices/system/cpu/online)"
    if [ $i = {isolation} ]; then
        # A guest that touches memory outside its own: stopped, reported.
        hvctl vm create /axhv/test-guest.toml --image /axhv/isolation
        hvctl vm wait 1 --timeout 60
        hvctl vm console 1
        hvctl vm destroy 1
        echo "axhv-rootvm: cycle $i: misbehaving guest destroyed, CPUs online $(cat /sys/devices/system/cpu/online)"
    fi
    if [ $i = 1 ]; then
        hvctl selftest
        echo "axhv-rootvm: cycle $i: selftest exit status $?"
    fi
    if [ $i = 2 ]; then
        # Console input: the echo guest waits at its prompt for a line.
        hvctl vm create /axhv/test-guest.toml --image /axhv/echo
        hvctl vm console 1 --follow --until 'type a line>' --timeout 60
        hvctl vm input 1 'ping from Linux\r'
        hvctl vm console 1 --follow --timeout 60
        hvctl vm destroy 1
        echo "axhv-rootvm: cycle $i: echo guest destroyed, CPUs online $(cat /sys/devices/system/cpu/online)"
    fi
    if [ $i = 3 ]; then
        # A guest that never ends and makes no exits: destroyed while it runs.
        hvctl vm create /axhv/test-guest.toml --image /axhv/spin
        sleep 1
        hvctl vm list
        hvctl vm destroy 1
        hvctl vm console 1
        echo "axhv-rootvm: cycle $i: running guest destroyed, CPUs online $(cat /sys/devices/system/cpu/online)"
    fi
    sleep {sleep}
    echo "axhv-rootvm: cycle $i: slept {sleep} s as the root VM, uptime $(cut -d' ' -f1 /proc/uptime) s"
    hvctl disable
    echo "axhv-rootvm: cycle $i: hvctl disable exit status $?"
    echo "axhv-rootvm: cycle $i: user space still running after disable (uptime $(cut -d' ' -f1 /proc/uptime) s, CPUs online $(cat /sys/devices/system/cpu/online))"
done
echo "{DONE}"
poweroff -f
"#,
        isolation = platform.isolation_cycle(),
        prelude = linux::INIT_PRELUDE,
        mem = HV_MEM,
        size = linux::HV_SIZE,
        cycles = cycles.join(" "),
        sleep = platform.sleep(),
    )
}

/// The selftest's lines about the virtualization feature the root VM must
/// not see: EFER.SVME and CPUID 8000_0001h ECX.SVM on AMD, CPUID 1
/// ECX.VMX on Intel (EFER has no SVME there).
fn selftest_hidden(platform: Platform) -> Vec<String> {
    match platform {
        Platform::QemuSvm => vec![
            "selftest: EFER.SVME as the root VM reads it -> 0 (hidden expected): ok".to_string(),
            "selftest: CPUID SVM bit as the root VM reads it -> 0 (hidden expected): ok"
                .to_string(),
        ],
        Platform::BochsVmx => vec![
            "selftest: CPUID VMX bit as the root VM reads it -> 0 (hidden expected): ok"
                .to_string(),
        ],
    }
}

/// The user-space and module lines of one cycle, in order.
fn cycle(i: u32, platform: Platform) -> Vec<String> {
    let mut v = vec![
        "axhv: hypervisor enabled on 2 CPUs: Linux runs as the root VM".to_string(),
        format!("axhv-rootvm: cycle {i}: hvctl enable exit status 0"),
        format!("axhv-rootvm: cycle {i}: user space still running after enable"),
        "enabled: yes".to_string(),
        "/axhv/test-guest.toml: configuration valid".to_string(),
        "axhv: VM 1 created and started on CPU 1".to_string(),
        "created VM 1".to_string(),
        format!("axhv-rootvm: cycle {i}: vm create exit status 0, CPUs online 0"),
        format!("axhv-rootvm: cycle {i}: Linux runs beside the guest VM"),
        "VM 1 has ended".to_string(),
        "VM 1: ended, CPUs 0x2".to_string(),
        "[vm1] hello: Hello from axhv guest!".to_string(),
        "[vm1] hello: ok".to_string(),
        "VM 1 (test-guest) exited with status 0".to_string(),
        "axhv: CPU 1 back online, under the hypervisor again".to_string(),
        "destroyed VM 1".to_string(),
        format!("axhv-rootvm: cycle {i}: vm destroy exit status 0, CPUs online 0-1"),
    ];
    if i == platform.isolation_cycle() {
        v.extend([
            "created VM 1".to_string(),
            "VM 1 has ended".to_string(),
            "[vm1] isolation:".to_string(),
            "VM 1 stopped: access to GPA 0x40000000 outside its memory".to_string(),
            "axhv: CPU 1 back online, under the hypervisor again".to_string(),
            format!("axhv-rootvm: cycle {i}: misbehaving guest destroyed, CPUs online 0-1"),
        ]);
    }
    if i == 2 {
        v.extend(
            [
                "[vm1] echo: type a line>",
                "sent 16 of 16 byte(s) to VM 1",
                "[vm1] echo: got ping from Linux",
                "VM 1 (test-guest) exited with status 0",
                "axhv-rootvm: cycle 2: echo guest destroyed, CPUs online 0-1",
            ]
            .map(String::from),
        );
    }
    if i == 3 {
        v.extend(
            [
                "created VM 1",
                "VM 1: running, CPUs 0x2",
                "axhv: CPU 1 back online, under the hypervisor again",
                "destroyed VM 1",
                "hvctl: vm console: no such VM",
                "axhv-rootvm: cycle 3: running guest destroyed, CPUs online 0-1",
            ]
            .map(String::from),
        );
    }
    if i == 1 {
        v.extend([
            "selftest: vm_create with buffers in the hypervisor's region -> -14 (EFAULT expected): ok".to_string(),
            "selftest: unknown hypercall 0x7777 -> -38 (ENOSYS expected): ok".to_string(),
            "selftest: vm_start of VM 0 -> -22 (EINVAL expected): ok".to_string(),
            "selftest: root VM read of the hypervisor's memory -> -14 (EFAULT expected): ok".to_string(),
        ]);
        v.extend(selftest_hidden(platform));
        v.push("axhv-rootvm: cycle 1: selftest exit status 0".to_string());
    }
    v.extend([
        format!(
            "axhv-rootvm: cycle {i}: slept {} s as the root VM",
            platform.sleep()
        ),
        "axhv: hypervisor disabled: Linux runs natively".to_string(),
        format!("axhv-rootvm: cycle {i}: hvctl disable exit status 0"),
        format!("axhv-rootvm: cycle {i}: user space still running after disable"),
    ]);
    v
}

/// Console lines the scenario expects, in order (hv-app's own lines come
/// from the hypervisor on COM1 and interleave with Linux's). On Bochs,
/// first the boot: both CPUs up, and the region's `memmap=` reaching
/// Linux through GRUB with its `$`.
pub fn expect(platform: Platform) -> Vec<String> {
    let mut v = Vec::new();
    if platform == Platform::BochsVmx {
        v.extend([
            "axhv-rootvm: CPUs online at boot: 0-1".to_string(),
            // `/proc/cmdline` (after GRUB's `BOOT_IMAGE=/boot/vmlinuz`).
            format!(" {}", linux::kernel_cmdline()),
        ]);
    }
    v.extend([
        "axhv-rootvm: module loaded".to_string(),
        "Linux entry: present".to_string(),
    ]);
    for i in 1..=platform.cycles() {
        v.extend(cycle(i, platform));
    }
    v.push(DONE.to_string());
    v
}

/// hv-app's lines, per CPU in order (the CPUs' lines interleave): Linux
/// runs as its root VM; CPU 1 is given up, runs the guest, is started by
/// Linux again and rejoins; both leave; once per cycle. The selftest's
/// hypervisor-memory read is reported once.
pub fn expect_hv(platform: Platform) -> Vec<Vec<String>> {
    let mut cpu0 = Vec::new();
    let mut cpu1 = Vec::new();
    for i in 1..=platform.cycles() {
        cpu0.push("axhv: cpu0: Linux runs as the root VM".to_string());
        if i == 1 {
            cpu0.push("root VM tried to access hypervisor memory at GPA 0x20001000".to_string());
        }
        cpu0.push("axhv: cpu0: leaving: Linux runs natively again".to_string());
        let guest = [
            "axhv: cpu1: offlined by Linux: now the hypervisor's",
            "axhv: VM 1 (test-guest) runs on CPU 1",
        ];
        let back = [
            "axhv: cpu1: ready to be started again by Linux",
            "axhv: cpu1: Linux runs as the root VM",
        ];
        cpu1.push("axhv: cpu1: Linux runs as the root VM".to_string());
        cpu1.extend(guest.map(String::from));
        cpu1.push("axhv: VM 1 (test-guest) exited with status 0".to_string());
        cpu1.extend(back.map(String::from));
        if i == platform.isolation_cycle() {
            cpu1.extend(guest.map(String::from));
            cpu1.push(
                "axhv: VM 1 stopped: access to GPA 0x40000000 outside its memory".to_string(),
            );
            cpu1.extend(back.map(String::from));
        }
        if i == 2 {
            cpu1.extend(guest.map(String::from));
            cpu1.push("axhv: VM 1 (test-guest) exited with status 0".to_string());
            cpu1.extend(back.map(String::from));
        }
        if i == 3 {
            cpu1.extend(guest.map(String::from));
            cpu1.push("axhv: VM 1 stopped: by the root VM".to_string());
            cpu1.extend(back.map(String::from));
        }
        cpu1.push("axhv: cpu1: leaving: Linux runs natively again".to_string());
    }
    vec![cpu0, cpu1]
}

/// The `/init` of `cargo xtask run` in Type-1.5 mode: enable, a user-space
/// line, then each VM in turn (`/axhv/vm<N>.cfg`, `/axhv/vm<N>.img`) on the
/// CPU Linux gives up, its console, destroy; disable; power off.
pub fn guests_init_script(
    vms: usize,
    wait_secs: u64,
    console: &qemu::ConsoleIo,
    platform: Platform,
) -> String {
    let mut s = format!(
        r#"{prelude}{kmsg}echo "axhv-run: Linux up ($(uname -r), CPUs online $(cat /sys/devices/system/cpu/online))"
insmod /lib/modules/axhv.ko hv_mem={mem:#x} hv_size={size:#x} || {{ echo "axhv-run: insmod failed"; poweroff -f; }}
if ! hvctl enable --image /axhv/hv-app-linux.bin; then
    echo "axhv-run: enable failed (see the lines above)"
    poweroff -f
fi
echo "axhv-run: Linux still runs after the enable, as the root VM (uptime $(cut -d' ' -f1 /proc/uptime) s, CPUs online $(cat /sys/devices/system/cpu/online))"
"#,
        prelude = linux::INIT_PRELUDE,
        kmsg = platform.console_redirect(),
        mem = HV_MEM,
        size = linux::HV_SIZE
    );
    // Each scripted input once the guest waits at a prompt (it printed,
    // then stayed quiet for 2 s), then the console until `until` or the
    // VM's end.
    let mut io = String::new();
    for text in &console.input {
        io.push_str(&format!(
            "    hvctl vm console 1 --follow --idle 2 --timeout {wait_secs}\n    hvctl vm input 1 '{}'\n",
            hvctl_escape(text)
        ));
    }
    match &console.until {
        Some(u) => io.push_str(&format!(
            "    hvctl vm console 1 --follow --until '{}' --timeout {wait_secs}\n",
            u.replace('\'', "'\\''")
        )),
        None => io.push_str(&format!(
            "    hvctl vm console 1 --follow --timeout {wait_secs}\n"
        )),
    }
    for i in 1..=vms {
        s.push_str(&format!(
            r#"echo "axhv-run: VM {i}: create"
if hvctl vm create /axhv/vm{i}.cfg --image /axhv/vm{i}.img; then
    echo "axhv-run: VM {i} runs; Linux goes on (CPUs online $(cat /sys/devices/system/cpu/online)); its console:"
{io}    hvctl vm destroy 1
    echo "axhv-run: VM {i} destroyed, CPUs online $(cat /sys/devices/system/cpu/online)"
fi
"#
        ));
    }
    s.push_str(
        r#"hvctl disable
echo "axhv-run: done"
poweroff -f
"#,
    );
    s
}

/// `bytes` in hvctl's escape syntax, safe inside single quotes.
fn hvctl_escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' if b != b'\'' => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// `cargo xtask run` in Type-1.5 mode (the default): Linux boots on 2 CPUs
/// (or `--smp`), enables hv-app, and each VM of `specs` runs beside it on
/// the CPU Linux gives up; returns 0 if every VM exited with status 0.
pub fn run_guests(
    specs: &[crate::vms::VmSpec],
    qemu_cfg: &QemuConfig,
    console: &qemu::ConsoleIo,
    platform: Platform,
) -> Result<u8, String> {
    prereq::check(&prereq::LINUX)?;
    if platform == Platform::BochsVmx {
        bochs::check_prereqs()?;
    }
    println!(
        "\n==> Type-1.5: Linux boots, loads hv-app and runs {} VM(s) beside it ({})",
        specs.len(),
        platform.name()
    );
    let hv_linux = build_hv_app_linux()?;
    let root = linux::out_dir().join("initramfs");
    let first = &specs[0].image;
    initramfs_at(&hv_linux, first)?;
    for (i, spec) in specs.iter().enumerate() {
        let mut cfg =
            axvmconfig::VmConfig::load_any_file(&spec.config).map_err(|e| e.to_string())?;
        if let Some(name) = &spec.name {
            cfg.name = name.clone();
        }
        let image = crate::vms::check_image(&spec.image)?;
        if let Err(e) = cfg.check_kernel_size(image.len() as u64) {
            return Err(format!("{}: {e}", spec.image.display()));
        }
        let bytes = cfg.to_bytes().map_err(|e| e.to_string())?;
        let n = i + 1;
        std::fs::write(root.join(format!("axhv/vm{n}.cfg")), bytes)
            .map_err(|e| format!("vm{n}.cfg: {e}"))?;
        std::fs::write(root.join(format!("axhv/vm{n}.img")), image)
            .map_err(|e| format!("vm{n}.img: {e}"))?;
    }
    let wait = qemu_cfg.timeout.as_secs();
    std::fs::write(
        root.join("init"),
        guests_init_script(specs.len(), wait, console, platform),
    )
    .map_err(|e| format!("init: {e}"))?;
    let initrd = pack(&root, "initramfs-run.cpio.gz")?;
    let ver = linux::kernel_version()?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{ver}"));
    let (out, ended) = match platform {
        Platform::QemuSvm => {
            let cfg = QemuConfig {
                smp: qemu_cfg.smp.max(2),
                mem: if qemu_cfg.mem == "512M" {
                    "1G".into()
                } else {
                    qemu_cfg.mem.clone()
                },
                // Linux's boot under TCG, then each VM's wait.
                timeout: Duration::from_secs(180 + wait * specs.len() as u64),
                stream: qemu_cfg.stream,
            };
            let out = qemu::run_linux(&linux::qemu_args(&kernel, &initrd, &cfg), &cfg)?;
            if out.timed_out {
                return Err(format!(
                    "Linux did not power off within {}s (stopped)",
                    cfg.timeout.as_secs()
                ));
            }
            let ended = format!("QEMU ended (status {:?})", out.status);
            (out, ended)
        }
        Platform::BochsVmx => {
            let dir = linux::out_dir().join("xtask-bochs-run");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let iso = bochs::build_linux_iso(&kernel, &initrd, &linux::kernel_cmdline(), &dir)?;
            let run = bochs::run_iso(&RunSpec {
                iso: &iso,
                dir: &dir,
                machine: BOCHS_MACHINE,
                timeout: BOCHS_TIMEOUT + Duration::from_secs(wait * specs.len() as u64),
                stream: qemu_cfg.stream,
                end_marker: RUN_DONE,
                grace: BOCHS_GRACE,
                stall: Some((qemu::LINUX_UP, BOCHS_STALL)),
            })?;
            for f in &run.findings {
                println!("{f}");
            }
            if !run.marker_seen {
                return Err(format!(
                    "Linux on Bochs did not reach `{RUN_DONE}` ({}; serial {})",
                    if run.stalled {
                        "its console was quiet too long"
                    } else {
                        "stopped at the timeout"
                    },
                    dir.join("serial.out").display()
                ));
            }
            let ended = format!(
                "Bochs {} after {:.0}s",
                if run.powered_off {
                    "powered off"
                } else {
                    "was stopped"
                },
                run.elapsed.as_secs_f64()
            );
            // `/init`'s lines come through the kernel log there.
            let lines = run
                .lines
                .iter()
                .map(|l| strip_kmsg_time(l).to_string())
                .collect();
            let out = QemuOutcome {
                lines,
                status: Some(if run.powered_off { 0 } else { 1 }),
                timed_out: false,
            };
            (out, ended)
        }
    };
    if let Some(u) = &console.until {
        let seen = out.lines.iter().any(|l| l.contains(u.as_str()));
        println!(
            "==> {ended}; `{u}` {}",
            if seen { "seen" } else { "NOT seen" }
        );
        return Ok(if seen && out.status == Some(0) { 0 } else { 1 });
    }
    // How each VM ended, from its console's last line: its exit status, or
    // 0 for a clean power-off.
    let exits: Vec<u32> = out
        .lines
        .iter()
        .filter(|l| l.starts_with("VM 1 "))
        .filter_map(|l| {
            if l.ends_with(" powered off") {
                Some(0)
            } else if l.contains("exited with status ") {
                l.rsplit(' ').next()?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    println!(
        "==> {ended}; VM exit statuses {exits:?} of {} VM(s)",
        specs.len()
    );
    let ok = out.status == Some(0) && exits.len() == specs.len() && exits.iter().all(|&e| e == 0);
    Ok(if ok { 0 } else { 1 })
}

/// The last line of `/init` in `cargo xtask run`'s Type-1.5 boot.
const RUN_DONE: &str = "axhv-run: done";

/// `line` without the kernel log's `[ seconds] ` prefix, if it has one.
fn strip_kmsg_time(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((t, rest)) if t.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// The scenario's initramfs for `platform`: the `hello` and `isolation`
/// guests, on QEMU also the `spin` and `echo` guests of cycles 2 and 3.
fn initramfs(hv_linux: &Path, platform: Platform) -> Result<PathBuf, String> {
    let guests = tasks::build_guests()?;
    let root = initramfs_at(hv_linux, &guests.join("hello"))?;
    let extra: &[&str] = match platform {
        Platform::QemuSvm => &["isolation", "spin", "echo"],
        Platform::BochsVmx => &["isolation"],
    };
    for g in extra {
        std::fs::copy(guests.join(g), root.join("axhv").join(g))
            .map_err(|e| format!("initramfs: guest {g}: {e}"))?;
    }
    std::fs::write(root.join("init"), init_script(platform)).map_err(|e| format!("init: {e}"))?;
    let name = match platform {
        Platform::QemuSvm => "initramfs-rootvm.cpio.gz",
        Platform::BochsVmx => "initramfs-rootvm-bochs.cpio.gz",
    };
    pack(&root, name)
}

/// The initramfs tree (busybox, module, hvctl, the Linux-linked hv-app as
/// `/axhv/hv-app-linux.bin`, `guest` as `/axhv/guest`) without its `/init`.
fn initramfs_at(hv_linux: &Path, guest: &Path) -> Result<PathBuf, String> {
    let ver = linux::kernel_version()?;
    let module = linux::build_module(&ver)?;
    let hvctl = linux::build_hvctl()?;
    linux::build_initramfs(&module, &hvctl, hv_linux, guest)?;
    let root = linux::out_dir().join("initramfs");
    std::fs::copy(hv_linux, root.join("axhv/hv-app-linux.bin"))
        .map_err(|e| format!("initramfs: {}: {e}", hv_linux.display()))?;
    Ok(root)
}

/// Packs the tree at `root` into a gzip'ed newc cpio named `name`.
fn pack(root: &Path, name: &str) -> Result<PathBuf, String> {
    let out = linux::out_dir().join(name);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 > "$2""#)
        .arg("sh")
        .arg(root)
        .arg(&out);
    let st = c.status().map_err(|e| format!("cpio: {e}"))?;
    if !st.success() {
        return Err(format!("build the initramfs {name}: failed ({st})"));
    }
    Ok(out)
}

/// Checks the scenario's lines on `platform`: the user-space and module
/// lines in order, then hv-app's per CPU. The error names the first
/// missing line.
fn check_lines(out: &QemuOutcome, platform: Platform) -> Result<(), String> {
    let ctx = |e: String| format!("root-VM scenario on {}: {e}", platform.name());
    let lines = expect(platform);
    out.expect_in_order(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .map_err(ctx)?;
    for per_cpu in expect_hv(platform) {
        out.expect_in_order(&per_cpu.iter().map(String::as_str).collect::<Vec<_>>())
            .map_err(ctx)?;
    }
    Ok(())
}

/// Builds and boots the scenario on QEMU/SVM; with `check`, asserts its
/// lines.
pub fn run(check: bool) -> Result<u8, String> {
    prereq::check(&prereq::LINUX)?;
    println!("\n==> Type-1.5 root VM (Linux resumed as hv-app's root VM, QEMU/SVM, 2 CPUs)");
    let t = Instant::now();
    let hv_linux = build_hv_app_linux()?;
    let initrd = initramfs(&hv_linux, Platform::QemuSvm)?;
    let ver = linux::kernel_version()?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{ver}"));
    let cfg = QemuConfig {
        smp: 2,
        mem: "1G".into(),
        timeout: Duration::from_secs(240),
        stream: !check,
    };
    let out = qemu::run_linux(&linux::qemu_args(&kernel, &initrd, &cfg), &cfg)?;
    if !check {
        println!("==> QEMU ended (status {:?})", out.status);
        return Ok(if out.status == Some(0) { 0 } else { 1 });
    }
    check_lines(&out, Platform::QemuSvm)?;
    if out.status != Some(0) {
        return Err(format!(
            "root-VM scenario: QEMU status {:?} (expected 0 after `poweroff -f`)",
            out.status
        ));
    }
    println!(
        "    ok: Linux ran as the root VM on 2 CPUs beside a guest VM on CPU 1, which came back \
         to Linux; selftest; back to native; 3 cycles ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// `cargo xtask run --mode type15 --vendor intel --root-vm [--check]
/// [--timeout SECS]`: the scenario on Bochs/VMX, one cycle. The Debian
/// kernel boots from a GRUB ISO with [`linux::kernel_cmdline`] and the
/// scenario's initramfs on a 2-CPU, 1 GiB `corei7_skylake_x`; the run ends
/// when Bochs powers off after [`DONE`] (or is stopped [`BOCHS_GRACE`]
/// after it), or at `timeout`. Prints how long Linux took to reach `/init`
/// and the whole run; with `check`, asserts the lines like [`run`].
pub fn run_bochs(check: bool, timeout: Duration) -> Result<u8, String> {
    prereq::check(&prereq::LINUX)?;
    bochs::check_prereqs()?;
    println!(
        "\n==> Type-1.5 root VM on Bochs/VMX (corei7_skylake_x, {} CPUs, {} MiB; one cycle, \
         bound {}s)",
        BOCHS_MACHINE.cpus,
        BOCHS_MACHINE.megs,
        timeout.as_secs()
    );
    let t = Instant::now();
    let hv_linux = build_hv_app_linux()?;
    let initrd = initramfs(&hv_linux, Platform::BochsVmx)?;
    let ver = linux::kernel_version()?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{ver}"));
    let dir = linux::out_dir().join("xtask-bochs-rootvm");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let iso = bochs::build_linux_iso(&kernel, &initrd, &linux::kernel_cmdline(), &dir)?;
    let built = t.elapsed();
    let run = bochs::run_iso(&RunSpec {
        iso: &iso,
        dir: &dir,
        machine: BOCHS_MACHINE,
        timeout,
        stream: !check,
        end_marker: DONE,
        grace: BOCHS_GRACE,
        stall: Some((qemu::LINUX_UP, BOCHS_STALL)),
    })?;
    let secs = |d: Option<Duration>| {
        d.map_or("never".to_string(), |d| {
            format!("after {:.0}s", d.as_secs_f64())
        })
    };
    println!(
        "==> Bochs: Linux reached /init {}, the module loaded {}, `{DONE}` {}; Bochs {} after \
         {:.0}s (build {:.0}s; serial {}, log {})",
        secs(run.time_of(qemu::LINUX_UP)),
        secs(run.time_of("axhv-rootvm: module loaded")),
        secs(run.time_of(DONE)),
        if run.powered_off {
            "powered off"
        } else if run.exited {
            "ended"
        } else if run.timed_out {
            "was stopped at the timeout"
        } else if run.stalled {
            "was stopped: its console was quiet too long"
        } else {
            "was stopped"
        },
        run.elapsed.as_secs_f64(),
        built.as_secs_f64(),
        dir.join("serial.out").display(),
        dir.join("bochs.log").display(),
    );
    for f in &run.findings {
        println!("{f}");
    }
    let ok_end = run.marker_seen && !run.timed_out;
    let mut lines = run.lines;
    lines.extend(run.findings);
    let stopped = run.timed_out || run.stalled;
    let out = QemuOutcome {
        lines,
        status: if stopped { None } else { Some(0) },
        timed_out: stopped,
    };
    if !check {
        return Ok(if ok_end { 0 } else { 1 });
    }
    check_lines(&out, Platform::BochsVmx)?;
    if !ok_end {
        return Err(format!(
            "root-VM scenario on Bochs/VMX: no `{DONE}` within {}s",
            timeout.as_secs()
        ));
    }
    if !run.powered_off {
        return Err(
            "root-VM scenario on Bochs/VMX: the machine did not power off after `poweroff -f`"
                .into(),
        );
    }
    println!(
        "    ok: Linux ran as the root VM on 2 CPUs of Bochs/VMX beside a guest VM on CPU 1, which \
         came back to Linux; selftest; back to native ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with two PT_LOAD segments, the second with .bss.
    fn elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x200];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (i, (off, paddr, filesz, memsz)) in [
            (0x100u64, 0x2000_0000u64, 4u64, 4u64),
            (0x180, 0x2000_1000, 2, 0x10),
        ]
        .into_iter()
        .enumerate()
        {
            let ph = 64 + i * 56;
            e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            e[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            e[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            e[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        e[0x100..0x104].copy_from_slice(b"AXHV");
        e[0x180..0x182].copy_from_slice(&[0xaa, 0xbb]);
        e
    }

    #[test]
    fn kmsg_time_prefix_is_stripped() {
        assert_eq!(
            strip_kmsg_time("[    7.865379] [vm1] hello: ok"),
            "[vm1] hello: ok"
        );
        assert_eq!(strip_kmsg_time("[vm1] hello: ok"), "[vm1] hello: ok");
        assert_eq!(
            strip_kmsg_time("VM 1 (hello) exited with status 0"),
            "VM 1 (hello) exited with status 0"
        );
    }

    #[test]
    fn bochs_run_init_goes_through_the_kernel_log() {
        let none = qemu::ConsoleIo::default();
        let init = guests_init_script(1, 30, &none, Platform::BochsVmx);
        assert!(
            init.contains("exec > /dev/kmsg 2>&1\necho \"axhv-run: Linux up"),
            "{init}"
        );
        assert!(init.trim_end().ends_with("poweroff -f"));
        assert!(init.contains(RUN_DONE));
        let qemu = guests_init_script(1, 30, &none, Platform::QemuSvm);
        assert!(!qemu.contains("/dev/kmsg"));
    }

    #[test]
    fn flat_image_places_segments_and_zero_bss() {
        let (base, img) = flat_image(&elf()).unwrap();
        assert_eq!(base, 0x2000_0000);
        assert_eq!(img.len(), 0x1010);
        assert_eq!(&img[..4], b"AXHV");
        assert_eq!(&img[0x1000..0x1002], &[0xaa, 0xbb]);
        assert!(img[0x1002..].iter().all(|&b| b == 0));
        assert!(img[4..0x1000].iter().all(|&b| b == 0));
    }

    #[test]
    fn flat_image_refuses_bad_input() {
        assert!(flat_image(b"not an elf").is_err());
        let mut e = elf();
        e[64 + 56 + 32..64 + 56 + 40].copy_from_slice(&0x1000u64.to_le_bytes()); // filesz past EOF
        assert!(flat_image(&e).is_err());
    }

    #[test]
    fn run_init_creates_each_vm_in_turn() {
        let none = qemu::ConsoleIo::default();
        let init = guests_init_script(2, 30, &none, Platform::QemuSvm);
        assert!(init.contains("hvctl enable --image /axhv/hv-app-linux.bin"));
        let a = init
            .find("hvctl vm create /axhv/vm1.cfg --image /axhv/vm1.img")
            .unwrap();
        let b = init
            .find("hvctl vm create /axhv/vm2.cfg --image /axhv/vm2.img")
            .unwrap();
        assert!(a < b);
        assert!(init.contains("hvctl vm console 1 --follow --timeout 30"));
        let io = qemu::ConsoleIo {
            input: vec![b"usertests\r".to_vec(), b"it's\x01".to_vec()],
            until: Some("usertests passed!".into()),
            ..Default::default()
        };
        let init = guests_init_script(1, 900, &io, Platform::QemuSvm);
        let a = init
            .find("--follow --idle 2 --timeout 900\n    hvctl vm input 1 'usertests\\r'")
            .unwrap();
        let b = init.find("hvctl vm input 1 'it\\x27s\\x01'").unwrap();
        let c = init
            .find("--follow --until 'usertests passed!' --timeout 900")
            .unwrap();
        assert!(a < b && b < c);
        assert!(init.ends_with("hvctl disable\necho \"axhv-run: done\"\npoweroff -f\n"));
    }

    #[test]
    fn bochs_expects_one_cycle_and_the_vmx_selftest() {
        let bochs = expect(Platform::BochsVmx);
        let qemu = expect(Platform::QemuSvm);
        let has = |v: &[String], s: &str| v.iter().any(|l| l == s);
        assert!(has(
            &bochs,
            "selftest: CPUID VMX bit as the root VM reads it -> 0 (hidden expected): ok"
        ));
        assert!(!bochs.iter().any(|l| l.contains("SVM")));
        assert!(has(
            &qemu,
            "selftest: EFER.SVME as the root VM reads it -> 0 (hidden expected): ok"
        ));
        assert!(!qemu.iter().any(|l| l.contains("VMX")));
        assert!(has(
            &bochs,
            "axhv-rootvm: cycle 1: hvctl disable exit status 0"
        ));
        assert!(!bochs.iter().any(|l| l.contains("cycle 2")));
        assert!(has(
            &qemu,
            "axhv-rootvm: cycle 3: hvctl disable exit status 0"
        ));
        // The region's memmap= reaches Linux through GRUB, `$` and all.
        assert_eq!(bochs[0], "axhv-rootvm: CPUs online at boot: 0-1");
        assert!(bochs[1].contains("memmap=256M$0x20000000"), "{}", bochs[1]);
        assert_eq!(bochs.last().map(String::as_str), Some(DONE));
        // hv-app's lines: one cycle on each CPU.
        let hv = expect_hv(Platform::BochsVmx);
        assert_eq!(hv.len(), 2);
        let runs = |cpu: &[String]| {
            cpu.iter()
                .filter(|l| l.ends_with("Linux runs as the root VM"))
                .count()
        };
        assert_eq!(runs(&hv[0]), 1);
        assert_eq!(runs(&expect_hv(Platform::QemuSvm)[0]), 3);
    }

    #[test]
    fn init_enables_with_the_linux_image() {
        for p in [Platform::QemuSvm, Platform::BochsVmx] {
            let init = init_script(p);
            assert!(init.contains("hvctl enable --image /axhv/hv-app-linux.bin"));
            assert!(init.contains("hv_mem=0x20000000 hv_size=0x10000000"));
            assert!(init.ends_with("echo \"axhv-rootvm: done\"\npoweroff -f\n"));
        }
        assert!(init_script(Platform::QemuSvm).contains("\nfor i in 1 2 3; do\n"));
        let bochs = init_script(Platform::BochsVmx);
        assert!(bochs.contains("\nfor i in 1; do\n"), "{bochs}");
        assert!(bochs.contains("cpuidle/current_driver"));
        assert!(!init_script(Platform::QemuSvm).contains("cpuidle"));
    }
}
