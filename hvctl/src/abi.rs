//! The `/dev/axhv` ioctl interface: numbers and argument layouts.
//!
//! This is the one place the interface is defined on the Rust side; the
//! kernel module's header `hv-app/linux/axhv_ioctl.h` mirrors it field for
//! field (the tests below pin the numbers the header spells out with
//! `_IOR`/`_IOW`/`_IOWR`). Every structure is little endian, without
//! implicit padding, and encoded by hand so its bytes are tested.

/// The ioctl "type" byte of `/dev/axhv`.
pub const AXHV_IOC_MAGIC: u32 = 0xE7;

/// Linux `_IOC_NONE`.
const IOC_NONE: u32 = 0;
/// Linux `_IOC_WRITE` (user space writes, the kernel reads).
const IOC_WRITE: u32 = 1;
/// Linux `_IOC_READ` (the kernel writes back).
const IOC_READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)` (asm-generic/ioctl.h): nr in bits
/// 7:0, type in 15:8, size in 29:16, direction in 31:30.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}

/// `AXHV_IOC_STATUS`: `_IOR(0xE7, 0x00, struct axhv_status)`.
pub const IOC_STATUS: u32 = ioc(IOC_READ, AXHV_IOC_MAGIC, 0x00, Status::SIZE as u32);
/// `AXHV_IOC_LOAD_IMAGE`: `_IOW(0xE7, 0x01, struct axhv_buf)`: copy the
/// hypervisor image into the reserved region.
pub const IOC_LOAD_IMAGE: u32 = ioc(IOC_WRITE, AXHV_IOC_MAGIC, 0x01, UserBuf::SIZE as u32);
/// `AXHV_IOC_ENABLE`: `_IO(0xE7, 0x02)`: enter the hypervisor on every CPU.
pub const IOC_ENABLE: u32 = ioc(IOC_NONE, AXHV_IOC_MAGIC, 0x02, 0);
/// `AXHV_IOC_DISABLE`: `_IO(0xE7, 0x03)`: return every CPU to native.
pub const IOC_DISABLE: u32 = ioc(IOC_NONE, AXHV_IOC_MAGIC, 0x03, 0);
/// `AXHV_IOC_VM_CREATE`: `_IOWR(0xE7, 0x10, struct axhv_vm_create)`.
pub const IOC_VM_CREATE: u32 = ioc(
    IOC_READ | IOC_WRITE,
    AXHV_IOC_MAGIC,
    0x10,
    VmCreate::SIZE as u32,
);
/// `AXHV_IOC_VM_DESTROY`: `_IOW(0xE7, 0x13, __u32)`.
pub const IOC_VM_DESTROY: u32 = ioc(IOC_WRITE, AXHV_IOC_MAGIC, 0x13, 4);
/// `AXHV_IOC_VM_LIST`: `_IOWR(0xE7, 0x14, struct axhv_buf)`; returns the
/// number of VMs, 16-byte entries written to the buffer.
pub const IOC_VM_LIST: u32 = ioc(
    IOC_READ | IOC_WRITE,
    AXHV_IOC_MAGIC,
    0x14,
    UserBuf::SIZE as u32,
);
/// `AXHV_IOC_VM_CONSOLE`: `_IOWR(0xE7, 0x15, struct axhv_vm_console)`;
/// returns the number of bytes read from the VM's console ring.
pub const IOC_VM_CONSOLE: u32 = ioc(
    IOC_READ | IOC_WRITE,
    AXHV_IOC_MAGIC,
    0x15,
    VmConsole::SIZE as u32,
);

/// `AXHV_IOC_VM_INPUT`: `_IOW(0xE7, 0x16, struct axhv_vm_console)`: queue
/// the buffer's bytes (at most 4 KiB) as the VM's console input; returns
/// how many were taken.
pub const IOC_VM_INPUT: u32 = ioc(IOC_WRITE, AXHV_IOC_MAGIC, 0x16, VmConsole::SIZE as u32);

/// `AXHV_IOC_SELFTEST`: `_IOR(0xE7, 0x20, struct axhv_selftest)`: the
/// module makes malformed hypercalls and reads the hypervisor's memory as
/// the root VM, and reports what came back.
pub const IOC_SELFTEST: u32 = ioc(IOC_READ, AXHV_IOC_MAGIC, 0x20, SelfTest::SIZE as u32);

/// `struct axhv_selftest`: what each probe of `AXHV_IOC_SELFTEST` returned
/// (negative errno values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SelfTest {
    /// `vm_create` with buffers in the hypervisor's region (`-EFAULT` expected).
    pub bad_buffer: i64,
    /// Hypercall `0x7777` (`-ENOSYS` expected).
    pub unknown_nr: i64,
    /// `vm_start` of VM 0 (`-EINVAL` expected).
    pub bad_vm_id: i64,
    /// The root VM reading the hypervisor's region (`-EFAULT` expected: the
    /// hypervisor refuses the access and Linux's fault fixup answers).
    pub hv_read: i64,
    /// EFER.SVME as the root VM reads it (0 expected: hidden).
    pub efer_svme: i64,
    /// CPUID 8000_0001h ECX.SVM as the root VM reads it (0 expected).
    pub cpuid_svm: i64,
    /// Which virtualization the CPU has ([`VENDOR_AMD`], [`VENDOR_INTEL`]):
    /// which of the feature fields the selftest judges.
    pub vendor: u32,
    /// CPUID 1 ECX.VMX (bit 5) as the root VM reads it (0 expected on
    /// Intel: hidden).
    pub cpuid_vmx: i64,
}

/// [`SelfTest::vendor`]: AMD SVM (`efer_svme`, `cpuid_svm` apply).
pub const VENDOR_AMD: u32 = 0;
/// [`SelfTest::vendor`]: Intel VMX (`cpuid_vmx` applies; EFER has no SVME).
pub const VENDOR_INTEL: u32 = 1;

impl SelfTest {
    /// Size of `struct axhv_selftest`.
    pub const SIZE: usize = 64;

    /// Decodes the structure.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        let at = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Self {
            bad_buffer: at(0),
            unknown_nr: at(1),
            bad_vm_id: at(2),
            hv_read: at(3),
            efer_svme: at(4),
            cpuid_svm: at(5),
            vendor: u32::from_le_bytes(b[48..52].try_into().unwrap_or([0; 4])),
            cpuid_vmx: at(7),
        }
    }
}

/// [`Status::flags`]: the reserved region was verified and claimed.
pub const STATUS_REGION_OK: u32 = 1 << 0;
/// [`Status::flags`]: a hypervisor image is loaded in the region.
pub const STATUS_IMAGE_LOADED: u32 = 1 << 1;
/// [`Status::flags`]: the loaded image carries a valid Linux-entry header.
pub const STATUS_IMAGE_LINUX_ENTRY: u32 = 1 << 2;
/// [`Status::flags`]: the hypervisor is enabled (Linux runs as root VM).
pub const STATUS_ENABLED: u32 = 1 << 3;

/// `struct axhv_status` (40 bytes), filled by the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// The module's interface version, `major << 16 | minor`.
    pub abi: u32,
    /// `STATUS_*` bits.
    pub flags: u32,
    /// Physical base of the reserved region.
    pub region_base: u64,
    /// Size of the reserved region.
    pub region_size: u64,
    /// Size of the loaded image (0: none).
    pub image_size: u64,
    /// Online CPUs seen by the module.
    pub online_cpus: u32,
}

impl Status {
    /// Size of `struct axhv_status`.
    pub const SIZE: usize = 40;

    /// Decodes the bytes the module wrote.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Self {
            abi: u32_at(0),
            flags: u32_at(4),
            region_base: u64_at(8),
            region_size: u64_at(16),
            image_size: u64_at(24),
            online_cpus: u32_at(32),
        }
    }
}

/// `struct axhv_buf` (16 bytes): a user buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserBuf {
    /// User address.
    pub ptr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl UserBuf {
    /// Size of `struct axhv_buf`.
    pub const SIZE: usize = 16;

    /// The bytes passed to the module.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0..8].copy_from_slice(&self.ptr.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// `struct axhv_vm_create` (40 bytes): a binary `axvmconfig` config and a
/// kernel image in user memory; the module writes the new VM id back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmCreate {
    /// The binary configuration.
    pub config: UserBuf,
    /// The kernel image.
    pub image: UserBuf,
    /// The new VM's id (written by the module).
    pub id: u32,
}

impl VmCreate {
    /// Size of `struct axhv_vm_create`.
    pub const SIZE: usize = 40;

    /// The bytes passed to the module.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0..16].copy_from_slice(&self.config.encode());
        b[16..32].copy_from_slice(&self.image.encode());
        b[32..36].copy_from_slice(&self.id.to_le_bytes());
        b
    }

    /// The VM id the module wrote back.
    pub fn id_from(b: &[u8; Self::SIZE]) -> u32 {
        u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"))
    }
}

/// `struct axhv_vm_console` (24 bytes): read a VM's console ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmConsole {
    /// The VM id.
    pub id: u32,
    /// Where the bytes go.
    pub buf: UserBuf,
}

impl VmConsole {
    /// Size of `struct axhv_vm_console`.
    pub const SIZE: usize = 24;

    /// The bytes passed to the module.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[8..24].copy_from_slice(&self.buf.encode());
        b
    }
}

/// One VM in the `AXHV_IOC_VM_LIST` buffer (16 bytes, the hypercall ABI's
/// `VmListEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmEntry {
    /// The VM id.
    pub id: u32,
    /// 0 created, 1 running, 2 ended.
    pub state: u32,
    /// Physical CPUs the VM holds (bit n = CPU n).
    pub cpus: u64,
}

impl VmEntry {
    /// Size of one entry.
    pub const SIZE: usize = 16;

    /// Decodes one entry.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 16] = b.get(..Self::SIZE)?.try_into().ok()?;
        Some(Self {
            id: u32::from_le_bytes(b[0..4].try_into().ok()?),
            state: u32::from_le_bytes(b[4..8].try_into().ok()?),
            cpus: u64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }

    /// The state's name.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            0 => "created",
            1 => "running",
            2 => "ended",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_macros() {
        // _IO(0xE7, 2) = 0x0000E702; _IOR(0xE7, 0, 40 bytes) = 0x8028E700.
        assert_eq!(IOC_ENABLE, 0x0000_E702);
        assert_eq!(IOC_DISABLE, 0x0000_E703);
        assert_eq!(IOC_STATUS, 0x8028_E700);
        assert_eq!(IOC_LOAD_IMAGE, 0x4010_E701);
        assert_eq!(IOC_VM_CREATE, 0xC028_E710);
        assert_eq!(IOC_VM_DESTROY, 0x4004_E713);
        assert_eq!(IOC_VM_LIST, 0xC010_E714);
        assert_eq!(IOC_VM_CONSOLE, 0xC018_E715);
        // _IOW(0xE7, 0x16, 24 bytes).
        assert_eq!(IOC_VM_INPUT, 0x4018_E716);
        // _IOR(0xE7, 0x20, 64 bytes).
        assert_eq!(IOC_SELFTEST, 0x8040_E720);
        // KVM_RUN is _IO(0xAE, 0x80) = 0xAE80: the same formula.
        assert_eq!(ioc(0, 0xAE, 0x80, 0), 0xAE80);
    }

    #[test]
    fn encodings_are_little_endian_and_sized() {
        let create = VmCreate {
            config: UserBuf {
                ptr: 0x1122_3344_5566_7788,
                len: 0x40,
            },
            image: UserBuf {
                ptr: 0x7fff_0000,
                len: 0x1_0000,
            },
            id: 0,
        };
        let b = create.encode();
        assert_eq!(&b[0..8], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[8..16], &[0x40, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..24], &[0, 0, 0xff, 0x7f, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[0, 0, 1, 0, 0, 0, 0, 0]);
        let mut back = b;
        back[32] = 3;
        assert_eq!(VmCreate::id_from(&back), 3);
        let c = VmConsole {
            id: 2,
            buf: UserBuf {
                ptr: 0x1000,
                len: 9,
            },
        }
        .encode();
        assert_eq!(c[0], 2);
        assert_eq!(&c[8..10], &[0x00, 0x10]);
        assert_eq!(c[16], 9);
    }

    #[test]
    fn status_and_list_decode() {
        let mut b = [0u8; Status::SIZE];
        b[0..4].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        b[4] = (STATUS_REGION_OK | STATUS_IMAGE_LOADED) as u8;
        b[8..16].copy_from_slice(&0x2000_0000u64.to_le_bytes());
        b[16..24].copy_from_slice(&0x1000_0000u64.to_le_bytes());
        b[32] = 2;
        let s = Status::decode(&b);
        assert_eq!(s.abi, 0x0001_0000);
        assert_eq!(s.flags, 0b11);
        assert_eq!(s.region_base, 0x2000_0000);
        assert_eq!(s.region_size, 256 << 20);
        assert_eq!(s.online_cpus, 2);
        let e = VmEntry::decode(&[1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((e.id, e.state_name(), e.cpus), (1, "running", 2));
        assert_eq!(VmEntry::decode(&[0; 15]), None);
    }

    #[test]
    fn selftest_decodes_each_field() {
        let mut b = [0u8; SelfTest::SIZE];
        b[0..8].copy_from_slice(&(-14i64).to_le_bytes());
        b[8..16].copy_from_slice(&(-38i64).to_le_bytes());
        b[16..24].copy_from_slice(&(-22i64).to_le_bytes());
        b[24..32].copy_from_slice(&(-14i64).to_le_bytes());
        b[32] = 1; // efer_svme
        b[40] = 1; // cpuid_svm
        b[48] = VENDOR_INTEL as u8;
        b[52] = 0xff; // reserved: ignored
        b[56] = 1; // cpuid_vmx
        let t = SelfTest::decode(&b);
        assert_eq!(
            t,
            SelfTest {
                bad_buffer: -14,
                unknown_nr: -38,
                bad_vm_id: -22,
                hv_read: -14,
                efer_svme: 1,
                cpuid_svm: 1,
                vendor: VENDOR_INTEL,
                cpuid_vmx: 1,
            }
        );
    }
}
