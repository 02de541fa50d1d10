//! The hypercall ABI of axhv: what a guest's `VMMCALL` (AMD) or `VMCALL`
//! (Intel) asks, and what it gets back.
//!
//! Registers (as `x86_vcpu` decodes them): the number in RAX, up to six
//! arguments in RDI, RSI, RDX, R10, R8, R9; the result comes back in RAX.
//! A negative result (as `i64`) is a Linux error number, negated ([`Errno`]).
//!
//! ABI 1.0 (the table is also in the workspace README):
//!
//! | nr | name | arguments | result |
//! |---|---|---|---|
//! | `0x00` | [`HC_VERSION`] | - | [`ABI_VERSION`] = `0x0001_0000` (`major << 16 \| minor`) |
//! | `0x01` | [`HC_STATE`] | - | [`STATE_ENABLED`] \| [`STATE_ROOT_VM`] (if the caller is the root VM) |
//! | `0x02` | [`HC_DISABLE`] | - | 0; root VM only |
//! | `0x10` | [`HC_VM_CREATE`] | config GPA, config len, image GPA, image len | new VM id; root VM only |
//! | `0x11` | [`HC_VM_START`] | VM id, physical CPU (one given with [`HC_CPU_OFFER`]) | 0; root VM only |
//! | `0x12` | [`HC_VM_STOP`] | VM id | 0; root VM only |
//! | `0x13` | [`HC_VM_DESTROY`] | VM id | the physical CPU the VM held, or [`NO_CPU`]; root VM only |
//! | `0x14` | [`HC_VM_LIST`] | buffer GPA, buffer len | number of VMs; [`VmListEntry`]s written |
//! | `0x15` | [`HC_VM_CONSOLE_READ`] | VM id, buffer GPA, buffer len | bytes copied from the VM's console ring |
//! | `0x16` | [`HC_VM_CONSOLE_WRITE`] | VM id, buffer GPA, buffer len | bytes queued as the VM's console input |
//! | `0x20` | [`HC_CPU_OFFER`] | - | 0: the calling CPU becomes the hypervisor's once the root VM parks it (Linux offlines it); root VM only |
//! | `0x21` | [`HC_CPU_RELEASE`] | physical CPU | 0: an offered CPU that holds no VM goes back to its reset state, for the root VM to start again; root VM only |
//! | any other | | | `-ENOSYS` (`-38`) |
//!
//! Every argument is checked before anything is done ([`decode`],
//! [`Request::check`]): buffers must lie inside one region of the caller's
//! memory ([`check_buffer`], else `-EFAULT`), sizes are bounded
//! ([`MAX_CONFIG_SIZE`], [`MAX_IMAGE_SIZE`], [`MAX_BUFFER_SIZE`], else
//! `-E2BIG`), zero lengths and VM id 0 are `-EINVAL`, and only the root VM
//! (Linux in Type-1.5) may manage VMs (`-EPERM`). What is left after these
//! checks goes to the hypervisor's VM table through [`VmControl`]
//! ([`handle_root_call`]); where there is none (Type-1 guests, which are
//! not root) the management calls cannot be made.

/// Hypercall `0x00`: the ABI version.
pub const HC_VERSION: u64 = 0x00;
/// Hypercall `0x01`: the enable state ([`STATE_ENABLED`], [`STATE_ROOT_VM`]).
pub const HC_STATE: u64 = 0x01;
/// Hypercall `0x02`: disable the hypervisor (return every CPU to native).
pub const HC_DISABLE: u64 = 0x02;
/// Hypercall `0x10`: create a VM from a binary `axvmconfig` configuration
/// and a kernel image, both placed in the caller's memory.
pub const HC_VM_CREATE: u64 = 0x10;
/// Hypercall `0x11`: start a created VM.
pub const HC_VM_START: u64 = 0x11;
/// Hypercall `0x12`: stop a running VM.
pub const HC_VM_STOP: u64 = 0x12;
/// Hypercall `0x13`: destroy a VM, returning its CPUs and memory.
pub const HC_VM_DESTROY: u64 = 0x13;
/// Hypercall `0x14`: list the VMs into a caller buffer of [`VmListEntry`].
pub const HC_VM_LIST: u64 = 0x14;
/// Hypercall `0x15`: read (and consume) a VM's console ring into a buffer.
pub const HC_VM_CONSOLE_READ: u64 = 0x15;

/// Hypercall `0x16`: queue bytes from a caller buffer as a VM's console
/// input (what the guest reads from its UART).
pub const HC_VM_CONSOLE_WRITE: u64 = 0x16;
/// The most console input one VM holds unread ([`HC_VM_CONSOLE_WRITE`]).
pub const MAX_CONSOLE_INPUT: u64 = 4096;

/// Hypercall `0x20`: the calling CPU of the root VM is offered to the
/// hypervisor; it takes it when the root VM parks it (Linux's CPU hotplug
/// offlines it: `HLT` with interrupts off).
pub const HC_CPU_OFFER: u64 = 0x20;
/// Hypercall `0x21`: give back an offered CPU that holds no VM.
pub const HC_CPU_RELEASE: u64 = 0x21;
/// [`HC_VM_DESTROY`]'s result when the VM held no CPU.
pub const NO_CPU: u64 = 0xffff_ffff;
/// The largest physical CPU number a hypercall names.
pub const MAX_CPU: u64 = 63;

/// The hypercall ABI version: `major << 16 | minor` = 1.0.
pub const ABI_VERSION: u64 = 0x0001_0000;

/// [`HC_STATE`] bit 0: the hypervisor is enabled (always set: a caller
/// that gets an answer runs under it).
pub const STATE_ENABLED: u64 = 1 << 0;
/// [`HC_STATE`] bit 1: the caller is the root VM.
pub const STATE_ROOT_VM: u64 = 1 << 1;

/// The largest binary VM configuration [`HC_VM_CREATE`] takes (64 KiB).
pub const MAX_CONFIG_SIZE: u64 = 64 << 10;
/// The largest kernel image [`HC_VM_CREATE`] takes (64 MiB).
pub const MAX_IMAGE_SIZE: u64 = 64 << 20;
/// The largest output buffer of [`HC_VM_LIST`] and [`HC_VM_CONSOLE_READ`]
/// (1 MiB).
pub const MAX_BUFFER_SIZE: u64 = 1 << 20;

/// Linux `ENOSYS` ("function not implemented"): an unknown hypercall
/// returns `-ENOSYS`.
pub const ENOSYS: i64 = 38;

/// A hypercall error: a Linux errno value, returned negated in RAX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Errno {
    /// `EPERM` (1): the caller is not the root VM.
    Perm = 1,
    /// `ENOENT` (2): no VM with that id.
    NoEnt = 2,
    /// `E2BIG` (7): a size above its bound.
    TooBig = 7,
    /// `ENOEXEC` (8): the configuration or the image cannot make a VM.
    NoExec = 8,
    /// `ENOMEM` (12): the hypervisor's memory pool is exhausted.
    NoMem = 12,
    /// `EFAULT` (14): a buffer outside the caller's memory.
    Fault = 14,
    /// `EBUSY` (16): the VM or CPU is not in a state that allows the call.
    Busy = 16,
    /// `EINVAL` (22): a malformed argument (zero length, VM id 0).
    Inval = 22,
    /// `ENOSYS` (38): unknown number, or a call not implemented yet.
    NoSys = 38,
}

impl Errno {
    /// The value in RAX: `-errno` as `u64`.
    pub const fn to_rax(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// The error a RAX value stands for, if it is one of [`Errno`]'s.
    pub const fn from_rax(rax: u64) -> Option<Self> {
        Some(match -(rax as i64) {
            1 => Self::Perm,
            2 => Self::NoEnt,
            7 => Self::TooBig,
            8 => Self::NoExec,
            12 => Self::NoMem,
            14 => Self::Fault,
            16 => Self::Busy,
            22 => Self::Inval,
            38 => Self::NoSys,
            _ => return None,
        })
    }
}

/// A hypercall by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// [`HC_VERSION`]: the ABI version.
    Version,
    /// [`HC_STATE`]: the enable state.
    State,
    /// [`HC_DISABLE`]: disable the hypervisor.
    Disable,
    /// [`HC_VM_CREATE`].
    VmCreate,
    /// [`HC_VM_START`].
    VmStart,
    /// [`HC_VM_STOP`].
    VmStop,
    /// [`HC_VM_DESTROY`].
    VmDestroy,
    /// [`HC_VM_LIST`].
    VmList,
    /// [`HC_VM_CONSOLE_READ`].
    VmConsoleRead,
    /// [`HC_VM_CONSOLE_WRITE`].
    VmConsoleWrite,
    /// [`HC_CPU_OFFER`].
    CpuOffer,
    /// [`HC_CPU_RELEASE`].
    CpuRelease,
    /// A number the ABI does not define.
    Unknown(u64),
}

impl Hypercall {
    /// The hypercall numbered `nr` (the guest's RAX).
    pub const fn from_nr(nr: u64) -> Self {
        match nr {
            HC_VERSION => Self::Version,
            HC_STATE => Self::State,
            HC_DISABLE => Self::Disable,
            HC_VM_CREATE => Self::VmCreate,
            HC_VM_START => Self::VmStart,
            HC_VM_STOP => Self::VmStop,
            HC_VM_DESTROY => Self::VmDestroy,
            HC_VM_LIST => Self::VmList,
            HC_VM_CONSOLE_READ => Self::VmConsoleRead,
            HC_VM_CONSOLE_WRITE => Self::VmConsoleWrite,
            HC_CPU_OFFER => Self::CpuOffer,
            HC_CPU_RELEASE => Self::CpuRelease,
            other => Self::Unknown(other),
        }
    }

    /// The name, for the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::State => "state",
            Self::Disable => "disable",
            Self::VmCreate => "vm_create",
            Self::VmStart => "vm_start",
            Self::VmStop => "vm_stop",
            Self::VmDestroy => "vm_destroy",
            Self::VmList => "vm_list",
            Self::VmConsoleRead => "vm_console_read",
            Self::VmConsoleWrite => "vm_console_write",
            Self::CpuOffer => "cpu_offer",
            Self::CpuRelease => "cpu_release",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether only the root VM may make this call.
    pub const fn root_only(self) -> bool {
        !matches!(self, Self::Version | Self::State | Self::Unknown(_))
    }
}

/// [`VmListEntry::state`]: created, not started.
pub const VM_CREATED: u32 = 0;
/// [`VmListEntry::state`]: running on its CPU.
pub const VM_RUNNING: u32 = 1;
/// [`VmListEntry::state`]: ended (exited, powered off or stopped); its CPU
/// waits for [`HC_VM_DESTROY`].
pub const VM_ENDED: u32 = 2;

/// One entry [`HC_VM_LIST`] writes: 16 bytes, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct VmListEntry {
    /// The VM id (1, 2, ...).
    pub id: u32,
    /// [`VM_CREATED`], [`VM_RUNNING`] or [`VM_ENDED`].
    pub state: u32,
    /// Bit `n` set: the VM holds physical CPU `n`.
    pub cpus: u64,
}

impl VmListEntry {
    /// The size of one entry in the caller's buffer.
    pub const SIZE: u64 = 16;

    /// The entry's bytes as written to the caller's buffer.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&self.state.to_le_bytes());
        b[8..16].copy_from_slice(&self.cpus.to_le_bytes());
        b
    }
}

/// A range of guest-physical memory `[gpa, gpa + size)` that belongs to a
/// caller (its RAM as the hypervisor mapped it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GuestRange {
    /// Whether `[gpa, gpa + len)` lies inside this range (no overflow).
    pub const fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let Some(own_end) = self.gpa.checked_add(self.size) else {
            return false;
        };
        gpa >= self.gpa && end <= own_end
    }
}

/// Who makes a hypercall: whether it is the root VM, and its memory.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The root VM (Linux in Type-1.5) may manage VMs; others may not.
    pub is_root: bool,
    /// The caller's memory: a buffer must lie inside one of these ranges.
    pub memory: &'a [GuestRange],
}

impl Caller<'static> {
    /// A guest VM with no memory a hypercall may point into (Type-1 guests
    /// today: they only query the version).
    pub const GUEST: Caller<'static> = Caller {
        is_root: false,
        memory: &[],
    };
}

/// Checks a caller's buffer `[gpa, gpa + len)`: `len` must be nonzero
/// (`-EINVAL`) and at most `max` (`-E2BIG`), and the whole buffer must lie
/// inside one range of `memory` (`-EFAULT`; a buffer crossing from one
/// range into another, even an adjacent one, is refused too, so the
/// hypervisor copies from one contiguous host mapping).
pub fn check_buffer(memory: &[GuestRange], gpa: u64, len: u64, max: u64) -> Result<(), Errno> {
    if len == 0 {
        return Err(Errno::Inval);
    }
    if len > max {
        return Err(Errno::TooBig);
    }
    if memory.iter().any(|r| r.contains(gpa, len)) {
        Ok(())
    } else {
        Err(Errno::Fault)
    }
}

/// Checks a VM id argument: ids start at 1 and fit in 32 bits (`-EINVAL`).
pub fn check_vm_id(id: u64) -> Result<u32, Errno> {
    match u32::try_from(id) {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(Errno::Inval),
    }
}

/// A caller buffer: guest-physical address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A decoded hypercall with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// [`HC_VERSION`].
    Version,
    /// [`HC_STATE`].
    State,
    /// [`HC_DISABLE`].
    Disable,
    /// [`HC_VM_CREATE`]: the binary config and the kernel image.
    VmCreate {
        /// The binary `axvmconfig` configuration.
        config: Buffer,
        /// The kernel image.
        image: Buffer,
    },
    /// [`HC_VM_START`]: the VM and the physical CPU it gets.
    VmStart {
        /// The VM id.
        id: u32,
        /// The physical CPU (offered with [`HC_CPU_OFFER`]).
        cpu: u32,
    },
    /// [`HC_VM_STOP`].
    VmStop(u32),
    /// [`HC_VM_DESTROY`].
    VmDestroy(u32),
    /// [`HC_VM_LIST`]: where the entries go.
    VmList(Buffer),
    /// [`HC_VM_CONSOLE_READ`]: which VM and where its console bytes go.
    VmConsoleRead {
        /// The VM id.
        id: u32,
        /// Where the bytes go.
        buf: Buffer,
    },
    /// [`HC_VM_CONSOLE_WRITE`]: which VM and the bytes for its input.
    VmConsoleWrite {
        /// The VM id.
        id: u32,
        /// The bytes.
        buf: Buffer,
    },
    /// [`HC_CPU_OFFER`].
    CpuOffer,
    /// [`HC_CPU_RELEASE`]: the CPU.
    CpuRelease(u32),
}

/// Checks a physical CPU argument: at most [`MAX_CPU`] (`-EINVAL`).
pub fn check_cpu(cpu: u64) -> Result<u32, Errno> {
    if cpu <= MAX_CPU {
        Ok(cpu as u32)
    } else {
        Err(Errno::Inval)
    }
}

/// Decodes hypercall `nr` with arguments `args` (RDI, RSI, RDX, R10, R8,
/// R9): unknown numbers are `-ENOSYS`, a VM id of 0 or above `u32::MAX`
/// is `-EINVAL`. Buffers are checked against the caller by
/// [`Request::check`].
pub fn decode(nr: u64, args: &[u64; 6]) -> Result<Request, Errno> {
    let buf = |gpa, len| Buffer { gpa, len };
    Ok(match Hypercall::from_nr(nr) {
        Hypercall::Version => Request::Version,
        Hypercall::State => Request::State,
        Hypercall::Disable => Request::Disable,
        Hypercall::VmCreate => Request::VmCreate {
            config: buf(args[0], args[1]),
            image: buf(args[2], args[3]),
        },
        Hypercall::VmStart => Request::VmStart {
            id: check_vm_id(args[0])?,
            cpu: check_cpu(args[1])?,
        },
        Hypercall::VmStop => Request::VmStop(check_vm_id(args[0])?),
        Hypercall::VmDestroy => Request::VmDestroy(check_vm_id(args[0])?),
        Hypercall::VmList => Request::VmList(buf(args[0], args[1])),
        Hypercall::VmConsoleRead => Request::VmConsoleRead {
            id: check_vm_id(args[0])?,
            buf: buf(args[1], args[2]),
        },
        Hypercall::VmConsoleWrite => Request::VmConsoleWrite {
            id: check_vm_id(args[0])?,
            buf: buf(args[1], args[2]),
        },
        Hypercall::CpuOffer => Request::CpuOffer,
        Hypercall::CpuRelease => Request::CpuRelease(check_cpu(args[0])?),
        Hypercall::Unknown(_) => return Err(Errno::NoSys),
    })
}

impl Request {
    /// The call this request makes.
    pub const fn hypercall(&self) -> Hypercall {
        match self {
            Self::Version => Hypercall::Version,
            Self::State => Hypercall::State,
            Self::Disable => Hypercall::Disable,
            Self::VmCreate { .. } => Hypercall::VmCreate,
            Self::VmStart { .. } => Hypercall::VmStart,
            Self::VmStop(_) => Hypercall::VmStop,
            Self::VmDestroy(_) => Hypercall::VmDestroy,
            Self::VmList(_) => Hypercall::VmList,
            Self::VmConsoleRead { .. } => Hypercall::VmConsoleRead,
            Self::VmConsoleWrite { .. } => Hypercall::VmConsoleWrite,
            Self::CpuOffer => Hypercall::CpuOffer,
            Self::CpuRelease(_) => Hypercall::CpuRelease,
        }
    }

    /// Checks the request against its caller: root-only calls from another
    /// VM are `-EPERM`; every buffer goes through [`check_buffer`] with its
    /// bound.
    pub fn check(&self, caller: &Caller<'_>) -> Result<(), Errno> {
        if self.hypercall().root_only() && !caller.is_root {
            return Err(Errno::Perm);
        }
        let mem = caller.memory;
        match *self {
            Self::VmCreate { config, image } => {
                check_buffer(mem, config.gpa, config.len, MAX_CONFIG_SIZE)?;
                check_buffer(mem, image.gpa, image.len, MAX_IMAGE_SIZE)
            }
            Self::VmList(b) => {
                check_buffer(mem, b.gpa, b.len, MAX_BUFFER_SIZE)?;
                if b.len < VmListEntry::SIZE {
                    return Err(Errno::Inval);
                }
                Ok(())
            }
            Self::VmConsoleRead { buf, .. } => check_buffer(mem, buf.gpa, buf.len, MAX_BUFFER_SIZE),
            Self::VmConsoleWrite { buf, .. } => {
                check_buffer(mem, buf.gpa, buf.len, MAX_CONSOLE_INPUT)
            }
            _ => Ok(()),
        }
    }
}

/// The hypervisor's VM table as the root VM's management calls see it.
/// [`handle_root_call`] calls it only with requests that passed
/// [`decode`] and [`Request::check`] (buffers inside the caller's memory,
/// sizes bounded, ids nonzero).
pub trait VmControl {
    /// [`HC_VM_CREATE`]: builds a VM from the binary configuration and the
    /// image; returns its id.
    fn create(&mut self, config: Buffer, image: Buffer) -> Result<u32, Errno>;
    /// [`HC_VM_START`]: runs VM `id` on physical CPU `cpu`.
    fn start(&mut self, id: u32, cpu: u32) -> Result<(), Errno>;
    /// [`HC_VM_STOP`]: stops VM `id` (its CPU stays the hypervisor's
    /// until [`HC_VM_DESTROY`]).
    fn stop(&mut self, id: u32) -> Result<(), Errno>;
    /// [`HC_VM_DESTROY`]: ends VM `id` if needed and frees it; returns the
    /// CPU it held (back in its reset state) or [`NO_CPU`].
    fn destroy(&mut self, id: u32) -> Result<u64, Errno>;
    /// [`HC_VM_LIST`]: writes [`VmListEntry`]s to `buf`; returns how many
    /// VMs there are.
    fn list(&mut self, buf: Buffer) -> Result<u64, Errno>;
    /// [`HC_VM_CONSOLE_READ`]: moves console bytes of VM `id` to `buf`;
    /// returns how many.
    fn console_read(&mut self, id: u32, buf: Buffer) -> Result<u64, Errno>;
    /// [`HC_VM_CONSOLE_WRITE`]: queues the bytes of `buf` as VM `id`'s
    /// console input; returns how many were queued.
    fn console_write(&mut self, id: u32, buf: Buffer) -> Result<u64, Errno>;
    /// [`HC_CPU_OFFER`]: the calling CPU is offered.
    fn cpu_offer(&mut self) -> Result<(), Errno>;
    /// [`HC_CPU_RELEASE`]: an offered CPU without a VM goes back.
    fn cpu_release(&mut self, cpu: u32) -> Result<(), Errno>;
}

/// What hypercall `nr` with arguments `args` from `caller` returns in RAX
/// when the hypervisor has a VM table: decodes and checks every argument,
/// answers the version and state queries and hands the management calls
/// to `ctl`. [`HC_DISABLE`] is not made through here (each CPU leaves on
/// its own path), so it is `-ENOSYS`.
pub fn handle_root_call(
    caller: &Caller<'_>,
    nr: u64,
    args: &[u64; 6],
    ctl: &mut dyn VmControl,
) -> u64 {
    let req = match decode(nr, args) {
        Ok(r) => r,
        Err(e) => return e.to_rax(),
    };
    if let Err(e) = req.check(caller) {
        return e.to_rax();
    }
    let result = match req {
        Request::Version => Ok(ABI_VERSION),
        Request::State => Ok(STATE_ENABLED | if caller.is_root { STATE_ROOT_VM } else { 0 }),
        Request::Disable => Err(Errno::NoSys),
        Request::VmCreate { config, image } => ctl.create(config, image).map(u64::from),
        Request::VmStart { id, cpu } => ctl.start(id, cpu).map(|()| 0),
        Request::VmStop(id) => ctl.stop(id).map(|()| 0),
        Request::VmDestroy(id) => ctl.destroy(id),
        Request::VmList(buf) => ctl.list(buf),
        Request::VmConsoleRead { id, buf } => ctl.console_read(id, buf),
        Request::VmConsoleWrite { id, buf } => ctl.console_write(id, buf),
        Request::CpuOffer => ctl.cpu_offer().map(|()| 0),
        Request::CpuRelease(cpu) => ctl.cpu_release(cpu).map(|()| 0),
    };
    result.unwrap_or_else(Errno::to_rax)
}

/// A [`VmControl`] without a VM table: every management call is
/// `-ENOSYS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVms;

impl VmControl for NoVms {
    fn create(&mut self, _: Buffer, _: Buffer) -> Result<u32, Errno> {
        Err(Errno::NoSys)
    }
    fn start(&mut self, _: u32, _: u32) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }
    fn stop(&mut self, _: u32) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }
    fn destroy(&mut self, _: u32) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }
    fn list(&mut self, _: Buffer) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }
    fn console_read(&mut self, _: u32, _: Buffer) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }
    fn console_write(&mut self, _: u32, _: Buffer) -> Result<u64, Errno> {
        Err(Errno::NoSys)
    }
    fn cpu_offer(&mut self) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }
    fn cpu_release(&mut self, _: u32) -> Result<(), Errno> {
        Err(Errno::NoSys)
    }
}

/// What hypercall `nr` with arguments `args` from `caller` returns in RAX
/// without a VM table ([`NoVms`]): decodes and checks every argument; the
/// version and state queries are answered, the management calls return
/// `-ENOSYS` after their checks pass.
pub fn handle_call(caller: &Caller<'_>, nr: u64, args: &[u64; 6]) -> u64 {
    handle_root_call(caller, nr, args, &mut NoVms)
}

/// What hypercall `nr` with arguments `args` returns in RAX for a guest VM
/// that is not the root VM and offers no memory ([`Caller::GUEST`], the
/// Type-1 guests): the version and state queries answer, the management
/// calls are `-EPERM`, unknown numbers `-ENOSYS`.
#[inline]
pub fn handle(nr: u64, args: &[u64; 6]) -> u64 {
    // The queries a guest makes (on every call in a hot loop) without the
    // decode/check machinery; the answers are what that gives.
    match nr {
        HC_VERSION => ABI_VERSION,
        HC_STATE => STATE_ENABLED,
        _ => handle_call(&Caller::GUEST, nr, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [GuestRange; 2] = [
        GuestRange {
            gpa: 0,
            size: 0x9_f000,
        },
        GuestRange {
            gpa: 0x10_0000,
            size: 0x3ff0_0000,
        },
    ];

    fn root() -> Caller<'static> {
        Caller {
            is_root: true,
            memory: &RAM,
        }
    }

    fn as_err(r: u64) -> Option<Errno> {
        Errno::from_rax(r)
    }

    #[test]
    fn version_is_1_0() {
        assert_eq!(handle(0, &[0; 6]), 0x0001_0000);
        // The arguments do not matter.
        assert_eq!(handle(0, &[1, 2, 3, 4, 5, 6]), 0x0001_0000);
        assert_eq!(handle_call(&root(), 0, &[0; 6]), 0x0001_0000);
        assert_eq!(Hypercall::from_nr(0), Hypercall::Version);
        assert_eq!(Hypercall::from_nr(0).name(), "version");
    }

    #[test]
    fn unknown_numbers_return_minus_enosys() {
        for nr in [3, 7, 0xf, 0x17, 0x22, 0xdead, u64::MAX] {
            let r = handle(nr, &[0; 6]);
            assert_eq!(r, 0xffff_ffff_ffff_ffda, "nr {nr:#x}");
            assert_eq!(r as i64, -38);
            assert_eq!(handle_call(&root(), nr, &[0; 6]) as i64, -38);
            assert_eq!(Hypercall::from_nr(nr), Hypercall::Unknown(nr));
        }
    }

    #[test]
    fn errno_values_are_linux_ones() {
        // include/uapi/asm-generic/errno-base.h and errno.h.
        assert_eq!(Errno::Perm.to_rax() as i64, -1);
        assert_eq!(Errno::NoEnt.to_rax() as i64, -2);
        assert_eq!(Errno::TooBig.to_rax() as i64, -7);
        assert_eq!(Errno::Fault.to_rax() as i64, -14);
        assert_eq!(Errno::Inval.to_rax() as i64, -22);
        assert_eq!(Errno::NoSys.to_rax(), (-ENOSYS) as u64);
        for e in [
            Errno::Perm,
            Errno::NoEnt,
            Errno::TooBig,
            Errno::Fault,
            Errno::Inval,
            Errno::NoSys,
        ] {
            assert_eq!(Errno::from_rax(e.to_rax()), Some(e));
        }
        assert_eq!(Errno::NoExec.to_rax() as i64, -8);
        assert_eq!(Errno::NoMem.to_rax() as i64, -12);
        assert_eq!(Errno::Busy.to_rax() as i64, -16);
        for e in [Errno::NoExec, Errno::NoMem, Errno::Busy] {
            assert_eq!(Errno::from_rax(e.to_rax()), Some(e));
        }
        assert_eq!(Errno::from_rax(0), None);
        assert_eq!(Errno::from_rax(ABI_VERSION), None);
    }

    #[test]
    fn state_tells_root_from_guest() {
        assert_eq!(handle(HC_STATE, &[0; 6]), 0b01);
        assert_eq!(handle_call(&root(), HC_STATE, &[0; 6]), 0b11);
    }

    #[test]
    fn management_is_root_only() {
        let args = [0x20_0000, 0x100, 0x30_0000, 0x1000, 0, 0];
        for nr in [
            HC_DISABLE,
            HC_VM_CREATE,
            HC_VM_START,
            HC_VM_STOP,
            HC_VM_DESTROY,
            HC_CPU_OFFER,
            HC_CPU_RELEASE,
        ] {
            assert_eq!(as_err(handle(nr, &[1; 6])), Some(Errno::Perm), "{nr:#x}");
        }
        assert_eq!(as_err(handle(HC_VM_CREATE, &args)), Some(Errno::Perm));
        // Not implemented yet: valid root calls get -ENOSYS after the checks.
        assert_eq!(
            as_err(handle_call(&root(), HC_VM_CREATE, &args)),
            Some(Errno::NoSys)
        );
        assert_eq!(
            as_err(handle_call(&root(), HC_VM_DESTROY, &[1; 6])),
            Some(Errno::NoSys)
        );
    }

    #[test]
    fn buffers_must_lie_in_one_caller_range() {
        let max = MAX_BUFFER_SIZE;
        assert_eq!(check_buffer(&RAM, 0x1000, 0x1000, max), Ok(()));
        // The last byte of the low range.
        assert_eq!(check_buffer(&RAM, 0x9_efff, 1, max), Ok(()));
        // One byte past it, into the hole below 1 MiB.
        assert_eq!(check_buffer(&RAM, 0x9_efff, 2, max), Err(Errno::Fault));
        assert_eq!(check_buffer(&RAM, 0xa_0000, 1, max), Err(Errno::Fault));
        // Above the caller's memory (the hypervisor's region, say).
        assert_eq!(check_buffer(&RAM, 0x4000_0000, 1, max), Err(Errno::Fault));
        // Wrapping around the address space.
        assert_eq!(
            check_buffer(&RAM, u64::MAX - 0xff, 0x1000, max),
            Err(Errno::Fault)
        );
        assert_eq!(check_buffer(&RAM, 0x1000, 0, max), Err(Errno::Inval));
        assert_eq!(
            check_buffer(&RAM, 0x10_0000, max + 1, max),
            Err(Errno::TooBig)
        );
        assert_eq!(check_buffer(&[], 0x1000, 1, max), Err(Errno::Fault));
    }

    #[test]
    fn create_checks_both_buffers_and_bounds() {
        let r = root();
        let call = |a: [u64; 4]| {
            as_err(handle_call(
                &r,
                HC_VM_CREATE,
                &[a[0], a[1], a[2], a[3], 0, 0],
            ))
        };
        assert_eq!(
            call([0x20_0000, 0x100, 0x30_0000, 0x1000]),
            Some(Errno::NoSys)
        );
        assert_eq!(
            call([0x20_0000, 0x100, 0x4000_0000, 0x1000]),
            Some(Errno::Fault)
        );
        assert_eq!(
            call([0xa_0000, 0x100, 0x30_0000, 0x1000]),
            Some(Errno::Fault)
        );
        assert_eq!(
            call([0x20_0000, MAX_CONFIG_SIZE + 1, 0x30_0000, 0x1000]),
            Some(Errno::TooBig)
        );
        assert_eq!(
            call([0x20_0000, 0x100, 0x30_0000, MAX_IMAGE_SIZE + 1]),
            Some(Errno::TooBig)
        );
        assert_eq!(call([0x20_0000, 0, 0x30_0000, 0x1000]), Some(Errno::Inval));
    }

    #[test]
    fn vm_ids_and_list_buffers() {
        let r = root();
        assert_eq!(check_vm_id(0), Err(Errno::Inval));
        assert_eq!(check_vm_id(1 << 32), Err(Errno::Inval));
        assert_eq!(check_vm_id(7), Ok(7));
        assert_eq!(
            as_err(handle_call(&r, HC_VM_START, &[0; 6])),
            Some(Errno::Inval)
        );
        // A CPU number above MAX_CPU.
        assert_eq!(
            as_err(handle_call(&r, HC_VM_START, &[1, 64, 0, 0, 0, 0])),
            Some(Errno::Inval)
        );
        assert_eq!(
            decode(HC_VM_START, &[3, 1, 0, 0, 0, 0]),
            Ok(Request::VmStart { id: 3, cpu: 1 })
        );
        assert_eq!(
            as_err(handle_call(&r, HC_CPU_RELEASE, &[99, 0, 0, 0, 0, 0])),
            Some(Errno::Inval)
        );
        assert_eq!(
            decode(HC_VM_CONSOLE_READ, &[2, 0x1000, 64, 0, 0, 0]),
            Ok(Request::VmConsoleRead {
                id: 2,
                buf: Buffer {
                    gpa: 0x1000,
                    len: 64
                }
            })
        );
        // A list buffer smaller than one entry.
        assert_eq!(
            as_err(handle_call(&r, HC_VM_LIST, &[0x1000, 15, 0, 0, 0, 0])),
            Some(Errno::Inval)
        );
        assert_eq!(
            as_err(handle_call(&r, HC_VM_LIST, &[0x1000, 16, 0, 0, 0, 0])),
            Some(Errno::NoSys)
        );
        let e = VmListEntry {
            id: 1,
            state: 1,
            cpus: 0b10,
        };
        assert_eq!(
            e.to_bytes(),
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    /// Records what reaches the VM table.
    #[derive(Default)]
    struct Recorder {
        calls: std::vec::Vec<std::string::String>,
    }

    impl VmControl for Recorder {
        fn create(&mut self, c: Buffer, i: Buffer) -> Result<u32, Errno> {
            self.calls.push(std::format!("create {c:x?} {i:x?}"));
            Ok(1)
        }
        fn start(&mut self, id: u32, cpu: u32) -> Result<(), Errno> {
            self.calls.push(std::format!("start {id} {cpu}"));
            if cpu == 0 { Err(Errno::Busy) } else { Ok(()) }
        }
        fn stop(&mut self, id: u32) -> Result<(), Errno> {
            self.calls.push(std::format!("stop {id}"));
            Err(Errno::NoEnt)
        }
        fn destroy(&mut self, id: u32) -> Result<u64, Errno> {
            self.calls.push(std::format!("destroy {id}"));
            Ok(1)
        }
        fn list(&mut self, b: Buffer) -> Result<u64, Errno> {
            self.calls.push(std::format!("list {:#x}", b.len));
            Ok(2)
        }
        fn console_read(&mut self, id: u32, b: Buffer) -> Result<u64, Errno> {
            self.calls.push(std::format!("console {id} {:#x}", b.len));
            Ok(5)
        }
        fn console_write(&mut self, id: u32, b: Buffer) -> Result<u64, Errno> {
            self.calls.push(std::format!("input {id} {:#x}", b.len));
            Ok(b.len)
        }
        fn cpu_offer(&mut self) -> Result<(), Errno> {
            self.calls.push("offer".into());
            Ok(())
        }
        fn cpu_release(&mut self, cpu: u32) -> Result<(), Errno> {
            self.calls.push(std::format!("release {cpu}"));
            Ok(())
        }
    }

    #[test]
    fn root_calls_reach_the_vm_table_only_after_their_checks() {
        let r = root();
        let mut t = Recorder::default();
        let mut call =
            |nr, a: [u64; 3]| handle_root_call(&r, nr, &[a[0], a[1], a[2], 0, 0, 0], &mut t);
        // A config buffer in the hypervisor's memory: refused before the table.
        assert_eq!(
            as_err(call(HC_VM_CREATE, [0x4000_0000, 0x100, 0x30_0000])),
            Some(Errno::Fault)
        );
        assert_eq!(as_err(call(HC_VM_START, [0, 1, 0])), Some(Errno::Inval));
        assert_eq!(
            as_err(call(HC_VM_CONSOLE_READ, [1, 0x1000, 0])),
            Some(Errno::Inval)
        );
        assert_eq!(call(0x99, [0; 3]) as i64, -38);
        assert_eq!(call(HC_DISABLE, [0; 3]) as i64, -38);
        // Valid calls get the table's answers, errors negated.
        assert_eq!(call(HC_VM_START, [1, 1, 0]), 0);
        assert_eq!(as_err(call(HC_VM_START, [1, 0, 0])), Some(Errno::Busy));
        assert_eq!(as_err(call(HC_VM_STOP, [2, 0, 0])), Some(Errno::NoEnt));
        assert_eq!(call(HC_VM_DESTROY, [2, 0, 0]), 1);
        assert_eq!(call(HC_VM_LIST, [0x1000, 32, 0]), 2);
        assert_eq!(call(HC_VM_CONSOLE_READ, [1, 0x1000, 64]), 5);
        assert_eq!(call(HC_VM_CONSOLE_WRITE, [1, 0x1000, 10]), 10);
        // More input than a VM holds at once.
        assert_eq!(
            as_err(call(
                HC_VM_CONSOLE_WRITE,
                [1, 0x1000, MAX_CONSOLE_INPUT + 1]
            )),
            Some(Errno::TooBig)
        );
        assert_eq!(call(HC_CPU_OFFER, [0; 3]), 0);
        assert_eq!(call(HC_CPU_RELEASE, [1, 0, 0]), 0);
        assert_eq!(call(HC_VERSION, [0; 3]), ABI_VERSION);
        assert_eq!(
            t.calls,
            [
                "start 1 1",
                "start 1 0",
                "stop 2",
                "destroy 2",
                "list 0x20",
                "console 1 0x40",
                "input 1 0xa",
                "offer",
                "release 1",
            ]
        );
        // A guest VM (not root) never reaches the table.
        let mut t2 = Recorder::default();
        let g = Caller::GUEST;
        assert_eq!(
            as_err(handle_root_call(&g, HC_VM_DESTROY, &[1; 6], &mut t2)),
            Some(Errno::Perm)
        );
        assert_eq!(
            as_err(handle_root_call(&g, HC_CPU_OFFER, &[0; 6], &mut t2)),
            Some(Errno::Perm)
        );
        assert!(t2.calls.is_empty());
    }
}
