//! `axvmconfig`: check, show, encode and create VM configuration files.

use std::io::Write;
use std::process::ExitCode;

use axvmconfig::{BootProtocol, DeviceKind, EmulatedDevice, Error, VmConfig, parse_size};

const USAGE: &str = "\
usage: axvmconfig <command> [arguments]

commands:
  check FILE...            validate configs (TOML or binary); prints `FILE: ok` for each
                           good one and one `FILE: FIELD: REASON` line per problem
  dump [--debug] FILE      print FILE (TOML or binary) as normalized TOML, or as the
                           Rust Debug form with --debug
  encode FILE -o OUT       validate FILE and write its binary form to OUT
  new --name NAME --kernel PATH [--id N] [--vcpus N] [--memory SIZE]
      [--protocol multiboot|raw|bzimage] [--load-addr ADDR] [-o OUT]
                           print (or write to OUT) a new config that passes `check`:
                           RAM at 0 (default 16M), COM1 UART and debug-exit port
  help                     this text

exit status: 0 success, 1 a config is bad or a file cannot be read, 2 bad usage
";

/// The outcome of a command: exit status, or usage error text.
enum Failure {
    /// Bad usage: print this and the usage text, exit 2.
    Usage(String),
    /// Something went wrong and was already reported: exit 1.
    Reported,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("dump") => dump(&args[1..]),
        Some("encode") => encode(&args[1..]),
        Some("new") => new(&args[1..]),
        Some("help" | "-h" | "--help") => emit(USAGE),
        Some(other) => Err(Failure::Usage(format!("unknown command `{other}`"))),
        None => Err(Failure::Usage("no command given".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Usage(msg)) => {
            eprintln!("axvmconfig: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout. A closed pipe (`axvmconfig dump x | head`) ends the
/// command quietly instead of panicking as `print!` would.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|_| Failure::Reported)
}

/// Prints an error, one line per configuration problem.
fn report(err: &Error) -> Failure {
    eprintln!("{err}");
    Failure::Reported
}

fn check(args: &[String]) -> Result<(), Failure> {
    if args.is_empty() {
        return Err(Failure::Usage("check needs at least one FILE".into()));
    }
    if let Some(opt) = args.iter().find(|a| a.starts_with('-')) {
        return Err(Failure::Usage(format!("check: unknown option `{opt}`")));
    }
    let mut bad = false;
    for file in args {
        match VmConfig::load_any_file(file) {
            Ok(_) => emit(&format!("{file}: ok\n"))?,
            Err(e) => {
                report(&e);
                bad = true;
            }
        }
    }
    if bad { Err(Failure::Reported) } else { Ok(()) }
}

fn dump(args: &[String]) -> Result<(), Failure> {
    let (debug, file) = match args {
        [f] if !f.starts_with('-') => (false, f),
        [d, f] if d == "--debug" => (true, f),
        _ => return Err(Failure::Usage("dump takes [--debug] FILE".into())),
    };
    let config = VmConfig::load_any_file(file).map_err(|e| report(&e))?;
    if debug {
        emit(&format!("{config:#?}\n"))
    } else {
        emit(&config.to_toml_string())
    }
}

fn encode(args: &[String]) -> Result<(), Failure> {
    let (file, out) = match args {
        [f, o, out] if o == "-o" => (f, out),
        [o, out, f] if o == "-o" => (f, out),
        _ => return Err(Failure::Usage("encode takes FILE -o OUT".into())),
    };
    let config = VmConfig::load_any_file(file).map_err(|e| report(&e))?;
    config.write_binary_file(out).map_err(|e| report(&e))?;
    Ok(())
}

fn number(opt: &str, value: &str) -> Result<u64, Failure> {
    parse_size(value).map_err(|why| Failure::Usage(format!("{opt} {value}: {why}")))
}

fn new(args: &[String]) -> Result<(), Failure> {
    let mut name = None;
    let mut kernel = None;
    let mut id = 1u64;
    let mut vcpus = 1u64;
    let mut memory = 16u64 << 20;
    let mut protocol = BootProtocol::Multiboot;
    let mut load_addr = None;
    let mut out = None;
    let mut it = args.iter();
    while let Some(opt) = it.next() {
        let Some(value) = it.next() else {
            return Err(Failure::Usage(format!("new: `{opt}` needs a value")));
        };
        match opt.as_str() {
            "--name" => name = Some(value.clone()),
            "--kernel" => kernel = Some(value.clone()),
            "--id" => id = number(opt, value)?,
            "--vcpus" => vcpus = number(opt, value)?,
            "--memory" => memory = number(opt, value)?,
            "--load-addr" => load_addr = Some(number(opt, value)?),
            "--protocol" => {
                protocol = match value.as_str() {
                    "multiboot" => BootProtocol::Multiboot,
                    "raw" => BootProtocol::Raw,
                    "bzimage" => BootProtocol::LinuxBzImage,
                    other => {
                        return Err(Failure::Usage(format!(
                            "new: unknown protocol `{other}` (multiboot, raw or bzimage)"
                        )));
                    }
                }
            }
            "-o" => out = Some(value.clone()),
            other => return Err(Failure::Usage(format!("new: unknown option `{other}`"))),
        }
    }
    let (Some(name), Some(kernel)) = (name, kernel) else {
        return Err(Failure::Usage("new needs --name and --kernel".into()));
    };
    let too_big = |opt: &str| Failure::Usage(format!("new: {opt} is too large"));
    let mut config = VmConfig::new(
        usize::try_from(id).map_err(|_| too_big("--id"))?,
        name,
        memory,
        kernel,
        protocol,
    );
    config.vcpus.count = usize::try_from(vcpus).map_err(|_| too_big("--vcpus"))?;
    config.kernel.load_addr = load_addr;
    let mut uart = EmulatedDevice::new(DeviceKind::Uart16550);
    uart.irq = Some(4);
    config.devices.emulated = vec![uart, EmulatedDevice::new(DeviceKind::DebugExit)];
    config.validate().map_err(|e| report(&e))?;
    let text = config.to_toml_string();
    match out {
        Some(path) => std::fs::write(&path, text).map_err(|e| {
            eprintln!("{path}: {e}");
            Failure::Reported
        }),
        None => emit(&text),
    }
}
