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
//! | `0x11` | [`HC_VM_START`] | VM id | 0; root VM only |
//! | `0x12` | [`HC_VM_STOP`] | VM id | 0; root VM only |
//! | `0x13` | [`HC_VM_DESTROY`] | VM id | 0; root VM only |
//! | `0x14` | [`HC_VM_LIST`] | buffer GPA, buffer len | number of VMs; [`VmListEntry`]s written |
//! | `0x15` | [`HC_VM_CONSOLE_READ`] | VM id, buffer GPA, buffer len | bytes copied from the VM's console ring |
//! | any other | | | `-ENOSYS` (`-38`) |
//!
//! Every argument is checked before anything is done ([`decode`],
//! [`Request::check`]): buffers must lie inside one region of the caller's
//! memory ([`check_buffer`], else `-EFAULT`), sizes are bounded
//! ([`MAX_CONFIG_SIZE`], [`MAX_IMAGE_SIZE`], [`MAX_BUFFER_SIZE`], else
//! `-E2BIG`), zero lengths and VM id 0 are `-EINVAL`, and only the root VM
//! (Linux in Type-1.5) may manage VMs (`-EPERM`). The VM-management calls
//! pass these checks and then return `-ENOSYS`: the VM table behind them is
//! not implemented yet.

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
    /// `EFAULT` (14): a buffer outside the caller's memory.
    Fault = 14,
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
            14 => Self::Fault,
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
            Self::Unknown(_) => "unknown",
        }
    }

    /// Whether only the root VM may make this call.
    pub const fn root_only(self) -> bool {
        !matches!(self, Self::Version | Self::State | Self::Unknown(_))
    }
}

/// One entry [`HC_VM_LIST`] writes: 16 bytes, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct VmListEntry {
    /// The VM id (1, 2, ...).
    pub id: u32,
    /// 0 created, 1 running, 2 stopped.
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
    /// [`HC_VM_START`].
    VmStart(u32),
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
        Hypercall::VmStart => Request::VmStart(check_vm_id(args[0])?),
        Hypercall::VmStop => Request::VmStop(check_vm_id(args[0])?),
        Hypercall::VmDestroy => Request::VmDestroy(check_vm_id(args[0])?),
        Hypercall::VmList => Request::VmList(buf(args[0], args[1])),
        Hypercall::VmConsoleRead => Request::VmConsoleRead {
            id: check_vm_id(args[0])?,
            buf: buf(args[1], args[2]),
        },
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
            Self::VmStart(_) => Hypercall::VmStart,
            Self::VmStop(_) => Hypercall::VmStop,
            Self::VmDestroy(_) => Hypercall::VmDestroy,
            Self::VmList(_) => Hypercall::VmList,
            Self::VmConsoleRead { .. } => Hypercall::VmConsoleRead,
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
            _ => Ok(()),
        }
    }
}

/// What hypercall `nr` with arguments `args` from `caller` returns in RAX.
///
/// Decodes and checks every argument; the version and state queries are
/// answered; the calls that need the VM table (create, start, stop,
/// destroy, list, console, disable) return `-ENOSYS` after their checks
/// pass: they are not implemented yet.
pub fn handle_call(caller: &Caller<'_>, nr: u64, args: &[u64; 6]) -> u64 {
    let req = match decode(nr, args) {
        Ok(r) => r,
        Err(e) => return e.to_rax(),
    };
    if let Err(e) = req.check(caller) {
        return e.to_rax();
    }
    match req {
        Request::Version => ABI_VERSION,
        Request::State => STATE_ENABLED | if caller.is_root { STATE_ROOT_VM } else { 0 },
        _ => Errno::NoSys.to_rax(),
    }
}

/// What hypercall `nr` with arguments `args` returns in RAX for a guest VM
/// that is not the root VM and offers no memory ([`Caller::GUEST`], the
/// Type-1 guests): the version and state queries answer, the management
/// calls are `-EPERM`, unknown numbers `-ENOSYS`.
pub fn handle(nr: u64, args: &[u64; 6]) -> u64 {
    handle_call(&Caller::GUEST, nr, args)
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
        for nr in [3, 7, 0xf, 0x16, 0xdead, u64::MAX] {
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
}
