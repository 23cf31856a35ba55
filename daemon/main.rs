//! The `credrotd` binary: parse the command line, set up logging and the runtime,
//! and hand over to [`credrotd::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = credrotd::cli::Cli::parse();
    credrotd::cli::init_logging(cli.log_format);
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
