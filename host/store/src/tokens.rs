//! API tokens of the daemon, kept in the `api_tokens` tree: token name to
//! an [`ApiTokenRecord`] as JSON.
//!
//! A record contains the SHA-256 of its token, never the token. The caller
//! generates the token, hashes it and shows it once. The role is opaque
//! text here, because the roles and what they allow belong to the HTTP API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::sled_store::SledStore;

/// Name of the sled tree that contains the API tokens.
pub(crate) const TOKENS_TREE: &str = "api_tokens";

/// A stored API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Unique name, which the API records as the actor of the token's
    /// requests.
    pub name: String,
    /// Role name, such as `admin` or `read-only`.
    pub role: String,
    /// SHA-256 of the token text, as 64 lowercase hexadecimal digits.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

fn database(error: sled::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<ApiTokenRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        tree: TOKENS_TREE,
        key: String::from_utf8_lossy(key).into_owned(),
        message: error.to_string(),
    })
}

impl SledStore {
    fn tokens_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db().open_tree(TOKENS_TREE).map_err(database)
    }

    /// Stores `record` under its name unless a token of that name exists.
    /// Returns false, and changes nothing, when the name is taken. The
    /// record is on disk after the next [`crate::Store::flush`].
    pub fn add_api_token(&self, record: &ApiTokenRecord) -> Result<bool, StoreError> {
        let bytes =
            serde_json::to_vec(record).map_err(|error| StoreError::Database(error.to_string()))?;
        let swapped = self
            .tokens_tree()?
            .compare_and_swap(record.name.as_bytes(), None::<&[u8]>, Some(bytes))
            .map_err(database)?;
        Ok(swapped.is_ok())
    }

    /// Returns every stored token, sorted by name.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        self.tokens_tree()?
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(database)?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Returns the token named `name`.
    pub fn api_token(&self, name: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        let tree = self.tokens_tree()?;
        match tree.get(name.as_bytes()).map_err(database)? {
            Some(bytes) => decode(name.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the token named `name` and returns whether it was stored.
    pub fn remove_api_token(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .tokens_tree()?
            .remove(name.as_bytes())
            .map_err(database)?;
        Ok(removed.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn record(name: &str, role: &str) -> ApiTokenRecord {
        ApiTokenRecord {
            name: name.to_string(),
            role: role.to_string(),
            sha256: "ab".repeat(32),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn tokens_are_added_once_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.add_api_token(&record("ana", "analyst")).unwrap());
        assert!(
            !store.add_api_token(&record("ana", "admin")).unwrap(),
            "a second token with the same name was stored"
        );
        assert_eq!(store.api_token("ana").unwrap().unwrap().role, "analyst");
        assert!(store.add_api_token(&record("bo", "read-only")).unwrap());
        let names: Vec<String> = store
            .api_tokens()
            .unwrap()
            .into_iter()
            .map(|token| token.name)
            .collect();
        assert_eq!(names, ["ana", "bo"]);
    }

    #[test]
    fn removed_token_is_gone_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.add_api_token(&record("ana", "analyst")).unwrap();
            store.add_api_token(&record("bo", "admin")).unwrap();
            assert!(store.remove_api_token("ana").unwrap());
            assert!(!store.remove_api_token("ana").unwrap());
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.api_token("ana").unwrap().is_none());
        assert_eq!(
            store.api_tokens().unwrap(),
            [store.api_token("bo").unwrap().unwrap()]
        );
    }
}
