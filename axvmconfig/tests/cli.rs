//! The `axvmconfig` command line tool, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_axvmconfig"))
        .args(args)
        .output()
        .expect("run axvmconfig")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("axvmconfig-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn check_prints_ok_for_each_good_file() {
    let hello = configs().join("hello.toml").display().to_string();
    let nimbos = configs().join("nimbos.toml").display().to_string();
    let out = tool(&["check", &hello, &nimbos]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, format!("{hello}: ok\n{nimbos}: ok\n"));
}

#[test]
fn check_fails_with_one_line_per_problem() {
    let hello = configs().join("hello.toml").display().to_string();
    let bad = data("bad-zero-vcpus.toml");
    let out = tool(&["check", &hello, &bad]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout, format!("{hello}: ok\n"));
    assert_eq!(
        stderr,
        format!("{bad}: vcpus.count: is 0; a VM needs at least one vCPU\n")
    );
}

#[test]
fn bad_usage_exits_2_with_the_usage() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["check"],
        &["encode", "x.toml"],
        &["dump"],
    ] {
        let out = tool(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr.contains("usage: axvmconfig"), "{args:?}: {stderr}");
    }
}

#[test]
fn encode_writes_a_blob_that_check_and_dump_read_back() {
    let linux = configs().join("linux.toml").display().to_string();
    let bin = scratch("linux.bin");
    let bin_s = bin.display().to_string();
    let out = tool(&["encode", &linux, "-o", &bin_s]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let bytes = std::fs::read(&bin).unwrap();
    assert_eq!(&bytes[..8], b"AXVMCFG\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);

    let out = tool(&["check", &bin_s]);
    assert_eq!(text(&out).0, format!("{bin_s}: ok\n"));
    let from_bin = tool(&["dump", &bin_s]);
    let from_toml = tool(&["dump", &linux]);
    assert_eq!(from_bin.status.code(), Some(0));
    assert_eq!(text(&from_bin).0, text(&from_toml).0);
    assert!(text(&from_toml).0.contains("protocol = \"bzimage\""));
}

#[test]
fn a_corrupt_blob_is_refused() {
    let hello = configs().join("hello.toml").display().to_string();
    let bin = scratch("hello.bin");
    let bin_s = bin.display().to_string();
    assert_eq!(
        tool(&["encode", &hello, "-o", &bin_s]).status.code(),
        Some(0)
    );
    let mut bytes = std::fs::read(&bin).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&bin, &bytes).unwrap();
    let out = tool(&["check", &bin_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .starts_with(&format!("{bin_s}: binary config: checksum mismatch")),
        "{:?}",
        text(&out)
    );
}

#[test]
fn new_prints_a_config_that_passes_check() {
    let out = tool(&[
        "new", "--name", "fresh", "--kernel", "guests/x", "--vcpus", "2", "--memory", "64M",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("name = \"fresh\""));
    assert!(stdout.contains("count = 2"));
    assert!(stdout.contains("size = 0x400_0000 # 64 MiB"));
    let file = scratch("fresh.toml");
    std::fs::write(&file, stdout).unwrap();
    let out = tool(&["check", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn new_refuses_a_config_that_would_be_invalid() {
    let out = tool(&["new", "--name", "x", "--kernel", "k", "--vcpus", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("vcpus.count: is 0"));
}
