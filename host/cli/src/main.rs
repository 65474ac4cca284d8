use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = palisade::Cli::parse();
    // Diagnostics go to standard error, so standard output carries only the
    // command's result. `RUST_LOG` overrides the default level.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if cli.verbose { "debug" } else { "warn" }));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(palisade::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for (depth, cause) in error.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", depth + 1);
            }
            ExitCode::FAILURE
        }
    }
}
