//! The general-purpose registers of a guest.

use crate::{Error, Result};

/// The 16 general-purpose registers, in the order of their x86 encoding
/// (the `reg`/`rm` numbers of ModRM with REX): 0 = RAX, 1 = RCX, 2 = RDX,
/// 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15.
///
/// The layout is `#[repr(C)]` and fixed: the VM-entry/exit assembly saves and
/// restores the guest registers at `8 * index`. The `rsp` slot is kept only so
/// the indices line up: the guest's RSP lives in the VMCS/VMCB, and the vCPU
/// backends route index 4 there.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GeneralRegisters {
    /// RAX (index 0).
    pub rax: u64,
    /// RCX (index 1).
    pub rcx: u64,
    /// RDX (index 2).
    pub rdx: u64,
    /// RBX (index 3).
    pub rbx: u64,
    /// Placeholder for RSP (index 4); the real value lives in the VMCS/VMCB.
    pub rsp_unused: u64,
    /// RBP (index 5).
    pub rbp: u64,
    /// RSI (index 6).
    pub rsi: u64,
    /// RDI (index 7).
    pub rdi: u64,
    /// R8 (index 8).
    pub r8: u64,
    /// R9 (index 9).
    pub r9: u64,
    /// R10 (index 10).
    pub r10: u64,
    /// R11 (index 11).
    pub r11: u64,
    /// R12 (index 12).
    pub r12: u64,
    /// R13 (index 13).
    pub r13: u64,
    /// R14 (index 14).
    pub r14: u64,
    /// R15 (index 15).
    pub r15: u64,
}

/// Index of RAX.
pub const RAX: usize = 0;
/// Index of RCX.
pub const RCX: usize = 1;
/// Index of RDX.
pub const RDX: usize = 2;
/// Index of RBX.
pub const RBX: usize = 3;
/// Index of RSP.
pub const RSP: usize = 4;
/// Index of RBP.
pub const RBP: usize = 5;
/// Index of RSI.
pub const RSI: usize = 6;
/// Index of RDI.
pub const RDI: usize = 7;

const NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

impl GeneralRegisters {
    /// Number of general-purpose registers.
    pub const COUNT: usize = 16;

    fn as_array(&self) -> &[u64; 16] {
        // SAFETY: `GeneralRegisters` is `#[repr(C)]` with exactly 16 `u64`
        // fields and no padding, so it has the layout of `[u64; 16]`.
        unsafe { &*(self as *const Self as *const [u64; 16]) }
    }

    fn as_array_mut(&mut self) -> &mut [u64; 16] {
        // SAFETY: as in `as_array`; the exclusive borrow is carried over.
        unsafe { &mut *(self as *mut Self as *mut [u64; 16]) }
    }

    /// The value of register `index` (0 = RAX ... 15 = R15).
    pub fn get(&self, index: usize) -> Result<u64> {
        self.as_array()
            .get(index)
            .copied()
            .ok_or(Error::InvalidRegister(index))
    }

    /// Sets register `index` (0 = RAX ... 15 = R15) to `value`.
    pub fn set(&mut self, index: usize, value: u64) -> Result {
        let slot = self
            .as_array_mut()
            .get_mut(index)
            .ok_or(Error::InvalidRegister(index))?;
        *slot = value;
        Ok(())
    }

    /// The assembler name of the 64-bit register `index` ("rax", "r15", ...).
    pub fn name(index: usize) -> Option<&'static str> {
        NAMES.get(index).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_encoding_order() {
        assert_eq!(size_of::<GeneralRegisters>(), 128);
        assert_eq!(offset_of!(GeneralRegisters, rax), 0);
        assert_eq!(offset_of!(GeneralRegisters, rcx), 8);
        assert_eq!(offset_of!(GeneralRegisters, rbx), 3 * 8);
        assert_eq!(offset_of!(GeneralRegisters, rsp_unused), 4 * 8);
        assert_eq!(offset_of!(GeneralRegisters, rdi), 7 * 8);
        assert_eq!(offset_of!(GeneralRegisters, r8), 8 * 8);
        assert_eq!(offset_of!(GeneralRegisters, r15), 15 * 8);
    }

    #[test]
    fn get_set_by_index() {
        let mut r = GeneralRegisters::default();
        r.set(RBX, 0x1234).unwrap();
        r.set(9, 0xdead).unwrap();
        r.set(RDI, 7).unwrap();
        assert_eq!(r.rbx, 0x1234);
        assert_eq!(r.r9, 0xdead);
        assert_eq!(r.rdi, 7);
        assert_eq!(r.get(RBX).unwrap(), 0x1234);
        assert_eq!(r.get(RAX).unwrap(), 0);
        assert_eq!(r.set(16, 1), Err(Error::InvalidRegister(16)));
        assert_eq!(r.get(99), Err(Error::InvalidRegister(99)));
        assert_eq!(GeneralRegisters::name(RSP), Some("rsp"));
        assert_eq!(GeneralRegisters::name(12), Some("r12"));
        assert_eq!(GeneralRegisters::name(16), None);
    }
}
