//! Prerequisite checks: which host programs a task needs and where they come from.

use std::path::Path;
use std::process::Command;

/// A program a task needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Prereq {
    /// Program looked up on `PATH`.
    pub program: &'static str,
    /// Debian package providing it.
    pub package: &'static str,
}

/// QEMU, for the AMD SVM end-to-end runs.
pub const QEMU: Prereq = Prereq {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
};

/// Everything any task may need.
pub const ALL_PACKAGES: [Prereq; 1] = [QEMU];

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
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
