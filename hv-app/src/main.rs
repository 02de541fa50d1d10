//! hv-app: the hypervisor binary.
//!
//! Built for `x86_64-unknown-none` it is a Multiboot v1 image that QEMU
//! `-kernel` or GRUB boots (see the README for the boot flow). Built for the
//! host it only says so: the host-testable logic lives in the `hv_app`
//! library.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod ap_boot;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod cpu_local;
#[cfg(target_os = "none")]
mod crash;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod gdt;
#[cfg(target_os = "none")]
mod hal;
#[cfg(target_os = "none")]
mod host_timer;
#[cfg(target_os = "none")]
mod lapic;
#[cfg(target_os = "none")]
mod linux_entry;
#[cfg(target_os = "none")]
mod linux_vms;
#[cfg(target_os = "none")]
mod mem;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
mod phys;
#[cfg(target_os = "none")]
mod pio;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod trap;
#[cfg(target_os = "none")]
mod tsc;
#[cfg(target_os = "none")]
mod vmm;

/// How hv-app was entered.
#[cfg(target_os = "none")]
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// Booted by a Multiboot loader (Type-1): its EAX and EBX.
    Multiboot {
        /// The loader's magic (EAX).
        magic: u32,
        /// The Multiboot information's address (EBX).
        info_addr: u32,
    },
    /// Entered from Linux by the `axhv` module (Type-1.5), on the first CPU
    /// to arrive: the reserved region the image runs in.
    Linux {
        /// Physical base of the region.
        region: u64,
        /// Its size in bytes.
        size: u64,
        /// The end of the image (`.bss` included): the pool starts here.
        image_end: u64,
    },
}

/// The common main of both entries: console and log, the frame allocator
/// and heap (over the Multiboot memory map, or over the rest of Linux's
/// reserved region), then either the boot modules' VMs (Type-1, never
/// returns: it powers off) or the VM table that the root VM's hypercalls
/// manage (Type-1.5, returns so that the calling CPU resumes Linux as the
/// root VM).
#[cfg(target_os = "none")]
fn hv_main(entry: Entry) -> Result<(), &'static str> {
    let (magic, info_addr) = match entry {
        Entry::Multiboot { magic, info_addr } => (magic, info_addr),
        Entry::Linux {
            region,
            size,
            image_end,
        } => {
            // Linux programmed COM1 already (its ttyS0): only the logger.
            console::init_logger(log::LevelFilter::Info);
            println!(
                "axhv hv-app {} (Linux entry, region {region:#x}+{size:#x})",
                env!("CARGO_PKG_VERSION")
            );
            let setup =
                mem::init_region(image_end.next_multiple_of(4096), region + size).map_err(|e| {
                    println!("axhv: memory setup failed: {e}");
                    "memory setup failed"
                })?;
            let (free, _) = mem::frame_counts();
            println!(
                "axhv: pool {} MiB free, heap {} MiB",
                free >> 8,
                setup.heap.len() >> 20
            );
            return linux_vms::init(region, size);
        }
    };
    use hv_app::cmdline::CrashTest;
    use hv_app::multiboot::BootInfo;
    use hv_app::port::ExitCode;

    console::init();
    console::init_logger(log::LevelFilter::Info);
    println!();
    println!("axhv hv-app {} (multiboot)", env!("CARGO_PKG_VERSION"));

    // From here on an exception prints a report instead of resetting.
    gdt::init_bsp();
    trap::init();
    log::debug!("GDT with TSS (IST stacks for #DF, NMI, #MC) and IDT loaded");

    let mem = phys::IdentityMapped;
    let mut cmdline_buf = [0u8; 512];
    let boot = BootInfo::parse(&mem, magic, u64::from(info_addr));
    let result = boot.and_then(|b| Ok((b, report_boot_info(&b, &mem, &mut cmdline_buf)?)));
    let (boot, cmdline) = match result {
        Ok(v) => v,
        Err(e) => {
            log::error!("multiboot information at {info_addr:#x} is unusable: {e}");
            pio::power_off(ExitCode::Failure);
        }
    };

    match mem::init(&boot, &mem) {
        Ok(setup) => {
            let (free, total) = mem::frame_counts();
            log::info!(
                "frames: {} MiB free of {} MiB usable, {} range(s), bitmap {} KiB at {:#x}",
                free >> 8,
                total >> 8,
                setup.ranges,
                setup.bitmap.len() >> 10,
                setup.bitmap.start
            );
            log::info!(
                "heap: {} MiB at [{:#x}, {:#x})",
                setup.heap.len() >> 20,
                setup.heap.start,
                setup.heap.end
            );
        }
        Err(e) => {
            log::error!("memory setup failed: {e}");
            pio::power_off(ExitCode::Failure);
        }
    }

    let per_cpu = cpu_local::init_bsp();
    match cpu_local::current() {
        Some(p) if core::ptr::eq(p, per_cpu) && p.cpu_id == 0 => log::info!(
            "per-CPU data: CPU {} (APIC ID {}, BSP) at {:#x} via GS base",
            p.cpu_id,
            p.apic_id,
            p.self_addr
        ),
        _ => {
            log::error!("per-CPU data: GS base does not lead back to the BSP's data");
            pio::power_off(ExitCode::Failure);
        }
    }

    if let Err(e) = self_check() {
        log::error!("memory self-check failed: {e}");
        pio::power_off(ExitCode::Failure);
    }

    // The APs come up, report and park; everything below runs on the BSP.
    smp::start_aps(&boot, &mem);

    match CrashTest::from_cmdline(cmdline.unwrap_or("")) {
        Ok(Some(kind)) => crash::trigger(kind),
        Ok(None) => {}
        Err(e) => log::warn!("ignoring the crash= switch: {e}"),
    }

    let vms = match vmm::find_vms(&boot, &mem) {
        Ok(vms) => vms,
        Err(e) => {
            log::error!("boot modules: {e}");
            pio::power_off(ExitCode::Failure);
        }
    };
    if vms.is_empty() {
        log::info!("axhv: no VMs configured (no vmcfg/vmimage boot modules), powering off");
        pio::power_off(ExitCode::Success)
    }
    log::info!("{} VM(s) in the boot modules", vms.len());
    match vmm::run_all(&vms) {
        Some(status) => {
            log::info!("axhv: powering off with status {status}");
            pio::power_off_with(status)
        }
        None => pio::power_off(ExitCode::Failure),
    }
}

/// Allocates and frees frames (single, the SVM IOPM and MSRPM sizes, a
/// 2 MiB aligned run) and heap objects, and checks that the counters come
/// back and the memory is usable.
#[cfg(target_os = "none")]
fn self_check() -> Result<(), &'static str> {
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use hv_app::memory::FRAME_SIZE;

    let (free_before, _) = mem::frame_counts();
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for (count, align) in [(1, 1), (3, 1), (2, 1), (512, 512)] {
        let addr = mem::alloc_frames(count, align).ok_or("frame allocation failed")?;
        if addr % (align as u64 * FRAME_SIZE) != 0 {
            return Err("misaligned frame run");
        }
        if runs
            .iter()
            .any(|&(a, c)| addr < a + c as u64 * FRAME_SIZE && a < addr + count as u64 * FRAME_SIZE)
        {
            return Err("overlapping frame runs");
        }
        let bytes = count * FRAME_SIZE as usize;
        // SAFETY: freshly allocated, identity-mapped frames that nothing
        // else uses.
        let run = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, bytes) };
        run.fill(0xa5);
        if run[0] != 0xa5 || run[bytes - 1] != 0xa5 {
            return Err("frame memory does not hold a pattern");
        }
        runs.push((addr, count));
    }
    for &(addr, count) in &runs {
        log::debug!("self-check: {count} frames at {addr:#x}");
    }
    let (free_during, _) = mem::frame_counts();
    for (addr, count) in runs.drain(..) {
        mem::dealloc_frames(addr, count).map_err(|_| "frame free failed")?;
    }
    let (free_after, _) = mem::frame_counts();
    if free_during != free_before - 518 || free_after != free_before {
        return Err("frame counters do not add up");
    }
    if mem::dealloc_frames(mem::alloc_frames(1, 1).ok_or("no frame")?, 1).is_err() {
        return Err("single frame round trip failed");
    }
    drop(runs);

    let used_before = mem::heap_stats().used;
    {
        let v: Vec<u64> = (0..10_000).collect();
        if v.iter().sum::<u64>() != 49_995_000 {
            return Err("Vec contents are wrong");
        }
        // Built on the heap: `Box::new([7u8; 65536])` would first put the
        // array on the stack in a debug build, overflowing the 64 KiB boot
        // stack into the boot page tables below it.
        let big: Box<[u8]> = alloc::vec![7u8; 64 * 1024].into_boxed_slice();
        let text = alloc::format!(
            "{} {}",
            v.len(),
            big.iter().map(|&b| u64::from(b)).sum::<u64>()
        );
        if text != "10000 458752" {
            return Err("formatted String is wrong");
        }
    }
    if mem::heap_stats().used != used_before {
        return Err("heap usage did not come back");
    }
    log::info!(
        "self-check passed: frames and heap allocate, free and reuse ({} heap bytes in use)",
        used_before
    );
    Ok(())
}

/// Applies `log=` from the command line, logs what the loader passed and
/// returns the command line (copied into `cmdline_buf`).
#[cfg(target_os = "none")]
fn report_boot_info<'b>(
    boot: &hv_app::multiboot::BootInfo,
    mem: &phys::IdentityMapped,
    cmdline_buf: &'b mut [u8],
) -> hv_app::Result<Option<&'b str>> {
    use hv_app::multiboot::{read_c_str, summarize};

    let mut buf = [0u8; 512];
    let cmdline = boot.cmdline(mem, cmdline_buf)?;
    if let Some(cmdline) = cmdline {
        if let Some(level) = hv_app::logfmt::level_from_cmdline(cmdline) {
            log::set_max_level(level);
        }
        log::info!("cmdline: {cmdline:?}");
    }
    if let Some(name) = boot.boot_loader_name(mem, &mut buf)? {
        log::info!("boot loader: {name}");
    }
    log::debug!(
        "multiboot info at {:#x}, flags {:#x}",
        boot.info_addr,
        boot.flags.bits()
    );
    if let Some(m) = boot.memory {
        log::info!(
            "mem_lower {} KiB, mem_upper {} KiB",
            m.lower_kib,
            m.upper_kib
        );
    }
    for region in boot.memory_map(mem) {
        let r = region?;
        log::info!(
            "  mmap [{:#018x}, {:#018x}) {:?}",
            r.base,
            r.base + r.length, // cannot overflow: checked by the iterator
            r.kind
        );
    }
    let s = summarize(boot.memory_map(mem))?;
    log::info!(
        "memory map: {} regions, {} MiB available in {} regions, top of RAM {:#x}",
        s.regions,
        s.available_bytes >> 20,
        s.available_regions,
        s.available_end
    );
    let mut count = 0;
    for (i, module) in boot.modules(mem).enumerate() {
        let m = module?;
        let name = match m.string_addr {
            0 => "",
            a => read_c_str(mem, u64::from(a), &mut buf)?,
        };
        log::info!(
            "module {i}: [{:#x}, {:#x}) {} bytes {name:?}",
            m.start,
            m.end,
            m.len()
        );
        count += 1;
    }
    log::info!("{count} boot modules");
    Ok(cmdline)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hv-app is a bare-metal image: build it with \
         `cargo build -p hv-app --target x86_64-unknown-none --release` \
         or run it with `cargo xtask run`"
    );
    std::process::exit(2);
}
