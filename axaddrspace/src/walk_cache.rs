//! Remembering the guest's recent page walks, checked against its tables.
//!
//! On every MMIO exit the hypervisor translates the guest's RIP through the
//! guest's own page tables. The guest's tables rarely change, but the
//! hypervisor cannot know when they do: it does not intercept the guest's
//! page-table writes nor its `INVLPG`s, so a plain TLB-like cache could
//! hand out a translation the guest has already taken away.
//!
//! A [`WalkCache`] therefore remembers, with each successful walk, every
//! paging entry the walk read (its guest physical address and value). A
//! later walk of the same page (same walker settings, same CR3) reads those
//! entries again and compares: the walk is a function of CR3, the address
//! and the entries it reads, so if every entry still has its value, the
//! result is the same, and if one changed, the walk is done again in full.
//! This is exact, not a TLB: a changed table is seen at once. What it saves
//! is the walk's logic (reserved-bit and rights checks per level), not the
//! memory reads, which a [`crate::TranslationCache`] makes cheap.

use core::cell::Cell;

use crate::{
    GuestMemoryReader, GuestPageWalker, GuestPhysAddr, GuestTranslation, GuestVirtAddr, Result,
};

/// Number of walks a [`WalkCache`] remembers (an instruction can straddle
/// two pages).
pub const WALK_CACHE_ENTRIES: usize = 2;

/// The most paging entries one walk reads (4-level paging).
pub(crate) const MAX_READS: usize = 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Read {
    gpa: u64,
    value: u64,
    /// 4 or 8 bytes.
    size: u8,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Memo {
    walker: GuestPageWalker,
    cr3: u64,
    /// Guest virtual page number.
    vpage: u64,
    reads: [Read; MAX_READS],
    nreads: u8,
    result: GuestTranslation,
    /// Where the entries of `reads` are in host memory, valid while the
    /// address space they were found in has this
    /// [`mapping_epoch`](crate::AddrSpace::mapping_epoch) (0: not known).
    /// Only a [`crate::CachedGuestMemory`] fills and uses them.
    host_epoch: u64,
    host_addrs: [usize; MAX_READS],
}

/// Remembering the guest's recent page walks, checked against its tables.
///
/// On every MMIO exit the hypervisor translates the guest's RIP through the
/// guest's own page tables. The guest's tables rarely change, but the
/// hypervisor cannot know when they do: it does not intercept the guest's
/// page-table writes nor its `INVLPG`s, so a plain TLB-like cache could
/// hand out a translation the guest has already taken away.
///
/// A [`WalkCache`] therefore remembers, with each successful walk, every
/// paging entry the walk read (its guest physical address and value). A
/// later walk of the same page (same walker settings, same CR3) reads those
/// entries again and compares: the walk is a function of CR3, the address
/// and the entries it reads, so if every entry still has its value, the
/// result is the same, and if one changed, the walk is done again in full.
/// This is exact, not a TLB: a changed table is seen at once. What it saves
/// is the walk's logic (reserved-bit and rights checks per level), not the
/// memory reads, which a [`crate::TranslationCache`] makes cheap.
///
/// Keep one per vCPU.
#[derive(Debug, Clone, Default)]
pub struct WalkCache {
    memos: [Option<Memo>; WALK_CACHE_ENTRIES],
    next: usize,
    hits: u64,
    misses: u64,
}

impl WalkCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            memos: [None; WALK_CACHE_ENTRIES],
            next: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Forgets every walk.
    pub fn clear(&mut self) {
        self.memos = [None; WALK_CACHE_ENTRIES];
        self.next = 0;
    }

    /// Walks whose entries all still had their values.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Walks done in full.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Number of walks remembered.
    pub fn len(&self) -> usize {
        self.memos.iter().flatten().count()
    }

    /// Whether no walk is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WalkCache {
    /// The remembered walk of guest page `vpage` with `walker` and `cr3`.
    #[inline]
    pub(crate) fn find_mut(
        &mut self,
        walker: &GuestPageWalker,
        cr3: u64,
        vpage: u64,
    ) -> Option<&mut Memo> {
        self.memos
            .iter_mut()
            .flatten()
            .find(|m| m.vpage == vpage && m.cr3 == cr3 && m.walker == *walker)
    }

    /// Counts a walk answered from a memo.
    #[inline]
    pub(crate) fn count_hit(&mut self) {
        self.hits += 1;
    }
}

impl Memo {
    /// The remembered translation, for `va` in the same page.
    #[inline]
    pub(crate) fn result_for(&self, va: u64) -> GuestTranslation {
        let mut t = self.result;
        t.gpa =
            GuestPhysAddr::from_usize(((t.gpa.as_usize() as u64 & !0xfff) | (va & 0xfff)) as usize);
        t
    }

    /// The entries the walk read: guest physical address and size.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.reads[..usize::from(self.nreads)]
            .iter()
            .map(|r| (r.gpa, r.size))
    }

    /// The epoch under which [`Self::host_values_match`] may be used.
    #[inline]
    pub(crate) fn host_epoch(&self) -> u64 {
        self.host_epoch
    }

    /// Remembers where the entries are in host memory (`addrs`, in the
    /// order of [`Self::entries`]) under mapping epoch `epoch`.
    pub(crate) fn set_host_addrs(&mut self, epoch: u64, addrs: [usize; MAX_READS]) {
        self.host_epoch = epoch;
        self.host_addrs = addrs;
    }

    /// Whether every entry still has its value, read at the remembered host
    /// addresses.
    ///
    /// # Safety
    ///
    /// The address space whose [`mapping_epoch`](crate::AddrSpace::mapping_epoch)
    /// is [`Self::host_epoch`] is alive and still has that epoch, so that
    /// every remembered host address still backs its guest entry (epochs are
    /// unique and change on every unmap).
    #[inline]
    pub(crate) unsafe fn host_values_match(&self) -> bool {
        let n = usize::from(self.nreads);
        self.reads[..n]
            .iter()
            .zip(&self.host_addrs[..n])
            .all(|(r, &hva)| {
                // SAFETY: the caller's contract: `hva` is where the entry's
                // 4 or 8 bytes are (inside one host page, as entries are
                // naturally aligned), readable host memory.
                let now = unsafe {
                    if r.size == 8 {
                        core::ptr::read_unaligned(hva as *const u64)
                    } else {
                        u64::from(core::ptr::read_unaligned(hva as *const u32))
                    }
                };
                now == r.value
            })
    }

    /// Whether every entry the walk read still has its value in `mem`.
    #[inline]
    pub(crate) fn still_valid<M: GuestMemoryReader + ?Sized>(&self, mem: &M) -> bool {
        self.reads[..usize::from(self.nreads)].iter().all(|r| {
            let gpa = GuestPhysAddr::from_usize(r.gpa as usize);
            let now = if r.size == 8 {
                mem.read_u64(gpa)
            } else {
                mem.read_u32(gpa).map(u64::from)
            };
            now == Ok(r.value)
        })
    }
}

/// A reader that records the paging entries a walk reads.
struct Recorder<'a, M: ?Sized> {
    inner: &'a M,
    reads: [Cell<Read>; MAX_READS],
    n: Cell<usize>,
    /// A read that cannot be recorded happened: do not remember the walk.
    untracked: Cell<bool>,
}

impl<M: GuestMemoryReader + ?Sized> Recorder<'_, M> {
    fn record(&self, gpa: GuestPhysAddr, value: u64, size: u8) {
        let n = self.n.get();
        match self.reads.get(n) {
            Some(slot) => {
                slot.set(Read {
                    gpa: gpa.as_usize() as u64,
                    value,
                    size,
                });
                self.n.set(n + 1);
            }
            None => self.untracked.set(true),
        }
    }
}

impl<M: GuestMemoryReader + ?Sized> GuestMemoryReader for Recorder<'_, M> {
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
        self.untracked.set(true);
        self.inner.read_bytes(gpa, buf)
    }

    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32> {
        let v = self.inner.read_u32(gpa)?;
        self.record(gpa, v.into(), 4);
        Ok(v)
    }

    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64> {
        let v = self.inner.read_u64(gpa)?;
        self.record(gpa, v, 8);
        Ok(v)
    }
}

impl GuestPageWalker {
    /// [`translate`](Self::translate), answered from `cache` when the same
    /// page was translated before with the same settings and CR3 and every
    /// paging entry that walk read still has its value (see [`WalkCache`]).
    /// The result is always what
    /// [`translate`](Self::translate) would give now.
    pub fn translate_cached<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cache: &mut WalkCache,
        cr3: u64,
        gva: GuestVirtAddr,
    ) -> Result<GuestTranslation> {
        let va = gva.as_usize() as u64;
        if let Some(m) = cache.find_mut(self, cr3, va >> 12)
            && m.still_valid(mem)
        {
            let t = m.result_for(va);
            cache.count_hit();
            return Ok(t);
        }
        self.translate_and_remember(mem, cache, cr3, gva)
    }

    /// A full walk, remembered in `cache` if it succeeds.
    #[cold]
    #[inline(never)]
    pub(crate) fn translate_and_remember<M: GuestMemoryReader + ?Sized>(
        &self,
        mem: &M,
        cache: &mut WalkCache,
        cr3: u64,
        gva: GuestVirtAddr,
    ) -> Result<GuestTranslation> {
        cache.misses += 1;
        let rec = Recorder {
            inner: mem,
            reads: Default::default(),
            n: Cell::new(0),
            untracked: Cell::new(false),
        };
        let t = self.translate(&rec, cr3, gva)?;
        if !rec.untracked.get() {
            let vpage = gva.as_usize() as u64 >> 12;
            // A walk of this page remembered before (now stale) is replaced.
            let slot = cache
                .memos
                .iter()
                .position(|m| m.is_some_and(|m| m.vpage == vpage && m.cr3 == cr3))
                .unwrap_or(cache.next);
            cache.memos[slot] = Some(Memo {
                walker: *self,
                cr3,
                vpage,
                reads: rec.reads.map(Cell::into_inner),
                nreads: rec.n.get() as u8,
                result: t,
                host_epoch: 0,
                host_addrs: [0; MAX_READS],
            });
            if slot == cache.next {
                cache.next = (cache.next + 1) % WALK_CACHE_ENTRIES;
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{GuestPagingMode, MappingFlags, PageFaultReason};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Guest memory as a map of 8-byte words, counting reads.
    #[derive(Default)]
    struct Mem {
        words: RefCell<BTreeMap<u64, u64>>,
        reads: Cell<usize>,
    }

    impl Mem {
        fn set(&self, gpa: u64, v: u64) {
            self.words.borrow_mut().insert(gpa, v);
        }
    }

    impl GuestMemoryReader for Mem {
        fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result {
            self.reads.set(self.reads.get() + 1);
            let a = gpa.as_usize() as u64;
            for (i, b) in buf.iter_mut().enumerate() {
                let byte = a + i as u64;
                let w = self.words.borrow().get(&(byte & !7)).copied().unwrap_or(0);
                *b = (w >> (8 * (byte & 7))) as u8;
            }
            Ok(())
        }
    }

    const P_RW: u64 = 0x3;
    const P_RW_US: u64 = 0x7;

    /// 4-level tables: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at
    /// 0x4000, mapping GVA 0x20_0000 (4 KiB page) to GPA 0x50_0000.
    fn tables() -> Mem {
        let m = Mem::default();
        m.set(0x1000, 0x2000 | P_RW);
        m.set(0x2000, 0x3000 | P_RW);
        m.set(0x3000 + 8, 0x4000 | P_RW);
        m.set(0x4000, 0x50_0000 | P_RW_US);
        m
    }

    fn gva(a: u64) -> GuestVirtAddr {
        GuestVirtAddr::from_usize(a as usize)
    }

    #[test]
    fn a_repeated_walk_rereads_the_entries_and_agrees() {
        let m = tables();
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        let mut c = WalkCache::new();
        let t = w
            .translate_cached(&m, &mut c, 0x1000, gva(0x20_0123))
            .unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from_usize(0x50_0123));
        assert_eq!((c.hits(), c.misses(), m.reads.get()), (0, 1, 4));
        // Same page, another offset: answered from the memo after reading
        // the 4 entries again.
        let t2 = w
            .translate_cached(&m, &mut c, 0x1000, gva(0x20_0ff8))
            .unwrap();
        assert_eq!(t2, w.translate(&m, 0x1000, gva(0x20_0ff8)).unwrap());
        assert_eq!(t2.gpa, GuestPhysAddr::from_usize(0x50_0ff8));
        assert_eq!((c.hits(), c.misses()), (1, 1));
        assert_eq!(m.reads.get(), 4 + 4 + 4);
    }

    #[test]
    fn a_changed_entry_at_any_level_is_seen() {
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        for (entry, new) in [
            (0x4000, 0x60_0000 | P_RW_US),      // PT entry remapped
            (0x3000 + 8, 0),                    // PD entry cleared
            (0x2000, 0x3000 | 1),               // PDPT entry made read-only
            (0x1000, 0x2000 | P_RW | (1 << 7)), // PML4 entry with reserved PS
        ] {
            let m = tables();
            let mut c = WalkCache::new();
            w.translate_cached(&m, &mut c, 0x1000, gva(0x20_0000))
                .unwrap();
            m.set(entry, new);
            let now = w.translate(&m, 0x1000, gva(0x20_0000));
            assert_eq!(
                w.translate_cached(&m, &mut c, 0x1000, gva(0x20_0000)),
                now,
                "entry {entry:#x}"
            );
            assert_eq!(c.hits(), 0, "entry {entry:#x}");
        }
        // What the four cases give.
        let m = tables();
        m.set(0x2000, 0x3000 | 1);
        let t = w.translate(&m, 0x1000, gva(0x20_0000)).unwrap();
        assert!(!t.flags.contains(MappingFlags::WRITE));
        m.set(0x1000, 0x2000 | P_RW | (1 << 7));
        assert!(matches!(
            w.translate(&m, 0x1000, gva(0x20_0000)),
            Err(crate::Error::GuestPageFault {
                reason: PageFaultReason::ReservedBit,
                level: 4,
                ..
            })
        ));
    }

    #[test]
    fn cr3_and_walker_settings_are_part_of_the_key() {
        let m = tables();
        // A second hierarchy at CR3 0x8000 sharing the PDPT.
        m.set(0x8000, 0x2000 | P_RW);
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        let mut c = WalkCache::new();
        w.translate_cached(&m, &mut c, 0x1000, gva(0x20_0000))
            .unwrap();
        w.translate_cached(&m, &mut c, 0x8000, gva(0x20_0000))
            .unwrap();
        assert_eq!((c.hits(), c.misses()), (0, 2));
        let nx = GuestPageWalker { nxe: false, ..w };
        nx.translate_cached(&m, &mut c, 0x1000, gva(0x20_0000))
            .unwrap();
        assert_eq!((c.hits(), c.misses()), (0, 3));
        assert_eq!(c.len(), WALK_CACHE_ENTRIES);
    }

    #[test]
    fn faults_are_not_remembered_and_32_bit_walks_work() {
        let m = tables();
        let w = GuestPageWalker::new(GuestPagingMode::Level4);
        let mut c = WalkCache::new();
        assert!(
            w.translate_cached(&m, &mut c, 0x1000, gva(0x40_0000))
                .is_err()
        );
        assert!(c.is_empty());
        // 32-bit paging: PD at 0x9000, a 4 MiB page at GVA 0x40_0000.
        m.set(0x9000, (0xc0_0000 | 0x83) << 32);
        let w32 = GuestPageWalker::new(GuestPagingMode::Bits32);
        let t = w32
            .translate_cached(&m, &mut c, 0x9000, gva(0x40_1234))
            .unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from_usize(0xc0_1234));
        let t = w32
            .translate_cached(&m, &mut c, 0x9000, gva(0x40_1238))
            .unwrap();
        assert_eq!(t.gpa, GuestPhysAddr::from_usize(0xc0_1238));
        assert_eq!(c.hits(), 1);
        c.clear();
        assert!(c.is_empty());
    }
}
