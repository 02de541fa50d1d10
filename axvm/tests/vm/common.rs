//! Shared helpers: the test-guest config, a hand-made Multiboot image, VM
//! construction, guest page tables.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axaddrspace::test_util::HostHal;
use axaddrspace::{GuestPhysAddr, NestedPagingKind};
use axdevice::{Clock, RingBuffer};
use axvcpu::AxVCpuExitReason;
use axvm::Vm;
use axvmconfig::VmConfig;

use crate::mock::MockVcpu;

pub type TestVm = Vm<MockVcpu, HostHal>;

/// A clock that advances 1 µs each time it is read, so that a halted
/// vCPU waiting for its APIC timer gets there.
#[derive(Debug, Default)]
pub struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ns(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::SeqCst)
    }
}

pub fn gpa(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::from_usize(a)
}

/// `configs/test-guest.toml`, the config of every test guest.
pub fn test_config() -> VmConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/test-guest.toml");
    VmConfig::load_file(&path).unwrap()
}

/// Where `multiboot_image` loads by default, as the real test guests do.
pub const LOAD: u32 = 0x20_0000;
/// Entry offset of `multiboot_image`.
pub const ENTRY_OFF: u32 = 0x20;
/// Length of the image file.
pub const IMAGE_LEN: usize = 0x40;

/// A Multiboot kernel using the a.out kludge (header flags 0x0001_0002 like
/// the test guests: memory information wanted, address fields valid): the
/// header at file offset 0 says "load the file at `load`, zero up to
/// `load + 0x2000`, enter at `load + 0x20`", where the code is `jmp $`.
pub fn multiboot_image(load: u32) -> Vec<u8> {
    let mut image = vec![0u8; IMAGE_LEN];
    let magic: u32 = 0x1BAD_B002;
    let flags: u32 = 0x0001_0002;
    let words = [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        load,             // header_addr: the header is the file's first byte
        load,             // load_addr
        0,                // load_end_addr: the whole file
        load + 0x2000,    // bss_end_addr
        load + ENTRY_OFF, // entry_addr
    ];
    for (i, w) in words.iter().enumerate() {
        image[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    image[ENTRY_OFF as usize..ENTRY_OFF as usize + 2].copy_from_slice(&[0xeb, 0xfe]);
    // Recognisable bytes after the code.
    for (i, b) in image[0x30..].iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    image
}

/// A VM of `config` with the standard image, NPT, a ring-buffer console
/// and a [`TestClock`].
pub fn build_with(
    config: &VmConfig,
    script: Vec<AxVCpuExitReason>,
) -> axvm::Result<(TestVm, Arc<RingBuffer>)> {
    let console = Arc::new(RingBuffer::new(4096));
    let mut script = Some(script);
    let vm = Vm::new_with_clock(
        config,
        &multiboot_image(LOAD),
        NestedPagingKind::Npt,
        |_| script.take().unwrap_or_default(),
        console.clone(),
        Some(Arc::new(TestClock::default())),
    )?;
    Ok((vm, console))
}

/// A VM of the test-guest config whose vCPU 0 plays `script`.
pub fn build(script: Vec<AxVCpuExitReason>) -> (TestVm, Arc<RingBuffer>) {
    build_with(&test_config(), script).unwrap()
}

/// The mock behind vCPU 0.
pub fn mock(vm: &TestVm) -> &MockVcpu {
    vm.vcpu(0).unwrap().arch_vcpu()
}

/// The mock behind vCPU 0, mutably.
pub fn mock_mut(vm: &mut TestVm) -> &mut MockVcpu {
    vm.vcpu_mut(0).unwrap().arch_vcpu_mut()
}

pub fn read_u32(vm: &TestVm, at: usize) -> u32 {
    vm.aspace().read_obj::<u32>(gpa(at)).unwrap()
}

pub fn read_bytes(vm: &TestVm, at: usize, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    vm.aspace().read(gpa(at), &mut b).unwrap();
    b
}

/// Guest page tables for 4-level paging, rooted at [`CR3`]: GVA page
/// `CODE_GVA` maps GPA `0x30_0000`, and the next page maps GPA `0x50_0000`
/// (guest-contiguous, physically apart).
pub const CR3: u64 = 0x1000;
pub const CODE_GVA: u64 = 0x40_0000;
pub const CODE_GPA: usize = 0x30_0000;
pub const NEXT_GPA: usize = 0x50_0000;

pub fn map_code_pages(vm: &mut TestVm) {
    const P_RW: u64 = 0b11;
    let a = vm.aspace_mut();
    // PML4[0] -> PDPT 0x2000 -> PD 0x3000; PD[2] (GVA 0x40_0000) -> PT 0x4000.
    a.write_obj(gpa(0x1000), &(0x2000u64 | P_RW)).unwrap();
    a.write_obj(gpa(0x2000), &(0x3000u64 | P_RW)).unwrap();
    a.write_obj(gpa(0x3000 + 2 * 8), &(0x4000u64 | P_RW))
        .unwrap();
    a.write_obj(gpa(0x4000), &(CODE_GPA as u64 | P_RW)).unwrap();
    a.write_obj(gpa(0x4008), &(NEXT_GPA as u64 | P_RW)).unwrap();
}
