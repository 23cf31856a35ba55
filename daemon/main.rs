//! The `credrotd` binary: parse the command line, set up logging and the runtime,
//! and hand over to [`credrotd::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any secret is read: no core dumps, no ptrace and no
    // /proc/<pid>/environ or /mem for other processes of the same user (an
    // application sharing credrotd's uid, a sidecar sharing its process
    // namespace). Children (notify commands, the demo's servers) get the
    // default back at exec.
    let not_dumpable = nix::sys::prctl::set_dumpable(false);
    credrotd::memory::limit_arenas();
    let cli = credrotd::cli::Cli::parse();
    // Still one thread: move the secrets the inventory names out of the
    // environment (see `secret_env`).
    let taken = credrotd::secret_env::take(credrotd::cli::secret_env_names(&cli));
    credrotd::cli::init_logging(cli.log_format);
    if !taken.is_empty() {
        tracing::debug!(variables = ?taken, "secret environment variables moved into memory and removed from the environment");
    }
    if let Err(e) = not_dumpable {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable; other processes of this user may read its memory and environment");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(credrotd::cli::main(cli))
}
