//! Schema version of the database and the migrations between versions.
//!
//! The `meta` tree stores the version under `schema_version` as a
//! big-endian `u32`. Version 1 is the layout from before the `meta` tree
//! existed, so a database without `meta` but with data in any tree is at
//! version 1. A database with no data at all is new and starts at
//! [`SCHEMA_VERSION`] without running any migration.
//!
//! [`prepare`] runs when the store opens. It rejects a database newer than
//! this build, then runs each migration whose `from` is the stored version,
//! in list order. After each one it records the new version and appends a
//! `schema_migrated` audit record in one transaction, and flushes, so a
//! crash repeats at most the migration that was running.
//!
//! To add a migration, write a function `fn(&sled::Db) -> Result<(),
//! StoreError>` and append one entry to [`MIGRATIONS`] whose `from` is the
//! last entry's `to`, such as
//! `Migration { from: 3, to: 4, description: "...", apply: my_function },`.
//! [`SCHEMA_VERSION`] follows the last entry. The function must be safe to
//! run again on a database where it already ran partly or fully, because a
//! crash before its version is recorded runs it again on the next open.

use std::path::Path;

use chrono::Utc;
use serde_json::json;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::StoreError;
use crate::audit::{self, AUDIT_TREE, AuditEvent};

/// Name of the tree that contains the schema version.
pub(crate) const META_TREE: &str = "meta";

/// Key of the schema version in the `meta` tree.
const VERSION_KEY: &[u8] = b"schema_version";

/// One step from schema version `from` to `to`.
pub(crate) struct Migration {
    pub(crate) from: u32,
    pub(crate) to: u32,
    /// Description of the change, for the audit record and errors.
    pub(crate) description: &'static str,
    pub(crate) apply: fn(&sled::Db) -> Result<(), StoreError>,
}

/// Every migration, oldest first. Each `from` is the `to` of the one
/// before it, and the first starts at version 1.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        to: 2,
        description: "create the audit log",
        apply: create_audit_log,
    },
    Migration {
        from: 2,
        to: 3,
        description: "index open cases by correlation key",
        apply: crate::correlation::rebuild,
    },
];

/// Schema version this build writes: the `to` of the last migration.
pub const SCHEMA_VERSION: u32 = newest_version(MIGRATIONS);

const fn newest_version(migrations: &[Migration]) -> u32 {
    match migrations.last() {
        Some(last) => last.to,
        None => 1,
    }
}

/// Brings the database at `path` to [`SCHEMA_VERSION`] and returns the
/// version it had before. A new database is stamped with the current
/// version, an older one is migrated, and a newer one is rejected.
pub(crate) fn prepare(db: &sled::Db, path: &Path) -> Result<u32, StoreError> {
    let meta = db.open_tree(META_TREE).map_err(database)?;
    let found = match stored_version(&meta)? {
        Some(version) => version,
        None if has_data(db)? => 1,
        None => {
            write_version(&meta, SCHEMA_VERSION)?;
            db.flush().map_err(database)?;
            return Ok(SCHEMA_VERSION);
        }
    };
    migrate(db, path, found)?;
    Ok(found)
}

/// Runs the migrations from version `found` up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(db: &sled::Db, path: &Path, found: u32) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let meta = db.open_tree(META_TREE).map_err(database)?;
    let mut version = found;
    for migration in MIGRATIONS
        .iter()
        .filter(|migration| migration.from >= found)
    {
        if migration.from != version {
            return Err(StoreError::Migration {
                from: migration.from,
                to: migration.to,
                message: format!(
                    "the database is at version {version}, and no migration starts there"
                ),
            });
        }
        (migration.apply)(db).map_err(|error| StoreError::Migration {
            from: migration.from,
            to: migration.to,
            message: error.to_string(),
        })?;
        record_migration(db, &meta, migration)?;
        db.flush().map_err(database)?;
        version = migration.to;
    }
    Ok(())
}

/// Reads the stored schema version, if there is one.
pub(crate) fn stored_version(meta: &sled::Tree) -> Result<Option<u32>, StoreError> {
    let Some(bytes) = meta.get(VERSION_KEY).map_err(database)? else {
        return Ok(None);
    };
    let bytes: [u8; 4] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
        tree: META_TREE,
        key: "schema_version".into(),
        message: format!(
            "expected a 4-byte big-endian number, found {} bytes",
            bytes.len()
        ),
    })?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

pub(crate) fn write_version(meta: &sled::Tree, version: u32) -> Result<(), StoreError> {
    meta.insert(VERSION_KEY, &version.to_be_bytes())
        .map_err(database)?;
    Ok(())
}

/// Returns whether any tree other than `meta`, the unnamed default tree
/// included, contains an entry.
pub(crate) fn has_data(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if name.as_ref() == META_TREE.as_bytes() {
            continue;
        }
        if !db.open_tree(&name).map_err(database)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Stores `migration.to` as the schema version and appends a
/// `schema_migrated` audit record, both in one transaction.
fn record_migration(
    db: &sled::Db,
    meta: &sled::Tree,
    migration: &Migration,
) -> Result<(), StoreError> {
    let audit_tree = db.open_tree(AUDIT_TREE).map_err(database)?;
    let head = audit::read_head(&audit_tree)?;
    let event = AuditEvent {
        actor: "store".into(),
        action: "schema_migrated".into(),
        subject: "database".into(),
        detail: json!({
            "from": migration.from,
            "to": migration.to,
            "description": migration.description,
        }),
    };
    let record = audit::chain_record(&head, event, Utc::now());
    let bytes = serde_json::to_vec(&record).map_err(|error| {
        StoreError::Database(format!(
            "cannot encode audit record {}: {error}",
            record.seq
        ))
    })?;
    let key = record.seq.to_be_bytes();
    let version = migration.to.to_be_bytes();
    (meta, &audit_tree)
        .transaction(|(meta, audit)| {
            if audit.get(key)?.is_some() {
                return Err(ConflictableTransactionError::Abort(StoreError::Database(
                    format!("audit record {} already exists", record.seq),
                )));
            }
            audit.insert(&key, bytes.as_slice())?;
            meta.insert(VERSION_KEY, &version)?;
            Ok(())
        })
        .map_err(|error| match error {
            sled::transaction::TransactionError::Abort(error) => error,
            sled::transaction::TransactionError::Storage(error) => database(error),
        })
}

/// Migration 1 to 2: creates the `audit` tree. The framework then appends
/// the first audit record, `schema_migrated`.
fn create_audit_log(db: &sled::Db) -> Result<(), StoreError> {
    db.open_tree(AUDIT_TREE).map_err(database)?;
    Ok(())
}

fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::reopen;

    #[test]
    fn migrations_form_one_chain_from_version_one() {
        let mut version = 1;
        for migration in MIGRATIONS {
            assert_eq!(
                migration.from, version,
                "migration {:?} starts at {} after version {version}",
                migration.description, migration.from
            );
            assert!(
                migration.to > migration.from,
                "migration {:?} does not move forward",
                migration.description
            );
            version = migration.to;
        }
        assert_eq!(SCHEMA_VERSION, version);
    }

    #[test]
    fn new_database_starts_at_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = reopen(dir.path(), |path| sled::open(path));
        assert_eq!(prepare(&db, dir.path()).unwrap(), SCHEMA_VERSION);
        let meta = db.open_tree(META_TREE).unwrap();
        assert_eq!(stored_version(&meta).unwrap(), Some(SCHEMA_VERSION));
        let audit = db.open_tree(AUDIT_TREE).unwrap();
        assert!(audit.is_empty(), "a new database runs no migration");
    }

    #[test]
    fn unversioned_data_is_version_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = reopen(dir.path(), |path| sled::open(path));
        db.open_tree("alerts").unwrap().insert("a", "{}").unwrap();
        assert_eq!(prepare(&db, dir.path()).unwrap(), 1);
        let meta = db.open_tree(META_TREE).unwrap();
        assert_eq!(stored_version(&meta).unwrap(), Some(SCHEMA_VERSION));
        let head = audit::read_head(&db.open_tree(AUDIT_TREE).unwrap()).unwrap();
        assert_eq!(
            head.seq,
            MIGRATIONS.len() as u64,
            "one record per migration"
        );
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = reopen(dir.path(), |path| sled::open(path));
        db.open_tree("alerts").unwrap().insert("a", "{}").unwrap();
        prepare(&db, dir.path()).unwrap();
        assert_eq!(prepare(&db, dir.path()).unwrap(), SCHEMA_VERSION);
        let audit = db.open_tree(AUDIT_TREE).unwrap();
        assert_eq!(audit.len(), MIGRATIONS.len());
    }

    #[test]
    fn version_one_store_is_migrated_on_open() {
        use crate::{AuditVerdict, SledStore, Store};

        const FIM: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"id":"554","description":"File added to the system."},"agent":{"name":"Ubuntu","ip":"10.0.2.15"},"syscheck":{"sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;
        let alert = palisade_model::parse_alerts(FIM).pop().unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let case_id = {
            let store = SledStore::open(dir.path()).unwrap();
            let outcome = store.ingest_alert(&alert, Utc::now()).unwrap();
            store
                .kv_set("ti-matcher", "ind:ipv4:10.0.2.15", b"x")
                .unwrap();
            store.put_secret("virustotal-api-key", b"sealed").unwrap();
            store.flush().unwrap();
            outcome.case_id
        };
        // Version 1 had neither the `meta` nor the `audit` tree.
        {
            let db = reopen(dir.path(), |path| sled::open(path));
            assert!(db.drop_tree(META_TREE).unwrap());
            assert!(db.drop_tree(AUDIT_TREE).unwrap());
            db.flush().unwrap();
        }

        let store = reopen(dir.path(), SledStore::open);
        let meta = store.db().open_tree(META_TREE).unwrap();
        assert_eq!(stored_version(&meta).unwrap(), Some(SCHEMA_VERSION));
        let case = store.case(&case_id).unwrap().unwrap();
        assert_eq!(case.alert_ids, vec![alert.id.clone()]);
        assert_eq!(store.alert(&alert.id).unwrap(), Some(alert));
        assert_eq!(
            store.kv_get("ti-matcher", "ind:ipv4:10.0.2.15").unwrap(),
            Some(b"x".to_vec())
        );
        assert_eq!(
            store.secret("virustotal-api-key").unwrap(),
            Some(b"sealed".to_vec())
        );
        // One `schema_migrated` record per migration, the first one 1 to 2.
        let records = store.audit_records(0, 100).unwrap();
        assert_eq!(records.len(), MIGRATIONS.len());
        assert_eq!(records[0].action, "schema_migrated");
        assert_eq!(records[0].detail["from"], 1);
        assert_eq!(records[0].detail["to"], 2);
        assert_eq!(
            store.verify_audit().unwrap(),
            AuditVerdict::Intact {
                records: MIGRATIONS.len() as u64,
                head: records.last().unwrap().hash.clone()
            }
        );
    }

    #[test]
    fn newer_database_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let db = reopen(dir.path(), |path| sled::open(path));
        let meta = db.open_tree(META_TREE).unwrap();
        write_version(&meta, SCHEMA_VERSION + 1).unwrap();
        let error = prepare(&db, dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{error}"
        );
        assert!(
            error.contains(&format!("up to version {SCHEMA_VERSION}")),
            "{error}"
        );
        assert!(error.contains("upgrade palisade"), "{error}");
        assert_eq!(stored_version(&meta).unwrap(), Some(SCHEMA_VERSION + 1));
        drop(meta);
        drop(db);

        let store_error = crate::SledStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(store_error, StoreError::SchemaTooNew { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{store_error}"
        );
    }
}
