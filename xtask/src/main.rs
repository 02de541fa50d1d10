//! `cargo xtask`: build, run and test driver for the axhv workspace.
//!
//! Run `cargo xtask help` for the commands.

mod bench;
mod bochs;
mod linux;
mod prereq;
mod qemu;
mod rootvm;
mod tasks;
mod vms;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build                 build hv-app (x86_64-unknown-none ELF) and the host tools
  run [options]         run VMs under hv-app in QEMU (AMD SVM under TCG) and
                        stream the console
      --mode MODE       type15 (default): the Debian kernel boots a busybox
                        initramfs that loads the axhv module, `hvctl enable`
                        makes Linux the root VM, and each VM runs beside it on
                        the CPU Linux gives up (takes --guest,
                        --config/--image, --input, --until, --smp, --mem,
                        --timeout); `--root-vm [--check]`: the 3-cycle test
                        scenario; `--check`: the module's probe scenario;
                        with --vendor intel it runs on Bochs/VMX (2 CPUs, the
                        kernel booted from a GRUB ISO; minutes), and
                        `--root-vm [--check] [--timeout SECS]` runs one cycle
                        of the test scenario there (about 6 minutes).
                        type1: hv-app boots directly (multiboot), the VMs run
                        one after the other (the default with --vendor intel)
      --vendor V        amd (default: QEMU TCG with SVM+NPT) or intel (Bochs
                        with VMX+EPT, booting a GRUB ISO)
      --guest NAME      run a test guest from guests/ in a VM (repeatable:
                        one VM per --guest, run one after the other); or
                        `nimbos`/`arceos` with --image: a kernel you built
                        from their sources, under configs/NAME.toml
      --config VM.toml  run your own multiboot kernel under this VM config...
      --image KERNEL    ...this kernel image (e.g. NimbOS, ArceOS)
      --input TEXT      type TEXT into the guest console once a guest waits at
                        a prompt (or after 5 s of quiet); repeatable, one per
                        prompt; escapes \\r \\n \\t \\e \\\\ \\xHH, e.g.
                        --input 'usertests\\r'. From a terminal, typed lines
                        also go to the guest (Enter as CR).
      --until TEXT      end the run (status 0) once a console line has TEXT
      --log LEVEL       hypervisor log level: error, warn, info, debug, trace
      --smp N           number of CPUs (default 1)
      --mem SIZE        machine memory, e.g. 512M (default 512M)
      --timeout SECS    stop QEMU after this many seconds (default 60)
  test                  run every check: fmt, clippy, host tests of each crate,
                        bare-metal builds, config checks, packaging, QEMU boot
      --quick           skip the slow parts (packaging, QEMU boot)
  bench [--nimbos PATH] exit-cost benchmark: the bench guest under hv-app and
                        without a hypervisor on QEMU with -icount (instructions
                        per round trip); writes target/bench/bench.{md,json}
      --nimbos PATH     also NimbOS's boot to its shell prompt, both ways
      --smoke           only check that the guest prints its table under hv-app
  bochs [options]       boot hv-app in Bochs (Intel VMX with EPT) from a GRUB ISO
      --guest NAME      run a test guest in a VM (repeatable)
      --log LEVEL       hypervisor log level
      --timeout SECS    stop Bochs after this many seconds (default 120)
  prereq                check the prerequisites (installs missing Debian packages
                        when run as root on Debian/Ubuntu, else prints the command)
  help                  this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "build" => tasks::build(rest),
        "run" => tasks::run(rest),
        "test" => tasks::test(rest),
        "bench" => bench::bench(rest),
        "bochs" => bochs::command(rest),
        "prereq" => prereq::check(&prereq::ALL_PACKAGES)
            .and_then(|()| bochs::check_prereqs())
            .map(|_| 0),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("xtask: error: {msg}");
            ExitCode::from(1)
        }
    }
}
