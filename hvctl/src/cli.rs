//! Command-line parsing of `hvctl`.

use std::path::PathBuf;

use crate::{Error, Result};

/// The default hypervisor image `hvctl enable` loads.
pub const DEFAULT_IMAGE: &str = "/lib/firmware/axhv.bin";

/// The usage text.
pub const USAGE: &str = "\
usage: hvctl <command>

commands:
  enable [--image FILE]             load the hypervisor image (default /lib/firmware/axhv.bin)
                                    and enter it on every CPU: Linux goes on as the root VM
  disable                           return every CPU to native execution
  status                            the module's view: reserved region, image, enabled
  vm create CONFIG.toml --image FILE  create a VM (the config is checked first)
  vm list                           the VMs
  vm destroy ID                     destroy a VM, returning its CPUs and memory
  vm console ID                     print what the VM wrote to its console
  vm console ID --follow [--until TEXT] [--idle SECS] [--timeout SECS]
                                    keep printing it until TEXT appears, the VM ends, it
                                    printed and then stayed quiet for --idle SECS (waits
                                    at a prompt), or --timeout SECS (default 60) pass
  vm input ID TEXT                  type TEXT on the VM's console (escapes: \\r \\n \\t \\e \\\\ \\xHH)
  vm wait ID [--timeout SECS]       wait until the VM has ended (default 60 s)
  selftest                          malformed hypercalls and a read of the hypervisor's memory
                                    from the root VM: each must come back as an error code
";

/// A parsed `hvctl` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `hvctl enable [--image FILE]`.
    Enable {
        /// The hypervisor image.
        image: PathBuf,
    },
    /// `hvctl disable`.
    Disable,
    /// `hvctl status`.
    Status,
    /// `hvctl vm create CONFIG --image FILE`.
    VmCreate {
        /// The VM configuration (TOML or binary).
        config: PathBuf,
        /// The guest kernel image.
        image: PathBuf,
    },
    /// `hvctl vm list`.
    VmList,
    /// `hvctl vm destroy ID`.
    VmDestroy(u32),
    /// `hvctl vm console ID`.
    VmConsole(u32),
    /// `hvctl vm console ID --follow [--until TEXT] [--timeout SECS]`.
    VmFollow {
        /// The VM id.
        id: u32,
        /// When to stop.
        follow: Follow,
    },
    /// `hvctl vm input ID TEXT`.
    VmInput {
        /// The VM id.
        id: u32,
        /// The bytes (escapes resolved).
        bytes: Vec<u8>,
    },
    /// `hvctl vm wait ID [--timeout SECS]`.
    VmWait {
        /// The VM id.
        id: u32,
        /// Seconds to wait at most.
        timeout: u64,
    },
    /// `hvctl selftest`.
    SelfTest,
    /// `hvctl help`.
    Help,
}

/// When `vm console --follow` stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// Stop once this text has appeared.
    pub until: Option<String>,
    /// Stop once the VM has printed something and then nothing for this
    /// many seconds (it waits at a prompt).
    pub idle: Option<u64>,
    /// Give up after this many seconds.
    pub timeout: u64,
}

/// Resolves `\r`, `\n`, `\t`, `\e` (ESC), `\\` and `\xHH` in `text`;
/// any other backslash sequence is an error. The one escape language of
/// `hvctl vm input` and `cargo xtask run --input`.
pub fn unescape(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut it = text.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'e') => out.push(0x1b),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = it.by_ref().take(2).collect();
                let v = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| usage(format!("`{text}`: `\\x` needs two hex digits")))?;
                out.push(v);
            }
            Some(c) => {
                return Err(usage(format!(
                    "`{text}`: unknown escape `\\{}` (use \\r \\n \\t \\e \\\\ \\xHH)",
                    c as char
                )));
            }
            None => return Err(usage(format!("`{text}`: ends with a lone `\\`"))),
        }
    }
    Ok(out)
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn vm_id(arg: Option<&String>, what: &str) -> Result<u32> {
    let a = arg.ok_or_else(|| usage(format!("vm {what} needs a VM id")))?;
    match a.parse::<u32>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(usage(format!(
            "vm {what}: `{a}` is not a VM id (1, 2, ...; see `hvctl vm list`)"
        ))),
    }
}

fn no_more(rest: &[String], what: &str) -> Result<()> {
    match rest.first() {
        Some(a) => Err(usage(format!("{what}: unexpected argument `{a}`"))),
        None => Ok(()),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some(cmd) = args.first() else {
        return Err(usage("no command given"));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "enable" => {
            let mut image = PathBuf::from(DEFAULT_IMAGE);
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--image" => {
                        image = it
                            .next()
                            .ok_or_else(|| usage("enable: --image needs a file"))?
                            .into();
                    }
                    other => return Err(usage(format!("enable: unknown option `{other}`"))),
                }
            }
            Ok(Command::Enable { image })
        }
        "disable" => no_more(rest, "disable").map(|_| Command::Disable),
        "status" => no_more(rest, "status").map(|_| Command::Status),
        "selftest" => no_more(rest, "selftest").map(|_| Command::SelfTest),
        "help" | "-h" | "--help" => Ok(Command::Help),
        "vm" => {
            let Some(sub) = rest.first() else {
                return Err(usage(
                    "vm needs a subcommand: create, list, destroy, console",
                ));
            };
            let rest = &rest[1..];
            match sub.as_str() {
                "create" => {
                    let mut config = None;
                    let mut image = None;
                    let mut it = rest.iter();
                    while let Some(a) = it.next() {
                        match a.as_str() {
                            "--image" => {
                                image =
                                    Some(PathBuf::from(it.next().ok_or_else(|| {
                                        usage("vm create: --image needs a file")
                                    })?));
                            }
                            o if o.starts_with('-') => {
                                return Err(usage(format!("vm create: unknown option `{o}`")));
                            }
                            path if config.is_none() => config = Some(PathBuf::from(path)),
                            extra => {
                                return Err(usage(format!(
                                    "vm create: unexpected argument `{extra}`"
                                )));
                            }
                        }
                    }
                    let config =
                        config.ok_or_else(|| usage("vm create needs a CONFIG.toml file"))?;
                    let image = image
                        .ok_or_else(|| usage("vm create needs --image FILE (the guest kernel)"))?;
                    Ok(Command::VmCreate { config, image })
                }
                "list" => no_more(rest, "vm list").map(|_| Command::VmList),
                "wait" => {
                    let id = vm_id(rest.first(), "wait")?;
                    let timeout = match rest.get(1).map(String::as_str) {
                        None => 60,
                        Some("--timeout") => {
                            let v = rest
                                .get(2)
                                .ok_or_else(|| usage("vm wait: --timeout needs seconds"))?;
                            no_more(&rest[3..], "vm wait")?;
                            v.parse().map_err(|_| {
                                usage(format!("vm wait: --timeout: `{v}` is not seconds"))
                            })?
                        }
                        Some(o) => {
                            return Err(usage(format!("vm wait: unexpected argument `{o}`")));
                        }
                    };
                    Ok(Command::VmWait { id, timeout })
                }
                "destroy" => {
                    let id = vm_id(rest.first(), "destroy")?;
                    no_more(&rest[1..], "vm destroy")?;
                    Ok(Command::VmDestroy(id))
                }
                "console" => {
                    let id = vm_id(rest.first(), "console")?;
                    if rest.len() == 1 {
                        return Ok(Command::VmConsole(id));
                    }
                    let mut follow = Follow {
                        until: None,
                        idle: None,
                        timeout: 60,
                    };
                    let mut it = rest[1..].iter();
                    while let Some(a) = it.next() {
                        match a.as_str() {
                            "--follow" => {}
                            "--until" => {
                                follow.until = Some(
                                    it.next()
                                        .ok_or_else(|| usage("vm console: --until needs text"))?
                                        .clone(),
                                );
                            }
                            "--idle" => {
                                let v = it
                                    .next()
                                    .ok_or_else(|| usage("vm console: --idle needs seconds"))?;
                                follow.idle = Some(v.parse().map_err(|_| {
                                    usage(format!("vm console: --idle: `{v}` is not seconds"))
                                })?);
                            }
                            "--timeout" => {
                                let v = it
                                    .next()
                                    .ok_or_else(|| usage("vm console: --timeout needs seconds"))?;
                                follow.timeout = v.parse().map_err(|_| {
                                    usage(format!("vm console: --timeout: `{v}` is not seconds"))
                                })?;
                            }
                            o => {
                                return Err(usage(format!(
                                    "vm console: unexpected argument `{o}`"
                                )));
                            }
                        }
                    }
                    Ok(Command::VmFollow { id, follow })
                }
                "input" => {
                    let id = vm_id(rest.first(), "input")?;
                    let text = rest
                        .get(1)
                        .ok_or_else(|| usage("vm input needs the text to send"))?;
                    no_more(&rest[2..], "vm input")?;
                    Ok(Command::VmInput {
                        id,
                        bytes: unescape(text)?,
                    })
                }
                other => Err(usage(format!(
                    "unknown vm subcommand `{other}` (create, list, wait, destroy, console, input)"
                ))),
            }
        }
        other => Err(usage(format!("unknown command `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Command> {
        parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn err(v: &[&str]) -> String {
        p(v).unwrap_err().to_string()
    }

    #[test]
    fn commands() {
        assert_eq!(
            p(&["enable"]).unwrap(),
            Command::Enable {
                image: DEFAULT_IMAGE.into()
            }
        );
        assert_eq!(
            p(&["enable", "--image", "/x.bin"]).unwrap(),
            Command::Enable {
                image: "/x.bin".into()
            }
        );
        assert_eq!(p(&["disable"]).unwrap(), Command::Disable);
        assert_eq!(p(&["status"]).unwrap(), Command::Status);
        assert_eq!(p(&["vm", "list"]).unwrap(), Command::VmList);
        assert_eq!(p(&["vm", "destroy", "2"]).unwrap(), Command::VmDestroy(2));
        assert_eq!(p(&["vm", "console", "1"]).unwrap(), Command::VmConsole(1));
        assert_eq!(
            p(&[
                "vm",
                "console",
                "2",
                "--follow",
                "--until",
                ">> ",
                "--timeout",
                "9"
            ])
            .unwrap(),
            Command::VmFollow {
                id: 2,
                follow: Follow {
                    until: Some(">> ".into()),
                    idle: None,
                    timeout: 9
                }
            }
        );
        assert_eq!(
            p(&["vm", "input", "1", "usertests\\r"]).unwrap(),
            Command::VmInput {
                id: 1,
                bytes: b"usertests\r".to_vec()
            }
        );
        assert_eq!(unescape("a\\x41\\n\\\\").unwrap(), b"aA\n\\");
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x4").is_err());
        let want = Command::VmCreate {
            config: "a.toml".into(),
            image: "hello".into(),
        };
        assert_eq!(
            p(&["vm", "create", "a.toml", "--image", "hello"]).unwrap(),
            want
        );
        assert_eq!(
            p(&["vm", "create", "--image", "hello", "a.toml"]).unwrap(),
            want
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(err(&[]).contains("no command"));
        assert!(err(&["frobnicate"]).contains("unknown command `frobnicate`"));
        assert!(err(&["vm"]).contains("create, list, destroy, console"));
        assert!(err(&["vm", "create", "a.toml"]).contains("--image FILE"));
        assert!(err(&["vm", "create", "--image", "k"]).contains("CONFIG.toml"));
        assert!(err(&["vm", "create", "a", "b", "--image", "k"]).contains("`b`"));
        assert!(err(&["vm", "destroy"]).contains("needs a VM id"));
        assert!(err(&["vm", "destroy", "0"]).contains("`0` is not a VM id"));
        assert!(err(&["vm", "console", "x"]).contains("`x` is not a VM id"));
        assert!(err(&["status", "extra"]).contains("`extra`"));
        assert!(err(&["enable", "--image"]).contains("needs a file"));
    }
}
