//! What the VMX and SVM vCPUs share: configuration, the MMIO-decode
//! extension, the hypercall register convention, the pending-interrupt queue,
//! and the conversion of this crate's errors into `axvcpu` errors.

use alloc::collections::VecDeque;

use axaddrspace::{AccessWidth, GuestPhysAddr, MappingFlags};
use axvcpu::{ArchError, AxVCpuExitReason};

use crate::cpuid::CpuidPolicy;
use crate::decode::{MmioInstruction, MmioOp, decode_mmio};
use crate::msr::efer;
use crate::state::GuestState;
use crate::{Error, Result};

/// Creation parameters of an x86 vCPU (`AxArchVCpu::CreateConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86VcpuCreateConfig {
    /// TLB tag: the SVM ASID or the VMX VPID. Non-zero, distinct per VM.
    pub tag: u16,
    /// The guest's CPUID policy (its APIC ID in particular).
    pub cpuid: CpuidPolicy,
}

impl X86VcpuCreateConfig {
    /// Defaults for vCPU `vcpu_id` of a VM with TLB tag `tag`: APIC ID =
    /// `vcpu_id`, x2APIC and TSC deadline offered.
    pub fn new(vcpu_id: usize, tag: u16) -> Self {
        Self {
            tag,
            cpuid: CpuidPolicy::new(vcpu_id as u32),
        }
    }
}

/// How the guest starts; the entry comes from `AxArchVCpu::set_entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootProtocol {
    /// Multiboot v1 ([`GuestState::multiboot`]): EBX = `info_paddr`.
    Multiboot {
        /// Physical address of the multiboot information structure.
        info_paddr: u32,
    },
    /// 64-bit long mode ([`GuestState::long_mode`]) with page tables at
    /// `cr3` and RSI = `rsi` (Linux: the `boot_params` address).
    LongMode {
        /// Guest page-table root.
        cr3: u64,
        /// Value of RSI.
        rsi: u64,
    },
    /// Real mode at the entry (below 1 MiB, `cs = entry >> 4`), as a
    /// secondary CPU after INIT-SIPI.
    RealMode,
    /// Exactly this state; the entry from `set_entry` replaces its RIP.
    Custom(alloc::boxed::Box<GuestState>),
}

impl BootProtocol {
    /// The initial guest state for a start at `entry`.
    pub fn state(&self, entry: GuestPhysAddr) -> Result<GuestState> {
        let entry = entry.as_usize() as u64;
        Ok(match self {
            Self::Multiboot { info_paddr } => {
                let entry = u32::try_from(entry)
                    .map_err(|_| Error::InvalidArgument("multiboot entry above 4 GiB"))?;
                GuestState::multiboot(entry, *info_paddr)
            }
            Self::LongMode { cr3, rsi } => {
                let mut s = GuestState::long_mode(entry, *cr3);
                s.regs.rsi = *rsi;
                s
            }
            Self::RealMode => {
                if entry >= 0x10_0000 {
                    return Err(Error::InvalidArgument("real-mode entry above 1 MiB"));
                }
                GuestState::real_mode((entry >> 4) as u16, (entry & 0xf) as u16)
            }
            Self::Custom(s) => {
                let mut s = (**s).clone();
                s.rip = entry;
                s
            }
        })
    }
}

/// Setup parameters of an x86 vCPU (`AxArchVCpu::SetupConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X86VcpuSetupConfig {
    /// The boot protocol.
    pub boot: BootProtocol,
}

/// Where the guest's current instruction is, for fetching its bytes (the
/// caller walks the guest page tables; this crate does not own guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCodeLocation {
    /// Linear address of the instruction (CS base + RIP; RIP alone in 64-bit mode).
    pub linear_rip: u64,
    /// Guest CR0 (paging on when PG is set).
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4 (PAE, LA57).
    pub cr4: u64,
    /// Guest EFER (LMA), without SVME.
    pub efer: u64,
    /// Code-segment bitness: 16, 32 or 64.
    pub bitness: u32,
}

/// The x86 step that turns a [`AxVCpuExitReason::NestedPageFault`] on an
/// emulated MMIO page into an MMIO exit.
///
/// Neither VMX EPT violations nor SVM nested page faults (without decode
/// assists, as under QEMU TCG) say what the instruction did. The VM, which
/// knows that `addr` belongs to a device, reads the instruction bytes at
/// [`X86VcpuExt::guest_code_location`] and calls [`X86VcpuExt::decode_mmio`],
/// which decodes them, advances RIP, and returns the `MmioRead`/`MmioWrite`
/// to emulate (complete a read with `set_mmio_read_result`).
pub trait X86VcpuExt {
    /// Where the current guest instruction is.
    fn guest_code_location(&self) -> GuestCodeLocation;
    /// Decodes `insn` (the bytes at the guest RIP) as an access to `addr`,
    /// steps RIP past it, and returns the MMIO exit.
    fn decode_mmio(&mut self, addr: GuestPhysAddr, insn: &[u8]) -> Result<AxVCpuExitReason>;
    /// Emulates `insn` (the bytes at the guest RIP) as a read-modify-write
    /// or compare instruction on MMIO ([`decode_mmio_rmw`]): reads the old
    /// value with `access(width, None)`, writes the result with
    /// `access(width, Some(value))` (not for CMP/TEST), sets the arithmetic
    /// flags of RFLAGS and steps RIP past the instruction. The default
    /// (for vCPUs without it) is [`Error::Unsupported`].
    ///
    /// [`decode_mmio_rmw`]: crate::mmio_rmw::decode_mmio_rmw
    fn emulate_mmio_rmw(
        &mut self,
        insn: &[u8],
        access: &mut dyn FnMut(AccessWidth, Option<u64>) -> u64,
    ) -> Result<()> {
        let _ = (insn, access);
        Err(Error::Unsupported(
            "read-modify-write MMIO instructions on this vCPU",
        ))
    }

    /// Whether an external interrupt injected now reaches the guest at the
    /// next entry: it has RFLAGS.IF set, no STI/MOV SS shadow, no event
    /// being delivered and nothing queued. A local APIC accepts an
    /// interrupt (IRR to ISR) only then. The default (vCPUs that cannot
    /// tell) is `true`.
    fn ready_for_interrupt(&self) -> bool {
        true
    }

    /// Whether the guest has maskable interrupts enabled (RFLAGS.IF). A
    /// guest that halts with them off can only be woken by an NMI, which
    /// no virtual device sends. The default is `true`.
    fn interrupts_enabled(&self) -> bool {
        true
    }

    /// Asks for an exit as soon as the guest can take an external
    /// interrupt (SVM: a virtual interrupt with the VINTR intercept; VMX:
    /// interrupt-window exiting), for an interrupt that waits in the local
    /// APIC. The default does nothing.
    fn request_interrupt_window(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Code-segment bitness from EFER.LMA and the CS access rights (VMX format).
pub(crate) fn bitness(efer_value: u64, cs_access_rights: u32, cr0: u64) -> u32 {
    use crate::state::ar;
    if cr0 & crate::vmx::controls::cr0::PE == 0 {
        16
    } else if efer_value & efer::LMA != 0 && cs_access_rights & ar::L != 0 {
        64
    } else if cs_access_rights & ar::DB != 0 {
        32
    } else {
        16
    }
}

/// Turns a decoded MMIO instruction into the exit, reading a store's source
/// register through `gpr`.
pub(crate) fn mmio_exit(
    addr: GuestPhysAddr,
    insn: &MmioInstruction,
    gpr: impl Fn(usize) -> u64,
) -> AxVCpuExitReason {
    match insn.op {
        MmioOp::Load {
            reg,
            reg_width,
            sign_extend,
        } => AxVCpuExitReason::MmioRead {
            addr,
            width: insn.width,
            reg,
            reg_width,
            signed_ext: sign_extend,
        },
        MmioOp::Store(_) => AxVCpuExitReason::MmioWrite {
            addr,
            width: insn.width,
            data: insn.store_value(gpr).unwrap_or(0),
        },
    }
}

/// Decodes `insn` for a guest in `loc`.
pub(crate) fn decode_for(loc: &GuestCodeLocation, insn: &[u8]) -> Result<MmioInstruction> {
    decode_mmio(insn, loc.bitness)
}

/// The hypercall register convention: number in RAX, arguments in RDI, RSI,
/// RDX, R10, R8, R9 (the Linux x86-64 system-call order); the result goes
/// back in RAX (`set_return_value`).
pub const HYPERCALL_ARG_REGS: [usize; 6] = [7, 6, 2, 10, 8, 9];

/// A hypercall exit built from the registers.
pub(crate) fn hypercall_exit(gpr: impl Fn(usize) -> u64) -> AxVCpuExitReason {
    AxVCpuExitReason::Hypercall {
        nr: gpr(0),
        args: HYPERCALL_ARG_REGS.map(&gpr),
    }
}

/// Interrupt vectors waiting to be injected, oldest first, without duplicates.
#[derive(Debug, Default, Clone)]
pub struct PendingInterrupts {
    queue: VecDeque<u8>,
}

impl PendingInterrupts {
    /// Queues `vector` (32..=255) unless it is already queued.
    pub fn push(&mut self, vector: u8) -> Result {
        if vector < 32 {
            return Err(Error::InvalidArgument("interrupt vector below 32"));
        }
        if !self.queue.contains(&vector) {
            self.queue.push_back(vector);
        }
        Ok(())
    }

    /// The next vector to inject.
    pub fn peek(&self) -> Option<u8> {
        self.queue.front().copied()
    }

    /// Removes the next vector.
    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    /// Number of queued vectors.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The XCR0 value a guest may set with XSETBV: bit 0 (x87) set, AVX (bit 2)
/// only with SSE (bit 1), and nothing the host does not support
/// (`host_supported`, from CPUID leaf 0xD). `None` means the guest gets #GP.
pub fn validate_xcr0(value: u64, host_supported: u64) -> Option<u64> {
    let ok = value & 1 != 0 && (value & 4 == 0 || value & 2 != 0) && value & !host_supported == 0;
    ok.then_some(value)
}

impl From<Error> for axvcpu::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unsupported(s) => Self::Unsupported(s),
            Error::InvalidArgument(s) => Self::InvalidArgument(s),
            Error::InvalidRegister(_) => {
                Self::InvalidArgument("invalid general-purpose register index")
            }
            Error::VmFailValid(n) => Self::Arch(ArchError::with_code(
                crate::vmx::instruction_error_message(n),
                n.into(),
            )),
            Error::VmFailInvalid => Self::arch("VMX instruction failed: no current VMCS"),
            Error::NoMemory(what) => Self::Arch(ArchError::new(what)),
            Error::VirtualizationUnavailable(s) => Self::Unsupported(s),
            Error::VmxDisabledByFirmware(v) => {
                Self::arch_code("VMX disabled by firmware (IA32_FEATURE_CONTROL)", v)
            }
            Error::ControlNotSupported { control, bit, .. } => Self::arch_code(control, bit.into()),
            Error::FixedBitsViolated {
                register, value, ..
            } => Self::arch_code(register, value),
            Error::VmcsValueTooWide { field, .. } => {
                Self::arch_code("value too wide for VMCS field", field.into())
            }
            Error::VmcsReadOnly(field) => {
                Self::arch_code("write to read-only VMCS field", field.into())
            }
            Error::InvalidVmcb(why) => Self::arch(why),
            Error::UnknownExit(code) => Self::arch_code("unknown exit reason", code),
            Error::Decode(why) => Self::arch(why),
            Error::EptMisconfiguration(gpa) => Self::arch_code("EPT misconfiguration", gpa),
        }
    }
}

/// The memory access flags of an MMIO exit (for logs and checks).
pub fn mmio_access_flags(exit: &AxVCpuExitReason) -> MappingFlags {
    match exit {
        AxVCpuExitReason::MmioRead { .. } => MappingFlags::READ,
        AxVCpuExitReason::MmioWrite { .. } => MappingFlags::WRITE,
        _ => MappingFlags::empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axaddrspace::AccessWidth;

    #[test]
    fn boot_protocols() {
        let e = GuestPhysAddr::from(0x10_000cusize);
        let s = BootProtocol::Multiboot { info_paddr: 0x9000 }
            .state(e)
            .unwrap();
        assert_eq!(
            (s.rip, s.regs.rbx, s.regs.rax),
            (0x10_000c, 0x9000, 0x2bad_b002)
        );
        let s = BootProtocol::LongMode {
            cr3: 0x1000,
            rsi: 0x7000,
        }
        .state(e)
        .unwrap();
        assert_eq!((s.rip, s.cr3, s.regs.rsi), (0x10_000c, 0x1000, 0x7000));
        let s = BootProtocol::RealMode
            .state(GuestPhysAddr::from(0x9_f000usize))
            .unwrap();
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0x9f00, 0x9_f000, 0));
        assert!(BootProtocol::RealMode.state(e).is_err());
        assert!(
            BootProtocol::Multiboot { info_paddr: 0 }
                .state(GuestPhysAddr::from(0x1_0000_0000usize))
                .is_err()
        );
    }

    #[test]
    fn bitness_rules() {
        assert_eq!(bitness(0x500, 0xa09b, 0x8000_0011), 64);
        assert_eq!(bitness(0, 0xc09b, 0x11), 32);
        assert_eq!(bitness(0, 0x9b, 0x11), 16);
        assert_eq!(bitness(0, 0xc09b, 0x10), 16); // real mode
        // LMA with a 32-bit CS: compatibility mode.
        assert_eq!(bitness(0x500, 0xc09b, 0x8000_0011), 32);
    }

    #[test]
    fn pending_queue() {
        let mut q = PendingInterrupts::default();
        q.push(0x30).unwrap();
        q.push(0x31).unwrap();
        q.push(0x30).unwrap();
        assert_eq!(q.len(), 2);
        assert!(q.push(14).is_err());
        assert_eq!(q.pop(), Some(0x30));
        assert_eq!(q.peek(), Some(0x31));
    }

    #[test]
    fn hypercall_registers() {
        let regs = [0x10u64, 1, 3, 0, 0, 0, 2, 1, 5, 6, 4, 0, 0, 0, 0, 0];
        match hypercall_exit(|i| regs[i]) {
            AxVCpuExitReason::Hypercall { nr, args } => {
                assert_eq!(nr, 0x10);
                assert_eq!(args, [1, 2, 3, 4, 5, 6]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mmio_exits() {
        let loc = GuestCodeLocation {
            linear_rip: 0,
            cr0: 0x8000_0011,
            cr3: 0,
            cr4: 0x20,
            efer: 0x500,
            bitness: 64,
        };
        let a = GuestPhysAddr::from(0xfee0_0030usize);
        // mov [rdi], r8b with r8 = 0x1ff.
        let i = decode_for(&loc, &[0x44, 0x88, 0x07]).unwrap();
        let exit = mmio_exit(a, &i, |r| if r == 8 { 0x1ff } else { 0 });
        assert_eq!(
            exit,
            AxVCpuExitReason::MmioWrite {
                addr: a,
                width: AccessWidth::Byte,
                data: 0xff
            }
        );
        assert_eq!(mmio_access_flags(&exit), MappingFlags::WRITE);
        let i = decode_for(&loc, &[0x0f, 0xb6, 0x07]).unwrap();
        assert_eq!(
            mmio_exit(a, &i, |_| 0),
            AxVCpuExitReason::MmioRead {
                addr: a,
                width: AccessWidth::Byte,
                reg: 0,
                reg_width: AccessWidth::Dword,
                signed_ext: false
            }
        );
    }

    #[test]
    fn xcr0_rules() {
        assert_eq!(validate_xcr0(0x7, 0x7), Some(0x7));
        assert_eq!(validate_xcr0(0x3, 0x7), Some(0x3));
        assert_eq!(validate_xcr0(0x6, 0x7), None); // x87 bit clear
        assert_eq!(validate_xcr0(0x5, 0x7), None); // AVX without SSE
        assert_eq!(validate_xcr0(0x7, 0x3), None); // host lacks AVX
    }

    #[test]
    fn error_conversion() {
        let e: axvcpu::Error = Error::VmFailValid(7).into();
        assert_eq!(
            e,
            axvcpu::Error::Arch(ArchError::with_code(
                "VM entry with invalid control field(s)",
                7
            ))
        );
        let e: axvcpu::Error = Error::Unsupported("x").into();
        assert_eq!(e, axvcpu::Error::Unsupported("x"));
    }
}
