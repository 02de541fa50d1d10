//! Prerequisite checks: which host programs a task needs and where they come from.

use std::path::Path;
use std::process::Command;

/// A program a task needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Prereq {
    /// Program looked up on `PATH`, or an absolute path that must exist.
    pub program: &'static str,
    /// Debian package providing it.
    pub package: &'static str,
}

/// QEMU, for the AMD SVM end-to-end runs.
pub const QEMU: Prereq = Prereq {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
};

/// The Debian kernel Type-1.5 boots (checked through its package's doc
/// directory: the image's file name carries the version).
pub const KERNEL: Prereq = Prereq {
    program: "/usr/share/doc/linux-image-amd64",
    package: "linux-image-amd64",
};

/// Headers of that kernel, for building the axhv module.
pub const KERNEL_HEADERS: Prereq = Prereq {
    program: "/usr/share/doc/linux-headers-amd64",
    package: "linux-headers-amd64",
};

/// busybox, the initramfs's user space (static: the initramfs has no libc).
pub const BUSYBOX: Prereq = Prereq {
    program: "/bin/busybox",
    package: "busybox-static",
};

/// cpio, to pack the initramfs.
pub const CPIO: Prereq = Prereq {
    program: "cpio",
    package: "cpio",
};

/// The C compiler of the kernel module.
pub const GCC: Prereq = Prereq {
    program: "gcc",
    package: "gcc",
};

/// make, for the kernel's module build.
pub const MAKE: Prereq = Prereq {
    program: "make",
    package: "make",
};

/// What the Type-1.5 boot needs (`cargo xtask run --mode type15`).
pub const LINUX: [Prereq; 7] = [QEMU, KERNEL, KERNEL_HEADERS, BUSYBOX, CPIO, GCC, MAKE];

/// Everything any task may need.
pub const ALL_PACKAGES: [Prereq; 7] = LINUX;

/// Whether `program` is on `PATH` (or exists, for an absolute path).
pub fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn is_debian_like() -> bool {
    Path::new("/etc/debian_version").exists() && have("apt-get")
}

/// Makes sure every program in `needs` is present: installs the missing
/// packages with apt-get when running as root on Debian/Ubuntu, otherwise
/// fails with the exact command to run.
pub fn check(needs: &[Prereq]) -> Result<(), String> {
    let missing: Vec<&Prereq> = needs.iter().filter(|p| !have(p.program)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|p| p.package).collect();
    pkgs.dedup();
    let progs: Vec<&str> = missing.iter().map(|p| p.program).collect();
    let cmd = format!("apt-get update && apt-get install -y {}", pkgs.join(" "));
    if is_root() && is_debian_like() {
        eprintln!("xtask: installing missing packages: {}", pkgs.join(" "));
        let ok = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let still: Vec<&str> = progs.iter().copied().filter(|p| !have(p)).collect();
        if ok && still.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "could not install {} (still missing: {}); try: {cmd}",
            pkgs.join(" "),
            still.join(" ")
        ));
    }
    Err(format!(
        "missing programs: {}. Install them with:\n    sudo sh -c '{cmd}'",
        progs.join(", ")
    ))
}
