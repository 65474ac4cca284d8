use std::process::ExitCode;

use clap::Parser;
use palisade::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = palisade::Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format, cli.verbose);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            report_error(
                log_format,
                &anyhow::Error::new(error).context("cannot start the async runtime"),
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(palisade::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            report_error(log_format, &error);
            ExitCode::FAILURE
        }
    }
}

/// Sends diagnostics to standard error, so standard output carries only
/// the command's result. `RUST_LOG` overrides the default level. JSON lines
/// carry the fields of the current span and of every span around it (run,
/// step, plugin call), so each event names its run and step.
fn init_logging(format: LogFormat, verbose: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if verbose { "debug" } else { "warn" }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// Prints the error that ended the command and its causes, numbered. With
/// JSON logs it is one JSON object in the shape of the log events instead,
/// so standard error stays one JSON object a line. It is written directly,
/// not through `tracing`, so no `RUST_LOG` filter can hide it.
fn report_error(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Text => {
            eprintln!("error: {error}");
            for (depth, cause) in error.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", depth + 1);
            }
        }
        LogFormat::Json => {
            let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
            let event = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "fields": {
                    "message": "command failed",
                    "error": error.to_string(),
                    "causes": causes,
                },
                "target": env!("CARGO_PKG_NAME"),
            });
            eprintln!("{event}");
        }
    }
}
