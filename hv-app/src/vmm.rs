//! The first-light VM runner (issue #3): runs the VMs given as boot
//! modules, one after the other, on the bootstrap CPU.
//!
//! Temporary until `axvm`'s VM object (address space, devices and exit
//! loop built from the configuration) takes over: here each VM gets its
//! RAM (allocated areas of its configuration), a Multiboot kernel, one
//! vCPU, and the few devices of `hv_app::bringup` (COM1 output, the
//! debug-exit port, hypercall 0).

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use axaddrspace::{
    DynAddrSpace, GuestPhysAddr, GuestPhysAddrRange, MappingFlags, NestedPagingKind,
};
use axvcpu::{AxArchPerCpu, AxVCpu, AxVCpuExitReason};
use axvm::loader::{MultibootInfoBuilder, plan_multiboot};
use axvmconfig::{BootProtocol as ConfigBoot, MapKind, MemFlags, VmConfig};
use hv_app::bringup::{
    BringupPorts, LOW_BOOT_INFO_GPA, PortWrite, VmEnd, access_name, hypercall_result,
    place_boot_info,
};
use hv_app::guest_console::LineBuffer;
use hv_app::guest_memory::LoaderMemory;
use hv_app::multiboot::{BootInfo, read_c_str};
use hv_app::vm_modules::{ModuleRole, VmModules, pair_vm_modules};
use hv_app::{Error, Result};
use x86_vcpu::vendor::HwCpuid;
use x86_vcpu::{
    BootProtocol, VirtKind, X86PerCpu, X86Vcpu, X86VcpuCreateConfig, X86VcpuExt,
    X86VcpuSetupConfig, detect,
};

use crate::hal::HvHal;
use crate::phys::IdentityMapped;

/// The vCPU type of hv-app: VMX or SVM, chosen from CPUID.
type Vcpu = AxVCpu<X86Vcpu<HvHal>>;

/// The end of guest physical addresses: 4-level nested paging maps 48 bits.
const GUEST_PHYS_LIMIT: usize = 1 << 48;

/// The legacy VGA/BIOS hole, reported to guests as reserved.
const LEGACY_HOLE: (usize, usize) = (0xa_0000, 0x6_0000);

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

/// Turns virtualization on on this CPU, runs every VM to its end, turns it
/// off again, and returns the value for the debug-exit port: the last
/// VM's [`VmEnd::exit_value`], or `None` if virtualization is unusable.
pub fn run_all(vms: &[VmParts]) -> Option<u32> {
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
        }
        (Some(VirtKind::Vmx), _) => log::info!("virtualization: Intel VMX"),
        _ => {
            log::error!(
                "this CPU offers neither SVM (CPUID 8000_0001h ECX bit 2) nor VMX \
                 (CPUID 1 ECX bit 5): start QEMU with -cpu EPYC,+svm,+npt"
            );
            return None;
        }
    }
    let mut per_cpu = match X86PerCpu::<HvHal>::new(0) {
        Ok(p) => p,
        Err(e) => {
            log::error!("virtualization: {e}");
            return None;
        }
    };
    if let Err(e) = per_cpu.hardware_enable() {
        log::error!("enabling virtualization on CPU 0 failed: {e}");
        return None;
    }
    log::info!("virtualization enabled on CPU 0");

    let mut last = 0;
    for (i, vm) in vms.iter().enumerate() {
        let (free_before, _) = crate::mem::frame_counts();
        last = run_one(i, vm).exit_value();
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
    Some(last)
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

/// Builds and runs VM number `index`; prints how it ended and its exits.
fn run_one(index: usize, parts: &VmParts) -> VmEnd {
    let config = match VmConfig::from_bytes(parts.config) {
        Ok(c) => c,
        Err(e) => {
            let end = VmEnd::Error(Error::from(e).to_string());
            println!("VM {} {end}", index + 1);
            return end;
        }
    };
    let id = config.id;
    let mut vm = match Vm::build(&config, parts.image) {
        Ok(vm) => vm,
        Err(e) => {
            let end = VmEnd::Error(e.to_string());
            println!("VM {id} {end}");
            return end;
        }
    };
    log::info!("VM {id} ({}): running", config.name);
    let end = vm.run();
    vm.console.finish(|line| println!("[vm{id}] {line}"));
    match &end {
        VmEnd::Exited { .. } => println!("VM {id} ({}) {end}", config.name),
        _ => println!("VM {id} {end}"),
    }
    let counts = vm.vcpu.exit_counters();
    let mut list = alloc::string::String::new();
    for (name, n) in counts.iter() {
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push_str(&format!("{name} {n}"));
    }
    println!("VM {id} exits: {} ({list})", counts.total());
    end
}

/// One VM of the first-light runner.
struct Vm {
    id: usize,
    aspace: DynAddrSpace<HvHal>,
    vcpu: Vcpu,
    ports: BringupPorts,
    console: LineBuffer,
}

fn mapping_flags(f: MemFlags) -> MappingFlags {
    let mut m = MappingFlags::empty();
    for (from, to) in [
        (MemFlags::READ, MappingFlags::READ),
        (MemFlags::WRITE, MappingFlags::WRITE),
        (MemFlags::EXEC, MappingFlags::EXECUTE),
        (MemFlags::DEVICE, MappingFlags::DEVICE),
        (MemFlags::UNCACHED, MappingFlags::UNCACHED),
    ] {
        if f.contains(from) {
            m |= to;
        }
    }
    m
}

impl Vm {
    /// The address space with the configuration's RAM, the kernel and its
    /// Multiboot information loaded, and vCPU 0 set up and bound.
    fn build(config: &VmConfig, image: &[u8]) -> Result<Self> {
        let id = config.id;
        if config.kernel.protocol != ConfigBoot::Multiboot {
            return Err(Error::Unsupported(
                "only multiboot kernels run before axvm's VM object lands",
            ));
        }
        if config.vcpus.count > 1 {
            log::warn!(
                "VM {id}: {} vCPUs configured, only vCPU 0 runs for now",
                config.vcpus.count
            );
        }
        let kind = match detect(&HwCpuid).kind {
            Some(VirtKind::Vmx) => NestedPagingKind::Ept,
            _ => NestedPagingKind::Npt,
        };
        let gpa = GuestPhysAddr::from_usize;
        let mut aspace = DynAddrSpace::<HvHal>::new(
            kind,
            GuestPhysAddrRange::from_start_size(gpa(0), GUEST_PHYS_LIMIT),
        )?;
        let mut mb = MultibootInfoBuilder::new().boot_loader_name("axhv");
        for r in &config.memory {
            let (start, size) = (r.gpa as usize, r.size as usize);
            let flags = mapping_flags(r.flags);
            match r.map {
                MapKind::Alloc => aspace.map_alloc(gpa(start), size, flags, true)?,
                MapKind::AllocLazy => aspace.map_alloc(gpa(start), size, flags, false)?,
                MapKind::Reserved => {}
                MapKind::Identical | MapKind::Linear { .. } => {
                    return Err(Error::Unsupported(
                        "identical and linear memory regions (host memory set aside for VMs)",
                    ));
                }
            }
            mb = if r.is_ram() {
                mb.ram(gpa(start), size)
            } else {
                mb.reserved(gpa(start), size)
            };
            log::info!(
                "VM {id}: {} {} KiB at GPA {:#x}",
                r.map.as_str(),
                r.size >> 10,
                r.gpa
            );
        }
        if config.is_ram_range(LEGACY_HOLE.0 as u64, LEGACY_HOLE.1 as u64) {
            mb = mb.reserved(gpa(LEGACY_HOLE.0), LEGACY_HOLE.1);
        }
        if let Some(cmdline) = &config.kernel.cmdline {
            mb = mb.cmdline(cmdline);
        }

        let plan = plan_multiboot(image)?;
        plan.apply(image, &mut LoaderMemory(&mut aspace))?;
        let extent = plan
            .extent()
            .map(|(s, e)| (s.as_usize() as u64, e.as_usize() as u64));
        let probe = mb.build(gpa(LOW_BOOT_INFO_GPA as usize))?;
        let info_gpa = place_boot_info(extent, probe.bytes.len() as u64, |g, l| {
            config.is_ram_range(g, l)
        })
        .ok_or(Error::Unsupported(
            "no guest RAM for the multiboot information (neither at 0x9000 nor after the kernel)",
        ))?;
        let info = mb.build(gpa(info_gpa as usize))?;
        let ebx = info.write_to(&mut LoaderMemory(&mut aspace))?;
        if let Some((s, e)) = extent {
            log::info!(
                "VM {id}: kernel at GPA [{s:#x}, {e:#x}), entry {:#x}, multiboot info at {ebx:#x}",
                plan.entry.as_usize()
            );
        }

        // ASID/VPID 0 is the host's. The VMs run one after the other and a
        // new vCPU's first entry flushes the TLB, so they can share tag 1.
        let mut vcpu = Vcpu::new(0, 0, None, X86VcpuCreateConfig::new(0, 1))?;
        vcpu.setup(
            plan.entry,
            aspace.page_table_root(),
            X86VcpuSetupConfig {
                boot: BootProtocol::Multiboot { info_paddr: ebx },
            },
        )?;
        vcpu.bind()?;
        log::debug!(
            "VM {id}: nested page table root {:#x}",
            aspace.page_table_root().as_usize()
        );
        Ok(Self {
            id,
            aspace,
            vcpu,
            ports: BringupPorts::new(),
            console: LineBuffer::new(),
        })
    }

    /// The guest's RIP.
    fn rip(&self) -> u64 {
        match self.vcpu.arch_vcpu() {
            X86Vcpu::Svm(v) => v.vmcb().save.rip,
            v @ X86Vcpu::Vmx(_) => v.guest_code_location().linear_rip,
        }
    }

    /// The consistency check a failed entry breaks, if x86_vcpu named it
    /// (it checks the VMCB before every VMRUN); the VMCB's main fields go
    /// to the log.
    fn entry_check(&self) -> Option<&'static str> {
        match self.vcpu.arch_vcpu() {
            X86Vcpu::Svm(v) => {
                if let Some(why) = v.entry_failure() {
                    return Some(why);
                }
                // The processor refused a VMCB that passed the checks. Its
                // state save area may now hold the processor's partial
                // state rather than what was entered (QEMU TCG).
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
                None
            }
            X86Vcpu::Vmx(_) => None,
        }
    }

    /// Runs the guest until it ends.
    fn run(&mut self) -> VmEnd {
        let id = self.id;
        loop {
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                Err(e) => return VmEnd::Error(Error::from(e).to_string()),
            };
            match exit {
                AxVCpuExitReason::IoWrite { port, width, data } => {
                    match self.ports.write(port, width, data) {
                        PortWrite::Console(byte) => {
                            self.console.push(byte, |line| println!("[vm{id}] {line}"))
                        }
                        PortWrite::Exit(status) => return VmEnd::Exited { status },
                        PortWrite::Ignored => {}
                    }
                }
                AxVCpuExitReason::IoRead { port, width } => {
                    let value = self.ports.read(port, width);
                    if let Err(e) = self.vcpu.set_io_result(width, value) {
                        return VmEnd::Error(Error::from(e).to_string());
                    }
                }
                AxVCpuExitReason::Hypercall { nr, args } => {
                    log::debug!("VM {id}: hypercall {nr:#x} {args:x?}");
                    self.vcpu.set_return_value(hypercall_result(nr));
                }
                AxVCpuExitReason::MsrRead { msr } => {
                    log::warn!("VM {id}: RDMSR {msr:#x} (not emulated) reads 0");
                    if let Err(e) = self.vcpu.set_msr_result(0) {
                        return VmEnd::Error(Error::from(e).to_string());
                    }
                }
                AxVCpuExitReason::MsrWrite { msr, value } => {
                    log::warn!("VM {id}: WRMSR {msr:#x} <- {value:#x} (not emulated) ignored");
                }
                AxVCpuExitReason::NestedPageFault { addr, access_flags } => {
                    match self.aspace.handle_page_fault(addr, access_flags) {
                        Ok(true) => {}
                        Ok(false) => {
                            let (gpa, rip) = (addr.as_usize() as u64, self.rip());
                            let access = access_name(access_flags);
                            return if self.aspace.find_area(addr).is_none() {
                                VmEnd::OutsideMemory { gpa, rip, access }
                            } else {
                                VmEnd::AccessDenied { gpa, rip, access }
                            };
                        }
                        Err(e) => return VmEnd::Error(Error::from(e).to_string()),
                    }
                }
                AxVCpuExitReason::TripleFault | AxVCpuExitReason::Shutdown => {
                    return VmEnd::TripleFault { rip: self.rip() };
                }
                AxVCpuExitReason::Halt => return VmEnd::Halted { rip: self.rip() },
                AxVCpuExitReason::FailEntry {
                    hardware_entry_failure_reason: code,
                } => {
                    return VmEnd::EntryFailed {
                        code,
                        check: self.entry_check(),
                    };
                }
                AxVCpuExitReason::ExternalInterrupt { .. }
                | AxVCpuExitReason::InterruptWindow
                | AxVCpuExitReason::Nothing => {}
                other => {
                    return VmEnd::Error(format!(
                        "exit {} is not handled before axvm's VM object lands",
                        other.name()
                    ));
                }
            }
        }
    }
}
