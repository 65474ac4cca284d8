//! `palisade export` and `palisade import`: the whole database as JSON
//! lines, for backups and moves between machines.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use palisade_store::Store;

use crate::audit_cmd::verdict_line;
use crate::config::Config;
use crate::host;

/// Writes the database of `config` to `out`, or to standard output without
/// it. Secrets stay encrypted.
pub fn export(config: &Config, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let store = host::open_store(config)?;
    let summary = match out {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create export file {}", path.display()))?;
            let mut writer = BufWriter::new(file);
            let summary = store
                .export(&mut writer)
                .with_context(|| format!("exporting to {} failed", path.display()))?;
            let file = writer
                .into_inner()
                .map_err(|error| error.into_error())
                .with_context(|| format!("cannot write export file {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("cannot write export file {}", path.display()))?;
            summary
        }
        None => {
            let stdout = std::io::stdout();
            let mut writer = BufWriter::new(stdout.lock());
            let summary = store.export(&mut writer)?;
            writer
                .flush()
                .context("cannot write the export to standard output")?;
            summary
        }
    };
    eprintln!(
        "exported {} records (schema version {})",
        summary.records, summary.schema_version
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the export in `file` (`-` for standard input) into the database of
/// `config`, which must be empty. Exits with 1 when the imported audit
/// chain is broken.
pub fn import(config: &Config, file: &Path) -> anyhow::Result<ExitCode> {
    let store = host::open_store(config)?;
    let summary = if file == Path::new("-") {
        store.import(&mut std::io::stdin().lock())?
    } else {
        let opened = File::open(file)
            .with_context(|| format!("cannot open import file {}", file.display()))?;
        store
            .import(&mut BufReader::new(opened))
            .with_context(|| format!("importing {} failed", file.display()))?
    };
    store.flush()?;
    let migrated = if summary.exported_schema_version == summary.schema_version {
        String::new()
    } else {
        format!(
            ", migrated from schema version {}",
            summary.exported_schema_version
        )
    };
    println!(
        "imported {} records into {} (schema version {}{migrated})",
        summary.records,
        config.data_dir.display(),
        summary.schema_version
    );
    let (line, intact) = verdict_line(&summary.audit);
    println!("{line}");
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
