//! hv-app: the hypervisor binary.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod entry {}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hv-app is a bare-metal image: build it with \
         `cargo build -p hv-app --target x86_64-unknown-none --release` \
         or run it with `cargo xtask run`"
    );
    std::process::exit(2);
}
