//! One virtual machine: its address space, devices and vCPUs, and the exit
//! loop.

use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicBool, Ordering};

use axaddrspace::{
    AccessWidth, AxMmHal, DynAddrSpace, GuestPhysAddr, MappingFlags, NestedPagingKind,
    TranslationCache, WalkCache,
};
use axdevice::{Clock, DeviceSet, PortDevice, PortRange, Uart16550, UartBackend};
use axvcpu::{AxArchVCpu, AxVCpu, AxVCpuExitReason, VCpuState};
use axvmconfig::VmConfig;
use x86_vcpu::mmio_rmw::decode_mmio_rmw;
use x86_vcpu::{X86VcpuExt, X86VcpuSetupConfig};
use x86_vlapic::{ApicEvent, ApicTime, DeliveryMode, IpiRequest, TimerDeadline, VLocalApic};

use crate::build::{self, BootSetup};
use crate::memory::fetch_code_cached;
use crate::{Error, ExitStats, Result, StopReason, VmExit, VmState};

/// The caches one vCPU's instruction fetches go through (MMIO exits).
#[derive(Debug, Default)]
struct FetchCaches {
    /// Host addresses of the guest pages last read (page tables, code).
    pages: TranslationCache,
    /// The last guest page walks, checked against the guest's tables.
    walks: WalkCache,
}

/// One virtual machine: guest memory (a nested page table of the kind the
/// processor needs), the emulated devices, and the vCPUs, built from an
/// [`axvmconfig::VmConfig`].
///
/// `V` is the vCPU of the architecture (`x86_vcpu::X86Vcpu<_>` in the
/// hypervisor, a fake in tests); its setup takes an
/// [`X86VcpuSetupConfig`], and it can decode the instruction of an MMIO
/// access ([`X86VcpuExt`]). `H` supplies host memory for guest RAM and
/// the nested page table.
///
/// [`run_vcpu`](Self::run_vcpu) runs a vCPU and settles every exit that
/// belongs to the VM (port I/O, MSRs, MMIO, lazily allocated RAM); it
/// returns the others ([`VmExit`]).
pub struct Vm<V, H>
where
    V: AxArchVCpu<SetupConfig = X86VcpuSetupConfig> + X86VcpuExt,
    H: AxMmHal,
{
    id: usize,
    name: String,
    config: VmConfig,
    aspace: DynAddrSpace<H>,
    devices: DeviceSet,
    uart: Option<Arc<Uart16550>>,
    debug_exits: Vec<Arc<axdevice::DebugExit>>,
    power_offs: Vec<Arc<axdevice::PowerOff>>,
    /// The 8259 pair, if configured.
    pic: Option<Arc<axdevice::Pic8259>>,
    /// The time source of the timer devices, if one was given.
    clock: Option<Arc<dyn Clock>>,
    /// One virtual local APIC per vCPU when the configuration has a
    /// `lapic` device (empty otherwise).
    lapics: Vec<VLocalApic>,
    /// Per vCPU, the wake-up last asked of the clock
    /// ([`Clock::set_wakeup`](axdevice::Clock::set_wakeup)).
    wakeups: Vec<Option<u64>>,
    /// The ports of `debug_exits` and `power_offs`: only a write there can
    /// end the VM.
    power_ports: Vec<PortRange>,
    console: Arc<dyn UartBackend>,
    vcpus: Vec<AxVCpu<V>>,
    /// One per vCPU: what it needs to read its current instruction quickly
    /// on an MMIO exit.
    fetch: Vec<FetchCaches>,
    boot: BootSetup,
    state: VmState,
    /// Set by a [`Kicker`]: the run loop returns at the next exit it would
    /// otherwise settle silently.
    kick: Arc<AtomicBool>,
    /// The settled-in-VM counters; the exit counters live in the vCPUs.
    stats: ExitStats,
}

impl<V, H> Vm<V, H>
where
    V: AxArchVCpu<SetupConfig = X86VcpuSetupConfig> + X86VcpuExt,
    H: AxMmHal,
{
    /// Builds the VM `config` describes, with `image` as its kernel.
    ///
    /// 1. Validates `config` ([`Error::Config`] lists every problem).
    /// 2. Builds the address space with nested paging format `nested`
    ///    (EPT on Intel, NPT on AMD): `alloc` regions are allocated now,
    ///    `alloc_lazy` on first touch; `identical`/`linear` are refused for
    ///    now ([`Error::Config`]).
    /// 3. Loads `image` per `kernel.protocol` (see [`BootSetup`]); a
    ///    Multiboot kernel gets its information structure at a free spot of
    ///    low RAM (GPA `0x9000` when free).
    /// 4. Creates the devices: `uart16550` (output to `console`),
    ///    `debug_exit`, `power_off`, `test_mmio`, `pic8259`; `hpet` needs a
    ///    clock ([`new_with_clock`](Self::new_with_clock)). Any other kind
    ///    is [`Error::DeviceNotEmulated`].
    /// 5. Creates the vCPUs (`create_config(id)` gives each one's creation
    ///    parameters; `vcpus.phys_cpu_affinity` gives its favoured CPU and
    ///    affinity) and sets each up with the entry, the nested page table
    ///    root and the boot protocol.
    ///
    /// Nothing is left behind on failure: the host frames are released.
    pub fn new(
        config: &VmConfig,
        image: &[u8],
        nested: NestedPagingKind,
        create_config: impl FnMut(usize) -> V::CreateConfig,
        console: Arc<dyn UartBackend>,
    ) -> Result<Self> {
        Self::new_with_clock(config, image, nested, create_config, console, None)
    }

    /// [`new`](Self::new) with a time source for the timer devices (the
    /// HPET's main counter follows `clock`).
    pub fn new_with_clock(
        config: &VmConfig,
        image: &[u8],
        nested: NestedPagingKind,
        mut create_config: impl FnMut(usize) -> V::CreateConfig,
        console: Arc<dyn UartBackend>,
        clock: Option<Arc<dyn Clock>>,
    ) -> Result<Self> {
        config.validate()?;
        let mut aspace = build::address_space::<H>(config, nested)?;
        let boot = build::load_image(config, image, &mut aspace)?;
        let devs = build::devices(config, &console, clock.as_ref())?;
        let root = aspace.page_table_root();
        let mut vcpus = Vec::with_capacity(config.vcpus.count);
        for id in 0..config.vcpus.count {
            let cpu = config
                .vcpus
                .phys_cpu_affinity
                .as_ref()
                .and_then(|a| a.get(id).copied());
            let (favor, mask) = match cpu {
                Some(c) => (c, (c < usize::BITS as usize).then(|| 1usize << c)),
                None => (0, None),
            };
            let mut vcpu = AxVCpu::new(id, favor, mask, create_config(id))?;
            vcpu.setup(
                boot.entry,
                root,
                X86VcpuSetupConfig {
                    boot: boot.protocol.clone(),
                },
            )?;
            vcpus.push(vcpu);
        }
        log::info!(
            "VM {} `{}`: {} vCPU(s), {} MiB RAM ({:?}), image {:#x}..{:#x}, entry {:#x}, devices: {}",
            config.id,
            config.name,
            vcpus.len(),
            config.ram_size() >> 20,
            nested,
            boot.image_extent.0.as_usize(),
            boot.image_extent.1.as_usize(),
            boot.entry.as_usize(),
            build::describe(&devs.set),
        );
        let lapics = build::lapics(config, clock.is_some())?;
        let power_ports = devs
            .debug_exits
            .iter()
            .map(|d| d.port_range())
            .chain(devs.power_offs.iter().map(|p| p.port_range()))
            .collect();
        let fetch = vcpus.iter().map(|_| FetchCaches::default()).collect();
        Ok(Self {
            id: config.id,
            name: config.name.clone(),
            config: config.clone(),
            aspace,
            devices: devs.set,
            uart: devs.uart,
            debug_exits: devs.debug_exits,
            power_offs: devs.power_offs,
            pic: devs.pic,
            wakeups: alloc::vec![None; lapics.len()],
            lapics,
            clock,
            power_ports,
            console,
            vcpus,
            fetch,
            boot,
            state: VmState::Created,
            kick: Arc::new(AtomicBool::new(false)),
            stats: ExitStats::new(),
        })
    }

    /// The VM's id (from its configuration).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The VM's name (from its configuration).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Where it is in its lifecycle.
    pub fn state(&self) -> &VmState {
        &self.state
    }

    /// Whether the VM has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, VmState::Stopped(_))
    }

    /// Stops the VM: no vCPU runs again. The first reason sticks; stopping
    /// a stopped VM changes nothing.
    pub fn stop(&mut self, reason: StopReason) {
        if self.is_stopped() {
            return;
        }
        log::info!("VM {} `{}` stopped: {reason}", self.id, self.name);
        self.state = VmState::Stopped(reason);
    }

    /// How the guest was loaded and entered.
    pub fn boot(&self) -> &BootSetup {
        &self.boot
    }

    /// The guest physical address space.
    pub fn aspace(&self) -> &DynAddrSpace<H> {
        &self.aspace
    }

    /// The guest physical address space, mutably (to write guest memory).
    pub fn aspace_mut(&mut self) -> &mut DynAddrSpace<H> {
        &mut self.aspace
    }

    /// The emulated devices.
    pub fn devices(&self) -> &DeviceSet {
        &self.devices
    }

    /// The 8259 interrupt controller pair, if the configuration has one.
    pub fn pic(&self) -> Option<&Arc<axdevice::Pic8259>> {
        self.pic.as_ref()
    }

    /// The time source given to [`new_with_clock`](Self::new_with_clock).
    pub fn clock(&self) -> Option<&Arc<dyn Clock>> {
        self.clock.as_ref()
    }

    /// The first 16550 UART, to feed it input
    /// ([`Uart16550::push_input`]).
    pub fn serial(&self) -> Option<&Arc<Uart16550>> {
        self.uart.as_ref()
    }

    /// Where the guest's serial output goes.
    pub fn console(&self) -> &Arc<dyn UartBackend> {
        &self.console
    }

    /// The number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// vCPU `id`.
    pub fn vcpu(&self, id: usize) -> Result<&AxVCpu<V>> {
        self.vcpus.get(id).ok_or(Error::NoSuchVCpu { id })
    }

    /// vCPU `id`, mutably (to inject an interrupt, bind/unbind it, or reach
    /// the architecture vCPU).
    pub fn vcpu_mut(&mut self, id: usize) -> Result<&mut AxVCpu<V>> {
        self.vcpus.get_mut(id).ok_or(Error::NoSuchVCpu { id })
    }

    /// The exit counters of the whole VM: the exits of all its vCPUs (each
    /// counted once, by its [`AxVCpu`]) and what the VM settled itself.
    pub fn exit_stats(&self) -> ExitStats {
        let mut s = self.stats.clone();
        for v in &self.vcpus {
            s.exits.add(v.exit_counters());
        }
        s
    }

    /// Sets the exit counters of the VM and of its vCPUs back to zero.
    pub fn reset_exit_stats(&mut self) {
        self.stats.reset();
        for v in &mut self.vcpus {
            v.reset_exit_counters();
        }
    }

    /// Puts a hypercall's result where the guest expects it (RAX) on vCPU
    /// `id`, after [`VmExit::Hypercall`].
    pub fn set_hypercall_result(&mut self, id: usize, value: u64) -> Result {
        self.vcpu_mut(id)?.set_return_value(value);
        Ok(())
    }

    /// Runs vCPU `id` on the current physical CPU until an exit the VM
    /// cannot settle, and returns it.
    ///
    /// A vCPU that is not bound is bound to the current CPU first (it stays
    /// bound; [`AxVCpu::unbind`] through [`vcpu_mut`](Self::vcpu_mut)
    /// before moving it). Settled here, in a loop:
    ///
    /// - port I/O: routed to the device set. A read no device claims gives
    ///   all ones of its width, a write no device claims is ignored; both
    ///   are logged (debug) and counted. After each write the debug-exit and
    ///   power-off devices are polled ([`VmExit::DebugExit`],
    ///   [`VmExit::PowerOff`]).
    /// - MSRs the vCPU hands up: routed to the device set. An unclaimed
    ///   `RDMSR` reads 0 and an unclaimed `WRMSR` is ignored, with a log
    ///   line (the vCPU owns the architectural MSRs such as EFER; this is
    ///   lenient where hardware would raise #GP).
    /// - nested page faults: on an MMIO device's page the instruction is
    ///   fetched through the guest's page tables, decoded, and emulated
    ///   against the device; on lazily allocated RAM the page is allocated;
    ///   anywhere else the guest touched memory it does not have
    ///   ([`VmExit::BadAccess`]). An MMIO instruction the decoder does not
    ///   handle gives [`VmExit::Unhandled`].
    /// - interrupt-window and "nothing" exits: run again.
    ///
    /// Exits that end the VM ([`VmExit::stops_vm`]) stop it. Errors are the
    /// hypervisor's own failures (a vCPU operation, host memory exhausted);
    /// they stop the VM too. A stopped VM gives [`Error::Stopped`].
    ///
    /// Hypercalls are returned ([`VmExit::Hypercall`]); see
    /// [`run_vcpu_with`](Self::run_vcpu_with) to answer them in the loop.
    pub fn run_vcpu(&mut self, id: usize) -> Result<VmExit> {
        self.run_vcpu_with(id, |_, _| None)
    }

    /// A handle for another CPU to get this VM's runner back: after
    /// [`Kicker::kick`], [`run_vcpu_with`](Self::run_vcpu_with) returns
    /// [`VmExit::ExternalInterrupt`] (vector 0) at the vCPU's next exit that
    /// it would otherwise settle itself, such as the one a host interrupt
    /// sent to that CPU causes.
    pub fn kicker(&self) -> Kicker {
        Kicker(self.kick.clone())
    }

    /// [`run_vcpu`](Self::run_vcpu), with the caller's hypercall handler
    /// in the loop: `hypercall(nr, args)` returning `Some(result)` puts
    /// `result` in the guest's RAX and runs the vCPU on without returning;
    /// `None` returns the hypercall as [`VmExit::Hypercall`] (for the calls
    /// that need more than the handler can do, such as managing this VM).
    pub fn run_vcpu_with(
        &mut self,
        id: usize,
        mut hypercall: impl FnMut(u64, &[u64; 6]) -> Option<u64>,
    ) -> Result<VmExit> {
        if let VmState::Stopped(reason) = &self.state {
            return Err(Error::Stopped {
                id: self.id,
                reason: format!("{reason}"),
            });
        }
        if id >= self.vcpus.len() {
            return Err(Error::NoSuchVCpu { id });
        }
        if !matches!(self.state, VmState::Running) {
            self.state = VmState::Running;
        }
        match self.run_loop(id, &mut hypercall) {
            Ok(exit) => {
                if exit.stops_vm() {
                    self.stop(StopReason::Guest(exit.clone()));
                }
                Ok(exit)
            }
            Err(e) => {
                self.stop(StopReason::Failed(e.clone()));
                Err(e)
            }
        }
    }

    fn run_loop(
        &mut self,
        id: usize,
        hypercall: &mut impl FnMut(u64, &[u64; 6]) -> Option<u64>,
    ) -> Result<VmExit> {
        if self.vcpus[id].state() == VCpuState::Free {
            self.vcpus[id].bind()?;
        }
        use AxVCpuExitReason as E;
        loop {
            if !self.lapics.is_empty() {
                self.lapic_before_entry(id)?;
            }
            // The exit is matched where it lies (no copies of the whole
            // enum); the frequent ones are settled right here.
            let result = self.vcpus[id].run();
            let exit = match result {
                Ok(ref exit) => exit,
                Err(e) => return Err(e.into()),
            };
            match *exit {
                // Settled by the vCPU (CPUID, EFER, ...): enter again at once.
                E::Nothing | E::InterruptWindow => {
                    // A host interrupt (or a settled exit) after another
                    // CPU kicked this VM: its runner gets control back.
                    if self.kick.load(Ordering::Relaxed) {
                        self.kick.store(false, Ordering::Relaxed);
                        return Ok(VmExit::ExternalInterrupt { vector: 0 });
                    }
                }
                E::IoWrite { port, width, data } => {
                    self.port_write(port, width, data);
                    if self.power_ports.iter().any(|r| r.contains(port))
                        && let Some(out) = self.poll_power_devices()
                    {
                        return Ok(out);
                    }
                }
                E::IoRead { port, width } => {
                    let value = self.port_read(port, width);
                    self.vcpus[id].set_io_result(width, value)?;
                }
                E::NestedPageFault { addr, access_flags } => {
                    if let Some(out) = self.nested_page_fault(id, addr, access_flags)? {
                        return Ok(out);
                    }
                }
                E::Hypercall { nr, args } => match hypercall(nr, &args) {
                    Some(value) => self.vcpus[id].set_return_value(value),
                    None => return Ok(VmExit::Hypercall { nr, args }),
                },
                _ => {
                    if let Some(out) = self.settle(id, *exit)? {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Linear address of vCPU `id`'s current instruction.
    fn rip(&self, id: usize) -> u64 {
        self.vcpus[id].arch_vcpu().guest_code_location().linear_rip
    }

    /// Settles `exit` of vCPU `id`, or says what to return.
    fn settle(&mut self, id: usize, exit: AxVCpuExitReason) -> Result<Option<VmExit>> {
        use AxVCpuExitReason as E;
        Ok(match exit {
            E::IoRead { port, width } => {
                let value = self.port_read(port, width);
                self.vcpus[id].set_io_result(width, value)?;
                None
            }
            E::IoWrite { port, width, data } => {
                self.port_write(port, width, data);
                if self.power_ports.iter().any(|r| r.contains(port)) {
                    self.poll_power_devices()
                } else {
                    None
                }
            }
            E::MsrRead { msr } => {
                let value = if self.lapic_msr(msr) {
                    self.lapic_msr_read(id, msr)
                } else {
                    self.msr_read(msr)
                };
                self.vcpus[id].set_msr_result(value)?;
                None
            }
            E::MsrWrite { msr, value } => {
                if self.lapic_msr(msr) {
                    self.lapic_msr_write(id, msr, value);
                } else {
                    self.msr_write(msr, value);
                }
                None
            }
            E::MmioRead { .. } | E::MmioWrite { .. } => self.complete_mmio(id, &exit, None)?,
            E::NestedPageFault { addr, access_flags } => {
                self.nested_page_fault(id, addr, access_flags)?
            }
            E::Hypercall { nr, args } => Some(VmExit::Hypercall { nr, args }),
            E::Halt => {
                if self.lapics.is_empty() || !self.lapic_wait(id) {
                    Some(VmExit::Halt)
                } else {
                    None
                }
            }
            E::ExternalInterrupt { vector } => Some(VmExit::ExternalInterrupt { vector }),
            E::InterruptWindow | E::Nothing => None,
            E::CpuUp {
                target_cpu,
                entry_point,
                arg,
            } => Some(VmExit::CpuUp {
                target_cpu,
                entry_point,
                arg,
            }),
            E::CpuDown { state } => Some(VmExit::CpuDown { state }),
            E::SystemDown => Some(VmExit::PowerOff),
            E::Shutdown => Some(VmExit::Shutdown),
            E::TripleFault => Some(VmExit::TripleFault { rip: self.rip(id) }),
            E::FailEntry {
                hardware_entry_failure_reason,
            } => Some(VmExit::FailEntry {
                hardware_entry_failure_reason,
            }),
            other => Some(VmExit::Unhandled {
                reason: format!("vCPU exit {} is not handled by the VM", other.name()),
                rip: self.rip(id),
            }),
        })
    }

    #[inline]
    fn port_read(&mut self, port: u16, width: AccessWidth) -> u64 {
        match self.devices.handle_port_read(port, width) {
            Ok(v) => v,
            Err(e) => self.port_read_failed(port, width, e),
        }
    }

    #[cold]
    #[inline(never)]
    fn port_read_failed(&mut self, port: u16, width: AccessWidth, e: axdevice::Error) -> u64 {
        match e {
            axdevice::Error::Unclaimed { .. } => {
                self.stats.unclaimed_port_reads += 1;
                log::debug!(
                    "VM {}: in from unclaimed port {port:#x} ({} bytes): all ones",
                    self.id,
                    width.size()
                );
                width.mask()
            }
            e => {
                self.stats.device_errors += 1;
                log::warn!("VM {}: in from port {port:#x}: {e}; all ones", self.id);
                width.mask()
            }
        }
    }

    #[inline]
    fn port_write(&mut self, port: u16, width: AccessWidth, data: u64) {
        if let Err(e) = self.devices.handle_port_write(port, width, data) {
            self.port_write_failed(port, width, data, e);
        }
    }

    #[cold]
    #[inline(never)]
    fn port_write_failed(&mut self, port: u16, width: AccessWidth, data: u64, e: axdevice::Error) {
        match e {
            axdevice::Error::Unclaimed { .. } => {
                self.stats.unclaimed_port_writes += 1;
                log::debug!(
                    "VM {}: out {data:#x} to unclaimed port {port:#x} ({} bytes): ignored",
                    self.id,
                    width.size()
                );
            }
            e => {
                self.stats.device_errors += 1;
                log::warn!("VM {}: out to port {port:#x}: {e}; ignored", self.id);
            }
        }
    }

    fn msr_read(&mut self, msr: u32) -> u64 {
        match self.devices.handle_msr_read(msr) {
            Ok(v) => v,
            Err(axdevice::Error::Unclaimed { .. }) => {
                self.stats.unclaimed_msr_reads += 1;
                log::debug!("VM {}: rdmsr of unhandled MSR {msr:#x}: 0", self.id);
                0
            }
            Err(e) => {
                self.stats.device_errors += 1;
                log::warn!("VM {}: rdmsr {msr:#x}: {e}; 0", self.id);
                0
            }
        }
    }

    fn msr_write(&mut self, msr: u32, value: u64) {
        match self.devices.handle_msr_write(msr, value) {
            Ok(()) => {}
            Err(axdevice::Error::Unclaimed { .. }) => {
                self.stats.unclaimed_msr_writes += 1;
                log::debug!(
                    "VM {}: wrmsr {value:#x} to unhandled MSR {msr:#x}: ignored",
                    self.id
                );
            }
            Err(e) => {
                self.stats.device_errors += 1;
                log::warn!("VM {}: wrmsr {msr:#x}: {e}; ignored", self.id);
            }
        }
    }

    /// A debug-exit or power-off request, if a device has one.
    fn poll_power_devices(&self) -> Option<VmExit> {
        for d in &self.debug_exits {
            if let Some(status) = d.take_exit_request() {
                return Some(VmExit::DebugExit {
                    code: status >> 1,
                    status,
                });
            }
        }
        for p in &self.power_offs {
            if let Some(sleep_type) = p.take_sleep_request() {
                log::info!(
                    "VM {}: ACPI sleep type {sleep_type} requested: power off",
                    self.id
                );
                return Some(VmExit::PowerOff);
            }
        }
        None
    }

    #[inline]
    fn nested_page_fault(
        &mut self,
        id: usize,
        gpa: GuestPhysAddr,
        access: MappingFlags,
    ) -> Result<Option<VmExit>> {
        if !access.contains(MappingFlags::EXECUTE)
            && let Some(dev) = self.devices.find_mmio_index(gpa)
        {
            return self.emulate_mmio(id, gpa, dev);
        }
        if !access.contains(MappingFlags::EXECUTE) && self.lapic_page(id, gpa) {
            return self.emulate_mmio(id, gpa, usize::MAX);
        }
        self.ram_page_fault(id, gpa, access)
    }

    /// A nested page fault that is not an MMIO access: lazily allocated
    /// RAM, a race with a mapping, or a bad access.
    #[inline(never)]
    fn ram_page_fault(
        &mut self,
        id: usize,
        gpa: GuestPhysAddr,
        access: MappingFlags,
    ) -> Result<Option<VmExit>> {
        if self.aspace.find_area(gpa).is_some() {
            if self.aspace.handle_page_fault(gpa, access)? {
                self.stats.lazy_page_faults += 1;
                return Ok(None);
            }
            // Mapped meanwhile with the rights the access needs: retry.
            let wanted =
                access & (MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE);
            if let Ok((_, flags, _)) = self.aspace.query(gpa) {
                if !wanted.is_empty() && flags.contains(wanted) {
                    self.stats.spurious_page_faults += 1;
                    return Ok(None);
                }
            }
        }
        Ok(Some(VmExit::BadAccess {
            gpa,
            rip: self.rip(id),
            access,
        }))
    }

    /// Fetches, decodes and emulates the instruction of vCPU `id` that
    /// touched device memory at `gpa`, of the device at position `dev` of
    /// the device set.
    #[inline]
    fn emulate_mmio(
        &mut self,
        id: usize,
        gpa: GuestPhysAddr,
        dev: usize,
    ) -> Result<Option<VmExit>> {
        let loc = self.vcpus[id].arch_vcpu().guest_code_location();
        let caches = &mut self.fetch[id];
        let mem = caches.pages.reader(&self.aspace);
        let (bytes, len) = match fetch_code_cached(&mem, &mut caches.walks, &loc) {
            Ok(b) => b,
            Err(e) => return Ok(Some(fetch_failed(gpa, loc.linear_rip, e))),
        };
        let decoded = self.vcpus[id]
            .arch_vcpu_mut()
            .decode_mmio(gpa, &bytes[..len]);
        match decoded {
            Ok(ref exit) => self.complete_mmio(id, exit, Some(dev)),
            Err(e @ x86_vcpu::Error::Decode(_)) => {
                self.emulate_mmio_rmw(id, gpa, dev, &bytes[..len], e, loc.linear_rip)
            }
            Err(e) => Ok(Some(decode_failed(gpa, loc.linear_rip, &bytes[..len], e))),
        }
    }

    /// Emulates an instruction that is not a move, such as `and qword
    /// [hpet + 0x100], -5`, as a read-modify-write (or compare) of the
    /// device register at `gpa`: reads it, lets the vCPU compute the result
    /// and flags and step RIP, writes the result back. If it is none of
    /// those either, the VM stops with `move_error` (why it is not a move).
    #[cold]
    #[inline(never)]
    fn emulate_mmio_rmw(
        &mut self,
        id: usize,
        gpa: GuestPhysAddr,
        dev: usize,
        insn: &[u8],
        move_error: x86_vcpu::Error,
        rip: u64,
    ) -> Result<Option<VmExit>> {
        let loc = self.vcpus[id].arch_vcpu().guest_code_location();
        let Ok(rmw) = decode_mmio_rmw(insn, loc.bitness) else {
            return Ok(Some(decode_failed(gpa, rip, insn, move_error)));
        };
        let old = self.mmio_read_value(id, gpa, dev, rmw.width);
        let mut write = None;
        let done = self.vcpus[id]
            .arch_vcpu_mut()
            .emulate_mmio_rmw(insn, &mut |_, value| {
                if value.is_some() {
                    write = value;
                }
                old
            });
        if let Err(e) = done {
            return Ok(Some(decode_failed(gpa, rip, insn, e)));
        }
        match write {
            Some(data) => {
                let exit = AxVCpuExitReason::MmioWrite {
                    addr: gpa,
                    width: rmw.width,
                    data,
                };
                self.complete_mmio(id, &exit, Some(dev))
            }
            None => Ok(None),
        }
    }

    /// The value of the device register (or xAPIC register when `dev` is
    /// `usize::MAX`) at `gpa`, read as an MMIO load would.
    fn mmio_read_value(
        &mut self,
        id: usize,
        gpa: GuestPhysAddr,
        dev: usize,
        width: AccessWidth,
    ) -> u64 {
        self.stats.mmio_reads += 1;
        if dev == usize::MAX && self.lapic_page(id, gpa) {
            let now = self.apic_now();
            let off = (gpa.as_usize() & 0xfff) as u32;
            return match self.lapic_mut(id).map(|a| a.read_xapic(off, width, now)) {
                Some(Ok(v)) => u64::from(v),
                _ => 0,
            };
        }
        match self.devices.handle_mmio_read_at(dev, gpa, width) {
            Ok(v) => v,
            Err(e) => self.mmio_read_failed(width, e),
        }
    }

    /// Emulates a decoded MMIO access against the device set; `dev` is the
    /// device's position if it is known (a hint: a wrong one costs a lookup).
    #[inline]
    fn complete_mmio(
        &mut self,
        id: usize,
        exit: &AxVCpuExitReason,
        dev: Option<usize>,
    ) -> Result<Option<VmExit>> {
        let hint = dev.unwrap_or(usize::MAX);
        if hint == usize::MAX && !self.lapics.is_empty() {
            if let Some(done) = self.lapic_mmio(id, exit)? {
                return Ok(done);
            }
        }
        match *exit {
            AxVCpuExitReason::MmioRead {
                addr,
                width,
                reg,
                reg_width,
                signed_ext,
            } => {
                self.stats.mmio_reads += 1;
                let value = match self.devices.handle_mmio_read_at(hint, addr, width) {
                    Ok(v) => v,
                    Err(e) => self.mmio_read_failed(width, e),
                };
                self.vcpus[id].set_mmio_read_result(reg, width, reg_width, signed_ext, value)?;
                Ok(None)
            }
            AxVCpuExitReason::MmioWrite { addr, width, data } => {
                self.stats.mmio_writes += 1;
                if let Err(e) = self.devices.handle_mmio_write_at(hint, addr, width, data) {
                    self.mmio_write_failed(e);
                }
                Ok(None)
            }
            ref other => Ok(Some(self.not_mmio(id, other))),
        }
    }

    /// The time the local APICs see now.
    fn apic_now(&self) -> ApicTime {
        match &self.clock {
            Some(c) => ApicTime {
                ns: c.now_ns(),
                tsc: c.tsc(),
            },
            None => ApicTime { ns: 0, tsc: 0 },
        }
    }

    /// The local APIC of vCPU `id` (the VM has them all or none).
    fn lapic_mut(&mut self, id: usize) -> Option<&mut VLocalApic> {
        self.lapics.get_mut(id)
    }

    /// Before entering vCPU `id`: fires its APIC timer if due, and hands
    /// the highest deliverable interrupt to the vCPU, which injects it when
    /// the guest can take it (interrupts on, no interrupt shadow) and asks
    /// for an interrupt-window exit otherwise.
    fn lapic_before_entry(&mut self, id: usize) -> Result {
        // The common case on the exit path: nothing requested and no timer
        // that could expire, so no clock read (a wake-up asked for before
        // is cancelled once).
        if self.lapics.get(id).is_some_and(|a| a.is_quiet()) {
            if self.wakeups.get(id).is_some_and(|w| w.is_some()) {
                let now = self.apic_now();
                self.set_wakeup(id, None, now);
            }
            return Ok(());
        }
        let now = self.apic_now();
        let Some(apic) = self.lapics.get_mut(id) else {
            return Ok(());
        };
        apic.poll_timer(now);
        let deadline = apic.next_deadline();
        if let Some(vector) = apic.highest_pending() {
            // The APIC accepts the interrupt (IRR to ISR) only when the
            // guest takes it at this entry; else it waits in IRR and the
            // vCPU exits once the guest can take one.
            let vcpu = self.vcpus[id].arch_vcpu_mut();
            if vcpu.ready_for_interrupt() {
                if apic.ack(vector) {
                    self.vcpus[id].inject_interrupt(vector)?;
                }
            } else {
                vcpu.request_interrupt_window()
                    .map_err(axvcpu::Error::from)?;
            }
        }
        self.set_wakeup(id, deadline, now);
        Ok(())
    }

    /// Asks the clock for a wake-up at the next timer `deadline` of vCPU
    /// `id` (when it changed), so that a guest that spins without exits
    /// gets its timer interrupt on time. A TSC deadline becomes a wake-up
    /// within [`TSC_DEADLINE_POLL_NS`], as the clock's TSC rate is unknown
    /// here.
    #[inline]
    fn set_wakeup(&mut self, id: usize, deadline: Option<TimerDeadline>, now: ApicTime) {
        let Some(clock) = self.clock.as_ref() else {
            return;
        };
        let Some(slot) = self.wakeups.get_mut(id) else {
            return;
        };
        let at = match deadline {
            None => None,
            Some(TimerDeadline::Ns(t)) => Some(t),
            Some(TimerDeadline::Tsc(t)) if t <= now.tsc => Some(now.ns),
            // The poll asked for before is still ahead: keep it.
            Some(TimerDeadline::Tsc(_)) => match *slot {
                Some(prev) if prev > now.ns => Some(prev),
                _ => Some(now.ns.saturating_add(TSC_DEADLINE_POLL_NS)),
            },
        };
        if *slot != at {
            *slot = at;
            clock.set_wakeup(at);
        }
    }

    /// vCPU `id` halted: waits for its APIC timer if one is armed and says
    /// whether the vCPU should run on (`false`: nothing can wake it).
    fn lapic_wait(&mut self, id: usize) -> bool {
        let Some(apic) = self.lapics.get(id) else {
            return false;
        };
        // Halted with interrupts off: no interrupt can wake it (and no
        // virtual device sends NMIs), whatever the APIC holds.
        if !self.vcpus[id].arch_vcpu().interrupts_enabled() {
            return false;
        }
        if apic.highest_pending().is_some() {
            return true;
        }
        let Some(deadline) = apic.next_deadline() else {
            return false;
        };
        let Some(clock) = self.clock.as_ref() else {
            return false;
        };
        match deadline {
            TimerDeadline::Ns(t) => {
                while clock.now_ns() < t {
                    core::hint::spin_loop();
                }
            }
            TimerDeadline::Tsc(t) => {
                while clock.tsc() < t {
                    core::hint::spin_loop();
                }
            }
        }
        true
    }

    /// Whether `gpa` lies in the xAPIC page of vCPU `id`'s local APIC. In
    /// x2APIC mode (or disabled) the page stays claimed but the APIC does
    /// not answer (SDM 11.12.1.2): reads give 0, writes are dropped.
    fn lapic_page(&self, id: usize, gpa: GuestPhysAddr) -> bool {
        self.lapics
            .get(id)
            .is_some_and(|a| gpa.as_usize() & !0xfff == a.apic_base().base_address() as usize)
    }

    /// Completes an MMIO exit on the xAPIC page, or `None` if `exit` is
    /// not one.
    fn lapic_mmio(&mut self, id: usize, exit: &AxVCpuExitReason) -> Result<Option<Option<VmExit>>> {
        let now = self.apic_now();
        match *exit {
            AxVCpuExitReason::MmioRead {
                addr,
                width,
                reg,
                reg_width,
                signed_ext,
            } if self.lapic_page(id, addr) => {
                self.stats.mmio_reads += 1;
                let off = (addr.as_usize() & 0xfff) as u32;
                let value = match self.lapic_mut(id).map(|a| a.read_xapic(off, width, now)) {
                    Some(Ok(v)) => u64::from(v),
                    Some(Err(e)) => {
                        log::debug!("VM {}: xAPIC read {off:#x}: {e}; 0", self.id);
                        0
                    }
                    None => 0,
                };
                self.vcpus[id].set_mmio_read_result(reg, width, reg_width, signed_ext, value)?;
                Ok(Some(None))
            }
            AxVCpuExitReason::MmioWrite { addr, width, data } if self.lapic_page(id, addr) => {
                self.stats.mmio_writes += 1;
                let off = (addr.as_usize() & 0xfff) as u32;
                let vm = self.id;
                match self
                    .lapic_mut(id)
                    .map(|a| a.write_xapic(off, width, data as u32, now))
                {
                    Some(Ok(Some(ApicEvent::Ipi(req)))) => self.deliver_ipi(id, &req),
                    Some(Err(e)) => {
                        log::debug!("VM {vm}: xAPIC write {data:#x} to {off:#x}: {e}; ignored");
                    }
                    _ => {}
                }
                Ok(Some(None))
            }
            _ => Ok(None),
        }
    }

    /// Whether `msr` belongs to the local APICs (`IA32_APIC_BASE`, the
    /// TSC deadline, the x2APIC range).
    fn lapic_msr(&self, msr: u32) -> bool {
        !self.lapics.is_empty() && VLocalApic::handles_msr(msr)
    }

    fn lapic_msr_read(&mut self, id: usize, msr: u32) -> u64 {
        let now = self.apic_now();
        let vm = self.id;
        match self.lapic_mut(id).map(|a| a.read_msr(msr, now)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                // Not done: #GP(0) into the guest, as hardware does.
                log::warn!("VM {vm}: rdmsr {msr:#x} (local APIC): {e}; 0");
                0
            }
            None => 0,
        }
    }

    fn lapic_msr_write(&mut self, id: usize, msr: u32, value: u64) {
        let now = self.apic_now();
        let vm = self.id;
        match self.lapic_mut(id).map(|a| a.write_msr(msr, value, now)) {
            Some(Ok(Some(ApicEvent::Ipi(req)))) => self.deliver_ipi(id, &req),
            Some(Err(e)) => {
                // Not done: #GP(0) into the guest, as hardware does.
                log::warn!("VM {vm}: wrmsr {value:#x} to {msr:#x} (local APIC): {e}; ignored");
            }
            _ => {}
        }
    }

    /// Delivers an IPI vCPU `from` sent: a fixed interrupt is accepted by
    /// every destination local APIC (taken when that vCPU next enters).
    /// Not done: lowest priority, NMI, INIT and STARTUP (logged, dropped).
    fn deliver_ipi(&mut self, from: usize, req: &IpiRequest) {
        if req.delivery_mode != DeliveryMode::Fixed {
            log::warn!(
                "VM {}: vCPU {from} IPI {:?} vector {:#x}: delivery mode not emulated; dropped",
                self.id,
                req.delivery_mode,
                req.vector
            );
            return;
        }
        for (i, apic) in self.lapics.iter_mut().enumerate() {
            if apic.is_destination(req, i == from) {
                apic.accept_interrupt(req.vector);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn mmio_read_failed(&mut self, width: AccessWidth, e: axdevice::Error) -> u64 {
        self.stats.device_errors += 1;
        log::warn!("VM {}: MMIO read: {e}; all ones", self.id);
        width.mask()
    }

    #[cold]
    #[inline(never)]
    fn mmio_write_failed(&mut self, e: axdevice::Error) {
        self.stats.device_errors += 1;
        log::warn!("VM {}: MMIO write: {e}; ignored", self.id);
    }

    #[cold]
    #[inline(never)]
    fn not_mmio(&self, id: usize, exit: &AxVCpuExitReason) -> VmExit {
        VmExit::Unhandled {
            reason: format!("MMIO decode gave exit {}", exit.name()),
            rip: self.rip(id),
        }
    }
}

/// How soon the host wakes a guest whose local APIC timer is in
/// TSC-deadline mode (the deadline in nanoseconds is not known here).
pub const TSC_DEADLINE_POLL_NS: u64 = 1_000_000;

/// The exit for an MMIO access whose instruction could not be fetched.
#[cold]
fn fetch_failed(gpa: GuestPhysAddr, rip: u64, e: axaddrspace::Error) -> VmExit {
    VmExit::Unhandled {
        reason: format!(
            "MMIO access to {:#x}: cannot fetch the instruction: {e}",
            gpa.as_usize()
        ),
        rip,
    }
}

/// The exit for an MMIO access whose instruction could not be decoded.
#[cold]
fn decode_failed(gpa: GuestPhysAddr, rip: u64, bytes: &[u8], e: x86_vcpu::Error) -> VmExit {
    VmExit::Unhandled {
        reason: format!(
            "MMIO access to {:#x} by instruction {bytes:02x?}: {e}",
            gpa.as_usize()
        ),
        rip,
    }
}

impl<V, H> core::fmt::Debug for Vm<V, H>
where
    V: AxArchVCpu<SetupConfig = X86VcpuSetupConfig> + X86VcpuExt,
    H: AxMmHal,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("state", &self.state)
            .field("vcpus", &self.vcpus.len())
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

/// Makes a running VM's run loop return to its caller (see
/// [`Vm::kicker`]).
#[derive(Debug, Clone)]
pub struct Kicker(Arc<AtomicBool>);

impl Kicker {
    /// Asks the run loop to return at the vCPU's next exit.
    pub fn kick(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
