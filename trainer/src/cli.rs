//! What the `trainer` and `replay` commands share.

use std::process::ExitCode;

/// The parsed command line, or the exit status once clap has printed why there is none: 0 after
/// `--help` or `--version`, 3 for a usage error (`specs/replay-cli.md` §2).
pub fn parse_or_exit<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let code = if e.use_stderr() { 3 } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    })
}
