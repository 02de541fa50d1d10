//! A small per-vCPU cache of decoded MMIO instructions.
//!
//! A guest touches its devices from a handful of places (a driver's
//! register accessors), so the same instruction bytes come back on almost
//! every MMIO exit. Decoding them with `iced-x86` each time costs several
//! hundred instructions; this cache remembers the last few results.
//!
//! The key is what the decode depends on and nothing else: the
//! instruction's own bytes and the code-segment bitness. A lookup compares
//! the bytes just fetched from the guest with the cached ones, so code the
//! guest rewrote (self-modifying code, a module loaded at the same address,
//! a remapped page) is never given a stale decode: different bytes miss.
//! Bytes after the end of the cached instruction do not matter (they are
//! the next instructions).

use crate::decode::{MAX_INSTRUCTION_LEN, MmioInstruction, decode_mmio};
use crate::{Error, Result};

/// Number of cached instructions.
pub const DECODE_CACHE_ENTRIES: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The instruction's bytes 0..8 and 8..15 as little-endian words, each
    /// masked to the instruction's length.
    lo: u64,
    hi: u64,
    /// The masks for `lo` and `hi`.
    lo_mask: u64,
    hi_mask: u64,
    /// Code-segment bitness (16, 32, 64); 0 marks an empty entry.
    bitness: u32,
    insn: MmioInstruction,
}

impl Entry {
    const EMPTY: Self = Self {
        lo: 0,
        hi: 0,
        lo_mask: 0,
        hi_mask: 0,
        bitness: 0,
        insn: MmioInstruction {
            width: axaddrspace::AccessWidth::Byte,
            op: crate::decode::MmioOp::Store(crate::decode::StoreSource::Immediate(0)),
            len: 0,
        },
    };
}

/// A mask of the low `n` bytes of a word (`n` may exceed 8).
const fn byte_mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// `bytes` (at most [`MAX_INSTRUCTION_LEN`]) as two little-endian words:
/// bytes 0..8 and 8..15, zero padded.
#[inline(always)]
fn words(bytes: &[u8]) -> (u64, u64) {
    if let Some(b) = bytes.first_chunk::<MAX_INSTRUCTION_LEN>() {
        // The usual case (a full fetch): two fixed-size loads.
        let lo = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let hi = u64::from_le_bytes([b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14]]) >> 8;
        return (lo, hi);
    }
    let mut b = [0u8; 16];
    let n = bytes.len().min(MAX_INSTRUCTION_LEN);
    b[..n].copy_from_slice(&bytes[..n]);
    let lo = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let hi = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    (lo, hi)
}

/// Decoded MMIO instructions keyed by their bytes and bitness (see the
/// module documentation). Replacement is round robin.
#[derive(Debug, Clone)]
pub struct DecodeCache {
    entries: [Entry; DECODE_CACHE_ENTRIES],
    next: usize,
    hits: u64,
    misses: u64,
}

impl Default for DecodeCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DecodeCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            entries: [Entry::EMPTY; DECODE_CACHE_ENTRIES],
            next: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Decodes the instruction at the start of `bytes` for a code segment of
    /// `bitness` bits, as [`decode_mmio`] does, answering from the cache
    /// when the same bytes were decoded before with the same bitness.
    #[inline]
    pub fn decode(&mut self, bytes: &[u8], bitness: u32) -> Result<MmioInstruction> {
        let n = bytes.len().min(MAX_INSTRUCTION_LEN);
        let (lo, hi) = words(bytes);
        for e in &self.entries {
            if e.bitness == bitness
                && lo & e.lo_mask == e.lo
                && hi & e.hi_mask == e.hi
                && e.insn.len <= n
            {
                self.hits += 1;
                return Ok(e.insn);
            }
        }
        self.miss(&bytes[..n], bitness)
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, bytes: &[u8], bitness: u32) -> Result<MmioInstruction> {
        self.misses += 1;
        let insn = decode_mmio(bytes, bitness)?;
        let len = insn.len;
        if len == 0 || len > bytes.len() {
            return Err(Error::Decode("decoded length outside the fetched bytes"));
        }
        let (lo, hi) = words(&bytes[..len]);
        let (lo_mask, hi_mask) = (byte_mask(len), byte_mask(len.saturating_sub(8)));
        self.entries[self.next] = Entry {
            lo: lo & lo_mask,
            hi: hi & hi_mask,
            lo_mask,
            hi_mask,
            bitness,
            insn,
        };
        self.next = (self.next + 1) % DECODE_CACHE_ENTRIES;
        Ok(insn)
    }

    /// Forgets every cached instruction.
    pub fn clear(&mut self) {
        self.entries = [Entry::EMPTY; DECODE_CACHE_ENTRIES];
        self.next = 0;
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that had to decode.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Number of cached instructions.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.bitness != 0).count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{MmioOp, StoreSource};
    use axaddrspace::AccessWidth;

    /// `mov eax, [rbx]` (8b 03), then `nop; nop` of the next instructions.
    const LOAD: [u8; 4] = [0x8b, 0x03, 0x90, 0x90];

    #[test]
    fn same_bytes_hit_and_give_the_same_decode() {
        let mut c = DecodeCache::new();
        let a = c.decode(&LOAD, 64).unwrap();
        assert_eq!((c.hits(), c.misses()), (0, 1));
        assert_eq!(a.len, 2);
        assert_eq!(a.width, AccessWidth::Dword);
        // What follows the instruction does not matter.
        let b = c.decode(&[0x8b, 0x03, 0xcc, 0xcc, 0xcc], 64).unwrap();
        assert_eq!(a, b);
        assert_eq!((c.hits(), c.misses()), (1, 1));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn changed_bytes_miss_and_decode_again() {
        let mut c = DecodeCache::new();
        c.decode(&LOAD, 64).unwrap();
        // The guest rewrote the instruction: `mov [rbx], eax` (89 03), a store.
        let s = c.decode(&[0x89, 0x03, 0x90], 64).unwrap();
        assert_eq!(s.op, MmioOp::Store(StoreSource::Register(0)));
        assert_eq!(c.misses(), 2);
        // `mov ecx, [rbx]` (8b 0b): only the ModRM byte differs.
        let l = c.decode(&[0x8b, 0x0b], 64).unwrap();
        assert!(matches!(l.op, MmioOp::Load { reg: 1, .. }));
        assert_eq!((c.hits(), c.misses()), (0, 3));
        // A change in the last byte of a long instruction misses too:
        // mov dword [rax+0xb0], imm32 (c7 80 disp32 imm32).
        let w0 = [0xc7, 0x80, 0xb0, 0, 0, 0, 1, 0, 0, 0];
        let mut w1 = w0;
        w1[9] = 0x80;
        let a = c.decode(&w0, 64).unwrap();
        let b = c.decode(&w1, 64).unwrap();
        assert_eq!(a.op, MmioOp::Store(StoreSource::Immediate(1)));
        assert_eq!(b.op, MmioOp::Store(StoreSource::Immediate(0x8000_0001)));
        assert_eq!(c.hits(), 0);
    }

    #[test]
    fn bitness_is_part_of_the_key() {
        let mut c = DecodeCache::new();
        // 66 8b 03: a 16-bit load in 32/64-bit code, a 32-bit one in 16-bit code.
        let insn = [0x66, 0x8b, 0x03];
        assert_eq!(c.decode(&insn, 32).unwrap().width, AccessWidth::Word);
        assert_eq!(c.decode(&insn, 16).unwrap().width, AccessWidth::Dword);
        assert_eq!((c.hits(), c.misses()), (0, 2));
        assert_eq!(c.decode(&insn, 32).unwrap().width, AccessWidth::Word);
        assert_eq!(c.hits(), 1);
    }

    #[test]
    fn truncated_bytes_do_not_hit_a_longer_instruction() {
        let mut c = DecodeCache::new();
        let w = [0xc7, 0x80, 0xb0, 0, 0, 0, 1, 0, 0, 0];
        c.decode(&w, 64).unwrap();
        // Only 6 bytes could be fetched: not the cached 10-byte instruction.
        assert!(c.decode(&w[..6], 64).is_err());
        assert_eq!(c.hits(), 0);
    }

    #[test]
    fn errors_are_not_cached_and_old_entries_are_replaced() {
        let mut c = DecodeCache::new();
        // add [rbx], eax (01 03): not an MMIO form the decoder handles.
        assert!(c.decode(&[0x01, 0x03], 64).is_err());
        assert!(c.is_empty());
        // Fill the cache with 4 loads into different registers, then a 5th
        // replaces the oldest.
        for reg in [0u8, 1, 2, 3, 5] {
            c.decode(&[0x8b, 0x03 | (reg << 3)], 64).unwrap();
        }
        assert_eq!(c.len(), DECODE_CACHE_ENTRIES);
        let misses = c.misses();
        c.decode(&[0x8b, 0x03], 64).unwrap(); // evicted: decoded again
        assert_eq!(c.misses(), misses + 1);
        c.decode(&[0x8b, 0x03 | (5 << 3)], 64).unwrap(); // still there
        assert_eq!(c.misses(), misses + 1);
        c.clear();
        assert!(c.is_empty());
    }
}
