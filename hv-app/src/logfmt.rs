//! The console log format and the log level chosen on the command line.

use core::fmt;

use log::{Level, LevelFilter};

/// Writes one log line: `[LEVEL] message` and a newline.
pub fn write_line<W: fmt::Write + ?Sized>(
    out: &mut W,
    level: Level,
    args: fmt::Arguments<'_>,
) -> fmt::Result {
    out.write_fmt(format_args!("[{level}] {args}\n"))
}

/// The level of the last `log=<level>` word of a kernel command line
/// (`off`, `error`, `warn`, `info`, `debug` or `trace`, any case), if any
/// word names a valid level.
pub fn level_from_cmdline(cmdline: &str) -> Option<LevelFilter> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("log=")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let mut s = String::new();
        write_line(&mut s, Level::Info, format_args!("memory: {} MiB", 255)).unwrap();
        write_line(&mut s, Level::Error, format_args!("bad")).unwrap();
        assert_eq!(s, "[INFO] memory: 255 MiB\n[ERROR] bad\n");
    }

    #[test]
    fn cmdline_level() {
        assert_eq!(level_from_cmdline("/boot/hv-app"), None);
        assert_eq!(
            level_from_cmdline("/boot/hv-app log=debug"),
            Some(LevelFilter::Debug)
        );
        assert_eq!(
            level_from_cmdline("log=TRACE x log=warn"),
            Some(LevelFilter::Warn)
        );
        assert_eq!(level_from_cmdline("log=loud"), None);
        assert_eq!(level_from_cmdline("log=off"), Some(LevelFilter::Off));
        assert_eq!(level_from_cmdline("xlog=debug"), None);
    }
}
