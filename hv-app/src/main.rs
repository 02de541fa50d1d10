//! hv-app: the hypervisor binary.
//!
//! Built for `x86_64-unknown-none` it is a Multiboot v1 image that QEMU
//! `-kernel` or GRUB boots (see the README for the boot flow). Built for the
//! host it only says so: the host-testable logic lives in the `hv_app`
//! library.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
mod phys;
#[cfg(target_os = "none")]
mod pio;

/// The common main of every boot entry: `magic` and `info_addr` are the
/// Multiboot loader's EAX and EBX.
#[cfg(target_os = "none")]
fn hv_main(magic: u32, info_addr: u32) -> ! {
    use hv_app::multiboot::BootInfo;
    use hv_app::port::ExitCode;

    console::init();
    console::init_logger(log::LevelFilter::Info);
    println!();
    println!("axhv hv-app {} (multiboot)", env!("CARGO_PKG_VERSION"));

    let mem = phys::IdentityMapped;
    let result = BootInfo::parse(&mem, magic, u64::from(info_addr))
        .and_then(|boot| report_boot_info(&boot, &mem));
    if let Err(e) = result {
        log::error!("multiboot information at {info_addr:#x} is unusable: {e}");
        pio::power_off(ExitCode::Failure);
    }

    log::info!("axhv: no VMs configured yet (issue #3), powering off");
    pio::power_off(ExitCode::Success)
}

/// Applies `log=` from the command line and logs what the loader passed.
#[cfg(target_os = "none")]
fn report_boot_info(
    boot: &hv_app::multiboot::BootInfo,
    mem: &phys::IdentityMapped,
) -> hv_app::Result {
    use hv_app::multiboot::{read_c_str, summarize};

    let mut buf = [0u8; 512];
    if let Some(cmdline) = boot.cmdline(mem, &mut buf)? {
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
    Ok(())
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
