//! The persistent state store: one embedded redb database at
//! `{system.spool}/state.redb`, opened once at start and kept across
//! reloads. It holds what must survive a restart but is not config: the
//! runtime blacklist entries and the send-limit counters (`limits`).
//!
//! Tables are typed: a [`TableDef<T>`] names a table whose values are `T`
//! (stored as JSON, keyed by a string), so adding a table is one `const`.
//! Every write is one committed redb transaction (fsynced before it
//! returns), so a change the API acknowledged survives a crash.
//!
//! All methods block (file I/O and fsync). Call them from a blocking
//! thread (`tokio::task::spawn_blocking`), never on the runtime's threads;
//! [`Store::run`] does that.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name inside the spool directory.
pub const FILE_NAME: &str = "state.redb";

/// Appended when the spool cannot be written: the usual cause is a
/// relative `spool` (beside the config, in `/etc`) under the shipped unit.
const NOT_WRITABLE: &str = " ([system] spool must be a directory the relay may write; under the \
     shipped systemd unit only /var/lib/smarthost is: spool = \"/var/lib/smarthost/spool\")";

/// A store error: the file could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening the database file failed.
    #[error("cannot open the state store {path}: {source}{hint}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
        /// What to do about it, when the cause is a spool the relay may
        /// not write (empty otherwise).
        hint: &'static str,
    },
    /// A read or a write failed.
    #[error("state store: {0}")]
    Db(#[from] Box<redb::Error>),
    /// A value does not encode, or a stored one does not decode (written
    /// by another version).
    #[error("state store: table {table}, key {key:?}: cannot encode or decode the value: {error}")]
    Codec {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The decoder's message.
        error: String,
    },
    /// The blocking task died.
    #[error("state store: background task failed: {0}")]
    Task(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// A typed table: string keys, values of type `T` stored as JSON.
pub struct TableDef<T> {
    name: &'static str,
    _value: PhantomData<fn() -> T>,
}

impl<T> TableDef<T> {
    /// A table named `name` (unique within the store).
    pub const fn new(name: &'static str) -> Self {
        TableDef {
            name,
            _value: PhantomData,
        }
    }

    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn raw(&self) -> redb::TableDefinition<'static, &'static str, &'static [u8]> {
        redb::TableDefinition::new(self.name)
    }
}

impl<T> Clone for TableDef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TableDef<T> {}

/// The open store.
pub struct Store {
    db: redb::Database,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) `{spool}/state.redb`, creating the spool
    /// directory when needed.
    pub fn open(spool: &Path) -> Result<Store, StoreError> {
        let path = spool.join(FILE_NAME);
        let open = || -> Result<redb::Database, redb::Error> {
            std::fs::create_dir_all(spool)?;
            Ok(redb::Database::create(&path)?)
        };
        match open() {
            Ok(db) => Ok(Store {
                db,
                path: Some(path),
            }),
            Err(e) => {
                let not_writable = matches!(&e, redb::Error::Io(io) if matches!(
                    io.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
                ));
                Err(StoreError::Open {
                    path,
                    source: Box::new(e),
                    hint: if not_writable { NOT_WRITABLE } else { "" },
                })
            }
        }
    }

    /// A store in memory only (nothing survives the process): for a relay
    /// built without a spool, as in-process tests do.
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Ok(Store { db, path: None })
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on a blocking thread (store calls block on file I/O).
    pub async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn decode<T: DeserializeOwned>(
        table: &TableDef<T>,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Codec {
            table: table.name,
            key: key.to_owned(),
            error: e.to_string(),
        })
    }

    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: &TableDef<T>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(table.raw()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match t.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(Self::decode(table, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every `(key, value)` of the table, in key order.
    pub fn list<T: DeserializeOwned>(
        &self,
        table: &TableDef<T>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(table.raw()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_owned();
            let value = Self::decode(table, &key, v.value())?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Stores `value` under `key` (one committed transaction).
    pub fn put<T: Serialize>(
        &self,
        table: &TableDef<T>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = Self::encode(table, key, value)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.raw()).map_err(db_err)?;
            t.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Stores every `(key, value)` of `items` in one committed
    /// transaction (one fsync for a batch).
    pub fn put_many<T: Serialize>(
        &self,
        table: &TableDef<T>,
        items: &[(String, T)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.raw()).map_err(db_err)?;
            for (key, value) in items {
                let bytes = Self::encode(table, key, value)?;
                t.insert(key.as_str(), bytes.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn encode<T: Serialize>(
        table: &TableDef<T>,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Codec {
            table: table.name,
            key: key.to_owned(),
            error: e.to_string(),
        })
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove<T>(&self, table: &TableDef<T>, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut t = tx.open_table(table.raw()).map_err(db_err)?;
            t.remove(key).map_err(db_err)?.is_some()
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Reads, changes and writes one value in a single write transaction
    /// (a counter increment, a reset): `f` gets the current value (raw
    /// JSON decoded by the caller's type) and returns the new one, or
    /// `None` to delete the key.
    pub fn modify<T: Serialize + DeserializeOwned>(
        &self,
        table: &TableDef<T>,
        key: &str,
        f: impl FnOnce(Option<T>) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        use redb::ReadableTable;
        let tx = self.db.begin_write().map_err(db_err)?;
        let new = {
            let mut t = tx.open_table(table.raw()).map_err(db_err)?;
            let old = match t.get(key).map_err(db_err)? {
                Some(v) => Some(Self::decode(table, key, v.value())?),
                None => None,
            };
            let new = f(old);
            match &new {
                Some(v) => {
                    let bytes = Self::encode(table, key, v)?;
                    t.insert(key, bytes.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(key).map_err(db_err)?;
                }
            }
            new
        };
        tx.commit().map_err(db_err)?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TableDef<u64> = TableDef::new("test_counts");

    #[test]
    fn put_get_list_modify_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.get(&T, "a").unwrap(), None);
            assert!(s.list(&T).unwrap().is_empty());
            s.put(&T, "b", &2).unwrap();
            s.put(&T, "a", &1).unwrap();
            assert_eq!(s.modify(&T, "a", |v| v.map(|n| n + 10)).unwrap(), Some(11));
            assert_eq!(
                s.list(&T).unwrap(),
                vec![("a".to_owned(), 11), ("b".to_owned(), 2)]
            );
            assert!(s.remove(&T, "b").unwrap());
            assert!(!s.remove(&T, "b").unwrap());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(&T, "a").unwrap(), Some(11));
        assert_eq!(s.get(&T, "b").unwrap(), None);
        assert_eq!(s.modify(&T, "a", |_| None).unwrap(), None);
        assert_eq!(s.get(&T, "a").unwrap(), None);
    }

    #[test]
    fn in_memory_works_and_bad_values_are_reported() {
        let s = Store::in_memory().unwrap();
        s.put(
            &TableDef::<String>::new("test_counts"),
            "x",
            &"text".to_owned(),
        )
        .unwrap();
        assert!(matches!(
            s.get(&T, "x"),
            Err(StoreError::Codec { key, .. }) if key == "x"
        ));
    }

    #[test]
    fn a_spool_the_relay_may_not_write_says_where_it_may() {
        // mkdir under /sys fails with EPERM, as root too.
        let Err(err) = Store::open(std::path::Path::new("/sys/smarthost-test-spool")) else {
            panic!("opened a store under /sys");
        };
        let text = err.to_string();
        assert!(
            text.contains("/sys/smarthost-test-spool/state.redb"),
            "{text}"
        );
        assert!(
            text.contains("spool = \"/var/lib/smarthost/spool\""),
            "{text}"
        );
        // Other failures get no such hint.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let Err(err) = Store::open(&file) else {
            panic!("opened a store under a file");
        };
        let text = err.to_string();
        assert!(!text.contains("/var/lib/smarthost"), "{text}");
    }
}
