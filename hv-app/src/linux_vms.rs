//! Type-1.5: the VM table behind the root VM's hypercalls, and the CPUs
//! Linux gives up for guest VMs.
//!
//! A guest VM beside Linux gets a physical CPU that Linux offlined:
//!
//! 1. the `axhv` module calls [`HC_CPU_OFFER`](hv_app::hypercall::HC_CPU_OFFER)
//!    on that CPU ([`CpuState::Offered`]: its root vCPU now intercepts
//!    `HLT`), then offlines it with `remove_cpu()`;
//! 2. Linux's dead CPU executes `HLT` with interrupts off: the hypervisor
//!    keeps the CPU ([`park`], [`CpuState::Parked`]);
//! 3. [`HC_VM_START`](hv_app::hypercall::HC_VM_START) names the VM and the
//!    CPU: the parked CPU runs the VM until it ends or is stopped;
//! 4. then the CPU leaves SVM and halts in its reset-ready state
//!    ([`CpuState::Reset`]): Linux's `add_cpu()` (INIT, SIPI) starts it
//!    again, and the module enters the hypervisor on it again, as at
//!    enable. [`HC_VM_DESTROY`](hv_app::hypercall::HC_VM_DESTROY) frees
//!    the VM's memory (back to the pool) and waits for its CPU to reach
//!    that state.
//!
//! The guest's console goes to a ring per VM that
//! [`HC_VM_CONSOLE_READ`](hv_app::hypercall::HC_VM_CONSOLE_READ) drains
//! (`hvctl vm console ID`), not to COM1, which Linux uses as its console.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use axdevice::UartBackend;
use axvmconfig::VmConfig;
use hv_app::guest_console::{VmConsole, VmLine};
use hv_app::hypercall::{
    self, Buffer, Caller, Errno, GuestRange, NO_CPU, VM_CREATED, VM_ENDED, VM_RUNNING, VmControl,
    VmListEntry,
};
use spin::Mutex;
use x86_vcpu::X86VcpuCreateConfig;

use crate::vmm::{self, HvVm, Virt};

/// CPUs the Linux entry supports.
pub const MAX_CPUS: usize = 8;

/// Where a CPU is, as the hypervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CpuState {
    /// Not in the hypervisor (never entered, or Linux's and native).
    Absent = 0,
    /// Running Linux as a root vCPU.
    Root = 1,
    /// Offered for a guest VM: waiting for Linux to park it.
    Offered = 2,
    /// The hypervisor's: waiting for a VM to run.
    Parked = 3,
    /// Running a guest VM.
    Running = 4,
    /// Out of SVM, halted with interrupts off, ready for Linux's INIT/SIPI.
    Reset = 5,
}

impl CpuState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Root,
            2 => Self::Offered,
            3 => Self::Parked,
            4 => Self::Running,
            5 => Self::Reset,
            _ => Self::Absent,
        }
    }
}

static CPU_STATE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
/// Per CPU: the VM id to run, or [`RELEASE`].
static MAILBOX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Per CPU: its local APIC id (for the wake-up IPI).
static APIC_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
const RELEASE: u32 = u32::MAX;
/// The vector of the IPI that makes a CPU leave its guest (never taken:
/// the CPU runs with interrupts off and INIT clears it).
const WAKE_VECTOR: u32 = 0xef;

/// The hypervisor's region `(base, size)`: the root VM may not point into
/// it.
static REGION: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The state of CPU `cpu`.
pub fn cpu_state(cpu: usize) -> CpuState {
    CPU_STATE.get(cpu).map_or(CpuState::Absent, |s| {
        CpuState::from_u8(s.load(Ordering::Acquire))
    })
}

/// Sets the state of CPU `cpu`.
pub fn set_cpu_state(cpu: usize, state: CpuState) {
    if let Some(s) = CPU_STATE.get(cpu) {
        s.store(state as u8, Ordering::Release);
    }
}

/// Records the local APIC id of CPU `cpu` (the calling CPU).
pub fn set_apic_id(cpu: usize, id: u32) {
    if let Some(s) = APIC_ID.get(cpu) {
        s.store(id, Ordering::Relaxed);
    }
}

/// One VM of the table.
struct Slot {
    id: u32,
    name: String,
    /// `None` while its CPU runs it.
    vm: Option<Box<HvVm>>,
    console: Arc<VmConsole<fn(VmLine<'_>)>>,
    cpu: Option<u32>,
    state: u32,
    stop: Arc<AtomicBool>,
    /// Gets the runner of the VM back from its exit loop.
    kicker: axvm::Kicker,
}

static TABLE: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
/// The console bytes not read yet, per VM id.
static RINGS: Mutex<Vec<(u32, VecDeque<u8>)>> = Mutex::new(Vec::new());
/// Bytes a console ring keeps (the oldest go first).
const RING_SIZE: usize = 64 << 10;
/// The console input not read yet by the guest, per VM id.
static INPUT: Mutex<Vec<(u32, VecDeque<u8>)>> = Mutex::new(Vec::new());
/// Per local APIC id (low 8 bits): the VM its CPU runs (0: none).
static RUNNING_VM: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];

/// The next byte of console input for the VM that runs on the calling CPU
/// (a guest polling its UART asks for it).
pub fn input_byte() -> Option<u8> {
    let apic = (core::arch::x86_64::__cpuid(1).ebx >> 24) as usize;
    let id = RUNNING_VM[apic].load(Ordering::Relaxed);
    if id == 0 {
        return None;
    }
    let mut input = INPUT.lock();
    input.iter_mut().find(|(i, _)| *i == id)?.1.pop_front()
}
static VIRT: spin::Once<Virt> = spin::Once::new();

/// The Type-1.5 part of `hv_main`, on the first CPU to enter: checks the
/// virtualization extension and measures the TSC (for the VMs' clocks).
pub fn init(region: u64, size: u64) -> Result<(), &'static str> {
    REGION[0].store(region, Ordering::Relaxed);
    REGION[1].store(size, Ordering::Relaxed);
    let virt = vmm::check_virtualization().ok_or("no usable virtualization extension")?;
    VIRT.call_once(|| virt);
    let hz = crate::tsc::tsc_hz();
    println!("axhv: TSC {} MHz; VM table ready", hz / 1_000_000);
    Ok(())
}

fn ring_push(id: u32, bytes: &[u8]) {
    let mut rings = RINGS.lock();
    let ring = match rings.iter().position(|(i, _)| *i == id) {
        Some(p) => &mut rings[p].1,
        None => {
            rings.push((id, VecDeque::new()));
            &mut rings.last_mut().expect("just pushed").1
        }
    };
    for &b in bytes {
        if ring.len() == RING_SIZE {
            ring.pop_front();
        }
        ring.push_back(b);
    }
}

fn ring_line(line: VmLine<'_>) {
    // A prompt (partial line) goes without its end of line.
    let text = alloc::format!("{}", line.terminated());
    ring_push(line.vm_id as u32, text.as_bytes());
}

/// Microseconds since boot, from the TSC.
fn now_us() -> u64 {
    crate::tsc::rdtsc() / (crate::tsc::tsc_hz() / 1_000_000).max(1)
}

/// Polls `done` for up to `ms` milliseconds.
fn wait_for(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = now_us() + ms * 1000;
    loop {
        if done() {
            return true;
        }
        if now_us() > end {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// The root VM's memory for hypercall buffers: everything below 512 GiB
/// (what the root VM's nested page table maps) but the hypervisor's region.
fn root_memory() -> [GuestRange; 2] {
    let base = REGION[0].load(Ordering::Relaxed);
    let end = base + REGION[1].load(Ordering::Relaxed);
    [
        GuestRange { gpa: 0, size: base },
        GuestRange {
            gpa: end,
            size: (1u64 << 39).saturating_sub(end),
        },
    ]
}

/// Answers hypercall `nr` of the root VM on CPU `cpu`.
pub fn hypercall(cpu: usize, nr: u64, args: &[u64; 6]) -> u64 {
    let memory = root_memory();
    let caller = Caller {
        is_root: true,
        memory: &memory,
    };
    hypercall::handle_root_call(&caller, nr, args, &mut Table { cpu })
}

/// Bytes of the root VM at `buf` (checked to lie in its memory, which is
/// identity mapped in the hypervisor's page table: root GPA = HPA).
fn root_bytes(buf: Buffer) -> &'static [u8] {
    // SAFETY: `Request::check` put the buffer inside the root VM's RAM
    // below 512 GiB, outside the hypervisor's region; the hypervisor's
    // page table maps that 1:1. The root VM's kernel (the module) keeps
    // the buffer alive for the call, and the calling CPU is in the
    // hypervisor until it returns.
    unsafe { core::slice::from_raw_parts(buf.gpa as *const u8, buf.len as usize) }
}

fn root_write(buf: Buffer, bytes: &[u8]) {
    let n = bytes.len().min(buf.len as usize);
    // SAFETY: as in `root_bytes`, for a buffer the module handed over to be
    // written.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.gpa as *mut u8, n) };
}

/// The VM table, as seen from the root VM's calling CPU.
struct Table {
    cpu: usize,
}

impl VmControl for Table {
    fn create(&mut self, config: Buffer, image: Buffer) -> Result<u32, Errno> {
        let virt = *VIRT.get().ok_or(Errno::NoSys)?;
        let mut cfg = VmConfig::from_bytes(root_bytes(config)).map_err(|e| {
            println!("axhv: vm create: bad configuration: {e}");
            Errno::NoExec
        })?;
        let id = {
            let t = TABLE.lock();
            (1u32..).find(|i| t.iter().all(|s| s.id != *i)).unwrap_or(1)
        };
        cfg.id = id as usize;
        let console: Arc<VmConsole<fn(VmLine<'_>)>> = Arc::new(
            VmConsole::new(id as usize, ring_line as fn(VmLine<'_>)).with_input(input_byte),
        );
        let backend: Arc<dyn UartBackend> = console.clone();
        // ASID 1 is the root VM's.
        let tag = u16::try_from(1 + id % virt.tags.saturating_sub(1).max(1)).unwrap_or(2);
        let (free_before, _) = crate::mem::frame_counts();
        let has_lapic = vmm::has_local_apic(&cfg);
        let vm = HvVm::new_with_clock(
            &cfg,
            root_bytes(image),
            virt.nested,
            |vcpu| {
                let mut c = X86VcpuCreateConfig::new(vcpu, tag);
                c.cpuid.tsc_khz = u32::try_from(crate::tsc::tsc_hz() / 1000).unwrap_or(u32::MAX);
                // x2APIC and the TSC deadline only with a local APIC behind them.
                c.cpuid = c.cpuid.with_local_apic(has_lapic);
                c
            },
            backend,
            Some(crate::tsc::vm_clock()),
        )
        .map_err(|e| {
            println!("axhv: vm create ({}): {e}", cfg.name);
            let (free, _) = crate::mem::frame_counts();
            if free < 64 {
                Errno::NoMem
            } else {
                Errno::NoExec
            }
        })?;
        let (free_after, _) = crate::mem::frame_counts();
        println!(
            "axhv: VM {id} ({}) created: {} KiB from the pool",
            cfg.name,
            free_before.saturating_sub(free_after) * 4
        );
        RINGS.lock().retain(|(i, _)| *i != id);
        let kicker = vm.kicker();
        TABLE.lock().push(Slot {
            id,
            name: cfg.name.clone(),
            kicker,
            vm: Some(Box::new(vm)),
            console,
            cpu: None,
            state: VM_CREATED,
            stop: Arc::new(AtomicBool::new(false)),
        });
        Ok(id)
    }

    fn start(&mut self, id: u32, cpu: u32) -> Result<(), Errno> {
        let c = cpu as usize;
        if c >= MAX_CPUS || c == self.cpu {
            return Err(Errno::Inval);
        }
        // Linux reports the CPU dead just before its last HLT.
        wait_for(1000, || cpu_state(c) != CpuState::Offered);
        if cpu_state(c) != CpuState::Parked {
            println!("axhv: vm start {id}: CPU {cpu} was not given up by Linux");
            return Err(Errno::Busy);
        }
        let mut t = TABLE.lock();
        let slot = t.iter_mut().find(|s| s.id == id).ok_or(Errno::NoEnt)?;
        if slot.state != VM_CREATED {
            return Err(Errno::Busy);
        }
        slot.state = VM_RUNNING;
        slot.cpu = Some(cpu);
        MAILBOX[c].store(id, Ordering::Release);
        Ok(())
    }

    fn stop(&mut self, id: u32) -> Result<(), Errno> {
        let t = TABLE.lock();
        let slot = t.iter().find(|s| s.id == id).ok_or(Errno::NoEnt)?;
        slot.stop.store(true, Ordering::Release);
        if let Some(cpu) = slot.cpu {
            slot.kicker.kick();
            wake(cpu as usize);
        }
        Ok(())
    }

    fn destroy(&mut self, id: u32) -> Result<u64, Errno> {
        let cpu = {
            let t = TABLE.lock();
            let slot = t.iter().find(|s| s.id == id).ok_or(Errno::NoEnt)?;
            slot.stop.store(true, Ordering::Release);
            slot.kicker.kick();
            slot.cpu
        };
        if let Some(cpu) = cpu {
            let c = cpu as usize;
            wake(c);
            let ended = wait_for(3000, || {
                TABLE
                    .lock()
                    .iter()
                    .find(|s| s.id == id)
                    .is_some_and(|s| s.state == VM_ENDED)
            });
            if !ended || !wait_for(1000, || cpu_state(c) == CpuState::Reset) {
                println!("axhv: vm destroy {id}: CPU {cpu} did not leave the VM");
                return Err(Errno::Busy);
            }
        }
        let slot = {
            let mut t = TABLE.lock();
            let i = t.iter().position(|s| s.id == id).ok_or(Errno::NoEnt)?;
            t.remove(i)
        };
        let (before, _) = crate::mem::frame_counts();
        drop(slot);
        let (after, _) = crate::mem::frame_counts();
        RINGS.lock().retain(|(i, _)| *i != id);
        INPUT.lock().retain(|(i, _)| *i != id);
        println!(
            "axhv: VM {id} destroyed: {} KiB back to the pool{}",
            after.saturating_sub(before) * 4,
            match cpu {
                Some(c) => alloc::format!(", CPU {c} back to Linux"),
                None => String::new(),
            }
        );
        Ok(cpu.map_or(NO_CPU, u64::from))
    }

    fn list(&mut self, buf: Buffer) -> Result<u64, Errno> {
        let t = TABLE.lock();
        let mut bytes = Vec::new();
        for s in t.iter() {
            let e = VmListEntry {
                id: s.id,
                state: s.state,
                cpus: s.cpu.map_or(0, |c| 1u64 << c),
            };
            bytes.extend_from_slice(&e.to_bytes());
        }
        let fit = (buf.len / VmListEntry::SIZE * VmListEntry::SIZE) as usize;
        root_write(buf, &bytes[..bytes.len().min(fit)]);
        Ok(t.len() as u64)
    }

    fn console_read(&mut self, id: u32, buf: Buffer) -> Result<u64, Errno> {
        let known = TABLE.lock().iter().any(|s| s.id == id);
        let mut rings = RINGS.lock();
        let Some((_, ring)) = rings.iter_mut().find(|(i, _)| *i == id) else {
            return if known { Ok(0) } else { Err(Errno::NoEnt) };
        };
        let n = ring.len().min(buf.len as usize);
        let out: Vec<u8> = ring.drain(..n).collect();
        root_write(buf, &out);
        Ok(n as u64)
    }

    fn console_write(&mut self, id: u32, buf: Buffer) -> Result<u64, Errno> {
        if !TABLE.lock().iter().any(|s| s.id == id) {
            return Err(Errno::NoEnt);
        }
        let bytes = root_bytes(buf);
        let mut input = INPUT.lock();
        let queue = match input.iter().position(|(i, _)| *i == id) {
            Some(p) => &mut input[p].1,
            None => {
                input.push((id, VecDeque::new()));
                &mut input.last_mut().expect("just pushed").1
            }
        };
        let room = (hypercall::MAX_CONSOLE_INPUT as usize).saturating_sub(queue.len());
        let n = bytes.len().min(room);
        queue.extend(&bytes[..n]);
        Ok(n as u64)
    }

    fn cpu_offer(&mut self) -> Result<(), Errno> {
        if cpu_state(self.cpu) != CpuState::Root {
            return Err(Errno::Busy);
        }
        MAILBOX[self.cpu].store(0, Ordering::Release);
        set_cpu_state(self.cpu, CpuState::Offered);
        Ok(())
    }

    fn cpu_release(&mut self, cpu: u32) -> Result<(), Errno> {
        let c = cpu as usize;
        if c >= MAX_CPUS || c == self.cpu {
            return Err(Errno::Inval);
        }
        wait_for(1000, || cpu_state(c) != CpuState::Offered);
        match cpu_state(c) {
            CpuState::Reset => return Ok(()),
            CpuState::Parked => MAILBOX[c].store(RELEASE, Ordering::Release),
            _ => return Err(Errno::Busy),
        }
        if wait_for(1000, || cpu_state(c) == CpuState::Reset) {
            Ok(())
        } else {
            Err(Errno::Busy)
        }
    }
}

/// Sends CPU `cpu` a fixed IPI, so that a guest running there exits (its
/// VMCB intercepts physical interrupts) and, the VM kicked, its runner sees
/// the stop request.
fn wake(cpu: usize) {
    if cpu_state(cpu) != CpuState::Running {
        return;
    }
    let apic_id = APIC_ID[cpu].load(Ordering::Relaxed);
    crate::linux_entry::send_ipi(apic_id, WAKE_VECTOR);
}

/// CPU `cpu`, given up by Linux (its root vCPU halted with interrupts off
/// after [`HC_CPU_OFFER`](hv_app::hypercall::HC_CPU_OFFER)), waits for a
/// VM, runs it to its end, then waits for Linux to start the CPU again.
pub fn park(cpu: usize) -> ! {
    crate::linux_entry::enable_local_apic();
    set_cpu_state(cpu, CpuState::Parked);
    loop {
        match MAILBOX[cpu].swap(0, Ordering::AcqRel) {
            0 => core::hint::spin_loop(),
            RELEASE => break,
            id => {
                run_here(cpu, id);
                break;
            }
        }
    }
    crate::linux_entry::wait_for_init(cpu)
}

/// Runs VM `id` on this CPU (`cpu`) until it ends or is stopped.
fn run_here(cpu: usize, id: u32) {
    let taken = {
        let mut t = TABLE.lock();
        t.iter_mut().find(|s| s.id == id).and_then(|s| {
            Some((
                s.vm.take()?,
                s.stop.clone(),
                s.console.clone(),
                s.name.clone(),
            ))
        })
    };
    let Some((mut vm, stop, console, name)) = taken else {
        return;
    };
    set_cpu_state(cpu, CpuState::Running);
    let apic = (APIC_ID[cpu].load(Ordering::Relaxed) & 0xff) as usize;
    RUNNING_VM[apic].store(id, Ordering::Relaxed);
    let line = match vmm::enable_virtualization(cpu) {
        Some(mut per_cpu) => {
            println!("axhv: VM {id} ({name}) runs on CPU {cpu}");
            crate::linux_entry::host_interrupts_on();
            if let Err(e) = crate::host_timer::start_on_guest_cpu() {
                println!("axhv: VM {id}: {e}: a guest spinning without exits misses its timer");
            }
            let end = vmm::run_until(&mut vm, &|| stop.load(Ordering::Acquire));
            crate::host_timer::stop();
            crate::linux_entry::host_interrupts_off();
            console.finish();
            use axvcpu::AxArchPerCpu;
            let _ = per_cpu.hardware_disable();
            if end.is_exit() {
                alloc::format!("VM {id} ({name}) {end}")
            } else {
                alloc::format!("VM {id} {end}")
            }
        }
        None => alloc::format!("VM {id} could not run: virtualization unusable on CPU {cpu}"),
    };
    RUNNING_VM[apic].store(0, Ordering::Relaxed);
    println!("axhv: {line}");
    ring_push(id, alloc::format!("{line}\n").as_bytes());
    let mut t = TABLE.lock();
    if let Some(s) = t.iter_mut().find(|s| s.id == id) {
        s.vm = Some(vm);
        s.state = VM_ENDED;
    }
}
