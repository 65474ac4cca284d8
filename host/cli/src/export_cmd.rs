//! `palisade export` and `palisade import`: the whole database as JSON
//! lines, for backups and moves between machines.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
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
/// `config`, which must be empty. The file is opened before the database,
/// so a wrong path leaves no empty database behind.
///
/// Exits with 1 when the imported audit chain is broken or a step record
/// does not match its audit record. The imported data stays in that case,
/// because an export copies a damaged audit log as it is and refusing it
/// would make such a backup impossible to restore. A message on standard
/// error states this, and the operator decides whether to keep the
/// database.
pub fn import(config: &Config, file: &Path) -> anyhow::Result<ExitCode> {
    let mut input: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let opened = File::open(file)
            .with_context(|| format!("cannot open import file {}", file.display()))?;
        Box::new(BufReader::new(opened))
    };
    let store = host::open_store(config)?;
    let summary = store
        .import(&mut input)
        .with_context(|| format!("importing {} failed", file.display()))?;
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
    if intact {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: the records were imported into {}, but its audit log does not verify; inspect it with `palisade audit list` before you use it, or delete the directory and import an export that verifies",
        config.data_dir.display()
    );
    Ok(ExitCode::FAILURE)
}
