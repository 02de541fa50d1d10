//! The VM runner: runs the VMs given as boot modules, one after the other,
//! on the bootstrap CPU, each as an `axvm::Vm`.
//!
//! `axvm` builds a VM from its configuration (address space, image and
//! boot information, devices, vCPUs) and settles the exits that belong to
//! it (port I/O, MSRs, MMIO, lazily allocated RAM). What is left is
//! hv-app's job and lives here: turning virtualization on for this CPU,
//! the guest console (each line printed as `[vm<ID>] ...`), answering
//! hypercalls (`hv_app::hypercall`), ending a VM and reporting how it
//! ended (`hv_app::vm_end`), and the power-off value after the last one.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use axaddrspace::{GuestPhysAddr, NestedPagingKind};
use axdevice::UartBackend;
use axvcpu::{AxArchPerCpu, AxArchVCpu};
use axvm::{StopReason, Vm, VmExit};
use axvmconfig::VmConfig;
use hv_app::guest_console::{VmConsole, VmLine};
use hv_app::hypercall;
use hv_app::memory::FRAME_SIZE;
use hv_app::multiboot::{BootInfo, read_c_str};
use hv_app::vm_end::{RunSummary, StopContext, VmEnd, VmMemoryReport, eager_ram_bytes};
use hv_app::vm_modules::{ModuleRole, VmModules, pair_vm_modules};
use hv_app::{Error, Result};
use x86_vcpu::vendor::HwCpuid;
use x86_vcpu::{VirtKind, X86PerCpu, X86Vcpu, X86VcpuCreateConfig, X86VcpuExt, detect};

use crate::hal::HvHal;
use crate::phys::IdentityMapped;

/// A VM of hv-app: VMX or SVM vCPUs (chosen from CPUID), guest memory
/// from hv-app's frame allocator.
pub(crate) type HvVm = Vm<X86Vcpu<HvHal>, HvHal>;

/// The boot modules of one VM.
#[derive(Debug, Clone, Copy)]
pub struct VmParts {
    /// The binary configuration.
    pub config: &'static [u8],
    /// The kernel image.
    pub image: &'static [u8],
}

/// The VMs among the boot modules (see `hv_app::vm_modules`), in order.
pub fn find_vms(boot: &BootInfo, mem: &IdentityMapped) -> Result<Vec<VmParts>> {
    let mut buf = [0u8; 512];
    let mut ranges = Vec::new();
    let mut roles = Vec::new();
    for module in boot.modules(mem) {
        let m = module?;
        let role = match m.string_addr {
            0 => ModuleRole::Other,
            a => ModuleRole::of(read_c_str(mem, u64::from(a), &mut buf)?),
        };
        roles.push(role);
        ranges.push((m.start, m.len()));
    }
    let pairs = pair_vm_modules(roles)?;
    let bytes = |i: usize| -> &'static [u8] {
        let (start, len) = ranges[i];
        if start == 0 || len == 0 {
            return &[];
        }
        // SAFETY: the module lies below 4 GiB (32-bit fields), which the
        // boot page tables identity map; `mem::init` kept it out of the
        // frame allocator and heap, and nothing writes to it, so it stays
        // valid and unchanged for the rest of the run.
        unsafe { core::slice::from_raw_parts(start as usize as *const u8, len as usize) }
    };
    Ok(pairs
        .iter()
        .map(|&VmModules { config, image }| VmParts {
            config: bytes(config),
            image: bytes(image),
        })
        .collect())
}

/// What this processor's virtualization gives the VMs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Virt {
    /// The nested page table format (NPT on AMD, EPT on Intel).
    pub(crate) nested: NestedPagingKind,
    /// The number of TLB tags (SVM ASIDs, VMX VPIDs), tag 0 (the host's)
    /// included.
    pub(crate) tags: u32,
}

/// Checks CPUID for a usable virtualization extension, and logs it.
pub(crate) fn check_virtualization() -> Option<Virt> {
    let info = detect(&HwCpuid);
    match (info.kind, info.svm) {
        (Some(VirtKind::Svm), Some(f)) => {
            log::info!(
                "virtualization: AMD SVM, {} ASIDs, nested paging {}, NRIP save {}, \
                 decode assists {}, flush by ASID {}",
                f.num_asids,
                yes_no(f.nested_paging),
                yes_no(f.nrip_save),
                yes_no(f.decode_assists),
                yes_no(f.flush_by_asid)
            );
            if !f.nested_paging {
                log::error!(
                    "this CPU has SVM without nested paging (CPUID 8000_000Ah EDX bit 0), \
                     which hv-app needs: start QEMU with -cpu EPYC,+svm,+npt"
                );
                return None;
            }
            Some(Virt {
                nested: NestedPagingKind::Npt,
                tags: f.num_asids,
            })
        }
        (Some(VirtKind::Vmx), _) => {
            log::info!("virtualization: Intel VMX");
            Some(Virt {
                nested: NestedPagingKind::Ept,
                tags: 1 << 16,
            })
        }
        _ => {
            log::error!(
                "this CPU offers neither SVM (CPUID 8000_0001h ECX bit 2) nor VMX \
                 (CPUID 1 ECX bit 5): start QEMU with -cpu EPYC,+svm,+npt"
            );
            None
        }
    }
}

/// Turns virtualization on on CPU `cpu_id` (the calling CPU): SVM's
/// EFER.SVME and host save area, or VMXON. Keep the result alive while
/// guests run on this CPU; `hardware_disable` turns it off again.
pub fn enable_virtualization(cpu_id: usize) -> Option<X86PerCpu<HvHal>> {
    let mut per_cpu = match X86PerCpu::<HvHal>::new(cpu_id) {
        Ok(p) => p,
        Err(e) => {
            log::error!("virtualization on CPU {cpu_id}: {e}");
            return None;
        }
    };
    if let Err(e) = per_cpu.hardware_enable() {
        log::error!("enabling virtualization on CPU {cpu_id} failed: {e}");
        return None;
    }
    log::info!("virtualization enabled on CPU {cpu_id}");
    Some(per_cpu)
}

/// Turns virtualization on on this CPU, runs every VM to its end, turns it
/// off again, prints `axhv: all VMs ended (<n> exited, <m> stopped)`, and
/// returns the value for the debug-exit port
/// ([`RunSummary::exit_value`]), or `None` if virtualization is unusable
/// or the host state did not survive a guest.
pub fn run_all(vms: &[VmParts]) -> Option<u32> {
    let virt = check_virtualization()?;
    let mut per_cpu = enable_virtualization(0)?;
    if let Err(e) = crate::host_timer::start() {
        log::warn!("{e}: a guest that spins without exits misses its timer interrupts");
    }

    let mut summary = RunSummary::new();
    for (i, vm) in vms.iter().enumerate() {
        let (free_before, _) = crate::mem::frame_counts();
        // ASID/VPID 0 is the host's. The VMs run one after the other and a
        // new vCPU's first entry flushes its tag's TLB entries, so tags may
        // wrap around.
        let usable = virt.tags.saturating_sub(1).max(1);
        let tag = u16::try_from(1 + i as u32 % usable).unwrap_or(1);
        let end = run_one(i, vm, virt.nested, tag);
        crate::host_timer::arm(None);
        summary.record(&end);
        if !host_state_intact() {
            return None;
        }
        let (free_after, _) = crate::mem::frame_counts();
        if free_after != free_before {
            log::warn!(
                "VM {}: {} frame(s) not returned after the VM ended",
                i + 1,
                free_before.saturating_sub(free_after)
            );
        }
    }
    if let Err(e) = per_cpu.hardware_disable() {
        log::warn!("disabling virtualization on CPU 0 failed: {e}");
    }
    println!("axhv: {summary}");
    Some(summary.exit_value())
}

/// Whether the host state that VMRUN does not switch came back after the
/// guest ran: the GS base (per-CPU data) and the task register (IST stacks
/// for #DF, NMI, #MC), which the VMRUN path restores with VMLOAD.
fn host_state_intact() -> bool {
    let per_cpu = crate::cpu_local::current().is_some_and(|p| p.cpu_id == 0);
    let tr = crate::cpu::task_register();
    if per_cpu && tr == crate::gdt::TSS_SELECTOR {
        log::debug!("host GS base and TR intact after the guest ran");
        true
    } else {
        log::error!(
            "host state lost after the guest ran: per-CPU data via GS base {}, TR {tr:#x} \
             (expected {:#x})",
            if per_cpu { "ok" } else { "lost" },
            crate::gdt::TSS_SELECTOR
        );
        false
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Prints one line of a guest's console (a prompt without its end of line).
fn print_guest_line(line: VmLine<'_>) {
    print!("{}", line.terminated());
}

/// Builds and runs VM number `index` (its vCPUs tagged `tag`); prints how
/// it ended and its exits.
fn run_one(index: usize, parts: &VmParts, nested: NestedPagingKind, tag: u16) -> VmEnd {
    let config = match VmConfig::from_bytes(parts.config) {
        Ok(c) => c,
        Err(e) => {
            let end = VmEnd::Error(Error::from(e).to_string());
            println!("VM {} {end}", index + 1);
            return end;
        }
    };
    let id = config.id;
    let console =
        Arc::new(VmConsole::new(id, print_guest_line).with_input(crate::console::read_byte));
    let backend: Arc<dyn UartBackend> = console.clone();
    let per_vcpu_bytes = vcpu_frames(tag).saturating_mul(FRAME_SIZE);
    let (free_before, _) = crate::mem::frame_counts();
    let has_lapic = has_local_apic(&config);
    let mut vm = match HvVm::new_with_clock(
        &config,
        parts.image,
        nested,
        |vcpu| {
            let mut c = X86VcpuCreateConfig::new(vcpu, tag);
            // CPUID 0x4000_0010: the TSC frequency guests calibrate with.
            c.cpuid.tsc_khz = u32::try_from(crate::tsc::tsc_hz() / 1000).unwrap_or(u32::MAX);
            // x2APIC and the TSC deadline only with a local APIC behind them.
            c.cpuid = c.cpuid.with_local_apic(has_lapic);
            c
        },
        backend,
        Some(crate::tsc::vm_clock()),
    ) {
        Ok(vm) => vm,
        Err(e) => {
            let end = VmEnd::Error(Error::from(e).to_string());
            println!("VM {id} {end}");
            return end;
        }
    };
    let (free_after, _) = crate::mem::frame_counts();
    println!(
        "{}",
        VmMemoryReport {
            id,
            total_bytes: free_before.saturating_sub(free_after) * FRAME_SIZE,
            guest_ram_bytes: eager_ram_bytes(&config),
            per_vcpu_bytes,
        }
    );
    let boot = vm.boot();
    log::info!(
        "VM {id} ({}): kernel at GPA [{:#x}, {:#x}), entry {:#x}{}",
        config.name,
        boot.image_extent.0.as_usize(),
        boot.image_extent.1.as_usize(),
        boot.entry.as_usize(),
        match boot.multiboot_info {
            Some(a) => alloc::format!(", multiboot info at {:#x}", a.as_usize()),
            None => String::new(),
        }
    );
    if vm.vcpu_count() > 1 {
        log::warn!(
            "VM {id}: {} vCPUs configured, only vCPU 0 runs for now",
            vm.vcpu_count()
        );
    }

    let end = run_until(&mut vm, &|| false);
    console.finish();
    if end.is_exit() {
        println!("VM {id} ({}) {end}", config.name);
    } else {
        println!("VM {id} {end}");
    }
    print_exits(&vm);
    end
}

/// Whether `config` gives its vCPUs a local APIC (a `lapic` device).
pub(crate) fn has_local_apic(config: &VmConfig) -> bool {
    config
        .devices
        .emulated
        .iter()
        .any(|d| d.kind == axvmconfig::DeviceKind::Lapic)
}

/// The frames one vCPU's control structures take (SVM: VMCB, host save
/// page, I/O and MSR permission maps), measured by creating a vCPU with TLB
/// tag `tag` and dropping it again.
fn vcpu_frames(tag: u16) -> u64 {
    let (before, _) = crate::mem::frame_counts();
    let Ok(probe) = X86Vcpu::<HvHal>::new(0, X86VcpuCreateConfig::new(0, tag)) else {
        return 0;
    };
    let (after, _) = crate::mem::frame_counts();
    drop(probe);
    before.saturating_sub(after)
}

/// Prints `VM <id> exits: N (IoRead a, IoWrite b, ...)`, then what the VM
/// settled itself (`VM <id> settled: mmio_reads 14, ...`) if anything.
pub(crate) fn print_exits(vm: &HvVm) {
    let stats = vm.exit_stats();
    let mut list = String::new();
    for (name, n) in stats.exits.iter() {
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push_str(&alloc::format!("{name} {n}"));
    }
    println!("VM {} exits: {} ({list})", vm.id(), stats.exits.total());
    let mut settled = String::new();
    for (name, n) in stats.settled() {
        if n != 0 {
            if !settled.is_empty() {
                settled.push_str(", ");
            }
            settled.push_str(&alloc::format!("{name} {n}"));
        }
    }
    if !settled.is_empty() {
        println!("VM {} settled: {settled}", vm.id());
    }
}

/// Runs vCPU 0 of `vm` until the VM ends, or until `stop` says so when
/// an exit comes back to the runner (then the VM is stopped as requested).
pub(crate) fn run_until(vm: &mut HvVm, stop: &dyn Fn() -> bool) -> VmEnd {
    let id = vm.id();
    log::info!("VM {id} ({}): running", vm.name());
    // The hypercalls a guest VM may make are answered inside the VM's exit
    // loop, without coming back here.
    let answer = |nr: u64, args: &[u64; 6]| {
        let result = hypercall::handle(nr, args);
        log::trace!("VM {id}: hypercall {nr:#x} {args:x?} -> {result:#x}");
        Some(result)
    };
    loop {
        if stop() {
            let end = VmEnd::Requested("by the root VM".into());
            vm.stop(StopReason::Requested(end.to_string()));
            return end;
        }
        let exit = match vm.run_vcpu_with(0, answer) {
            Ok(exit) => exit,
            Err(e) => return VmEnd::Error(Error::from(e).to_string()),
        };
        if let Some(end) = VmEnd::from_exit(&exit, &Stopped(vm)) {
            if let VmEnd::EntryFailed { check: None, .. } = end {
                log_failed_entry(vm);
            }
            return end;
        }
        let stop = |vm: &mut HvVm, end: VmEnd| {
            vm.stop(StopReason::Requested(end.to_string()));
            end
        };
        match exit {
            VmExit::Hypercall { nr, args } => {
                let result = hypercall::handle(nr, &args);
                log::debug!(
                    "VM {id}: hypercall {nr:#x} ({}) {args:x?} -> {result:#x}",
                    hypercall::Hypercall::from_nr(nr).name()
                );
                if let Err(e) = vm.set_hypercall_result(0, result) {
                    return stop(vm, VmEnd::Error(Error::from(e).to_string()));
                }
            }
            // The host's timer (its wake-up, `host_timer`): nothing else to
            // do; the loop enters again and fires the guest's timer.
            VmExit::ExternalInterrupt { vector } => crate::host_timer::acknowledge(vector),
            VmExit::Halt => {
                let rip = Stopped(vm).rip();
                return stop(vm, VmEnd::Halted { rip });
            }
            VmExit::CpuUp { target_cpu, .. } => {
                return stop(
                    vm,
                    VmEnd::Unsupported(alloc::format!(
                        "the guest starts vCPU {target_cpu}: running more than vCPU 0 \
                         is not implemented"
                    )),
                );
            }
            VmExit::CpuDown { state } => {
                return stop(
                    vm,
                    VmEnd::Unsupported(alloc::format!(
                        "vCPU 0 went down (state {state:#x}): restarting a vCPU is not \
                         implemented"
                    )),
                );
            }
            other => {
                return stop(
                    vm,
                    VmEnd::Error(alloc::format!("exit `{other}` came back unexpectedly")),
                );
            }
        }
    }
}

/// What the runner knows about a stopped VM, for [`VmEnd::from_exit`].
struct Stopped<'a>(&'a HvVm);

impl StopContext for Stopped<'_> {
    fn owns(&self, gpa: u64) -> bool {
        let gpa = GuestPhysAddr::from_usize(gpa as usize);
        self.0.aspace().find_area(gpa).is_some() || self.0.devices().find_mmio(gpa).is_some()
    }

    fn rip(&self) -> u64 {
        self.0
            .vcpu(0)
            .map_or(0, |v| v.arch_vcpu().guest_code_location().linear_rip)
    }

    fn entry_check(&self) -> Option<&'static str> {
        match self.0.vcpu(0).ok()?.arch_vcpu() {
            X86Vcpu::Svm(v) => v.entry_failure(),
            X86Vcpu::Vmx(v) => v.entry_failure().map(|f| f.description()),
        }
    }
}

/// Logs the VMCB's main fields after a VMRUN that the processor refused
/// although x86_vcpu's checks passed. Its state save area may then hold the
/// processor's partial state rather than what was entered (QEMU TCG).
fn log_failed_entry(vm: &HvVm) {
    let Ok(vcpu) = vm.vcpu(0) else { return };
    let X86Vcpu::Svm(v) = vcpu.arch_vcpu() else {
        return;
    };
    let (c, s) = (&v.vmcb().control, &v.vmcb().save);
    log::error!(
        "VMCB after the failed VMRUN: intercepts misc1 {:#x} misc2 {:#x}, ASID {}, NP {} nCR3 {:#x}, \
         IOPM {:#x} MSRPM {:#x}, EVENTINJ {:#x}",
        c.intercept_misc1,
        c.intercept_misc2,
        c.guest_asid,
        c.np_enable,
        c.n_cr3,
        c.iopm_base_pa,
        c.msrpm_base_pa,
        c.event_inj
    );
    log::error!(
        "VMCB after the failed VMRUN: CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} RFLAGS {:#x} RIP {:#x} \
         CS {:#x}/{:#x} CPL {} G_PAT {:#x}",
        s.cr0,
        s.cr3,
        s.cr4,
        s.efer,
        s.rflags,
        s.rip,
        s.cs.selector,
        s.cs.attrib,
        s.cpl,
        s.g_pat
    );
}
