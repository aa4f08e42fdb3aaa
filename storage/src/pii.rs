//! Personal data at rest. Profile fields named in `pii.fields` are sealed with AES-256-GCM before
//! any catalog store sees them and opened only when read back: the database, its backups and
//! its replication stream hold ciphertext. A sealed value is `{"$pii": "<key id>:<base64 of
//! nonce ‖ ciphertext>"}`; the key id lets keys rotate (new values use `pii.active_key`, old ones
//! still open with theirs). The user id is the associated data, so a sealed value copied into
//! another user's profile does not open.
//!
//! Which fields are personal is [`common::pii::PersonalFields`]: a top-level field is sealed
//! whole when its name is personal (ignoring case) or when it holds a personal name at any depth
//! (`{"contact": {"email": ..}}`). A field whose value merely looks sealed (a client's own
//! `{"$pii": ..}`) is sealed too, so that what opens is always what was stored and a value shaped
//! like ciphertext never reaches [`PiiCipher::open`] unsealed.
//!
//! [`SealedCatalog`] wraps any [`Catalog`]: items pass through, profiles are sealed and opened.
//! Reading every profile (training) skips one that does not open, with a warning, rather than
//! failing for everyone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::Item;
use common::config::PiiConfig;
use common::pii::PersonalFields;
use serde_json::{Map, Value};

use crate::catalog::Catalog;
use crate::error::{Result, StorageError};

/// The marker key of a sealed value.
const SEALED: &str = "$pii";
/// The id of a key generated into the data dir.
const LOCAL_KEY_ID: &str = "local";

pub struct PiiCipher {
    keys: BTreeMap<String, Aes256Gcm>,
    active: String,
    fields: Vec<String>,
}

impl std::fmt::Debug for PiiCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiCipher")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("fields", &self.fields)
            .finish()
    }
}

fn invalid(message: impl Into<String>) -> StorageError {
    StorageError::Corrupt(message.into())
}

fn cipher(encoded: &str) -> Result<Aes256Gcm> {
    let bytes = B64
        .decode(encoded.trim())
        .map_err(|_| invalid("a pii key is not base64"))?;
    if bytes.len() != 32 {
        return Err(invalid("a pii key must be 32 bytes (AES-256)"));
    }
    Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)))
}

impl PiiCipher {
    /// The configured keys, or else a key kept in `data_dir/pii.key` (created once, mode 0600).
    pub fn from_config(config: &PiiConfig, data_dir: &Path) -> Result<Self> {
        let mut keys = BTreeMap::new();
        for (id, key) in &config.keys {
            if id.contains(':') {
                return Err(invalid("a pii key id must not contain ':'"));
            }
            keys.insert(id.clone(), cipher(&key.0)?);
        }
        if keys.is_empty() {
            let path = data_dir.join("pii.key");
            let encoded = match std::fs::read_to_string(&path) {
                Ok(encoded) => encoded,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(
                        path = %path.display(),
                        "no pii.keys configured: generating a local key (set pii.keys for a cluster)"
                    );
                    let encoded = B64.encode(Aes256Gcm::generate_key(OsRng));
                    std::fs::create_dir_all(data_dir)?;
                    write_private(&path, &encoded)?;
                    encoded
                }
                Err(e) => return Err(e.into()),
            };
            keys.insert(LOCAL_KEY_ID.to_owned(), cipher(&encoded)?);
        }
        let active = match &config.active_key {
            Some(id) if keys.contains_key(id) => id.clone(),
            Some(id) => return Err(invalid(format!("pii.active_key {id:?} is not in pii.keys"))),
            None => keys.keys().next_back().cloned().unwrap_or_default(),
        };
        Ok(Self {
            keys,
            active,
            fields: config.fields.clone(),
        })
    }

    /// The profile with its personal fields sealed.
    pub fn seal(&self, user_id: &str, profile: &Value) -> Result<Value> {
        let Value::Object(fields) = profile else {
            return Ok(profile.clone());
        };
        let key = &self.keys[&self.active];
        let personal = PersonalFields::new(&self.fields);
        let mut out = Map::with_capacity(fields.len());
        for (name, value) in fields {
            let seal = personal.is_personal(name)
                || personal.holds_personal(value)
                || value.get(SEALED).is_some();
            if !seal || value.is_null() {
                out.insert(name.clone(), value.clone());
                continue;
            }
            let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
            let plain = serde_json::to_vec(value)?;
            let sealed = key
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &plain,
                        aad: user_id.as_bytes(),
                    },
                )
                .map_err(|_| invalid("encryption failed"))?;
            let mut blob = nonce.to_vec();
            blob.extend_from_slice(&sealed);
            let text = format!("{}:{}", self.active, B64.encode(blob));
            out.insert(name.clone(), serde_json::json!({ SEALED: text }));
        }
        Ok(Value::Object(out))
    }

    /// The profile with its sealed fields opened.
    pub fn open(&self, user_id: &str, stored: &Value) -> Result<Value> {
        let Value::Object(fields) = stored else {
            return Ok(stored.clone());
        };
        let mut out = Map::with_capacity(fields.len());
        for (name, value) in fields {
            let Some(text) = value.get(SEALED).and_then(Value::as_str) else {
                out.insert(name.clone(), value.clone());
                continue;
            };
            let (id, blob) = text
                .split_once(':')
                .ok_or_else(|| invalid("a sealed value lacks its key id"))?;
            // The id is not quoted: in a value that only looks sealed it is the client's text.
            let key = self
                .keys
                .get(id)
                .ok_or_else(|| invalid("a sealed value names a pii key that is not configured"))?;
            let blob = B64
                .decode(blob)
                .map_err(|_| invalid("a sealed value is not base64"))?;
            if blob.len() < 12 {
                return Err(invalid("a sealed value is too short"));
            }
            let (nonce, sealed) = blob.split_at(12);
            let plain = key
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: user_id.as_bytes(),
                    },
                )
                .map_err(|_| invalid("a sealed value does not open (wrong key or tampered)"))?;
            out.insert(name.clone(), serde_json::from_slice(&plain)?);
        }
        Ok(Value::Object(out))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// A catalog whose profiles are sealed at rest.
pub struct SealedCatalog {
    inner: Arc<dyn Catalog>,
    pii: Arc<PiiCipher>,
}

impl SealedCatalog {
    pub fn new(inner: Arc<dyn Catalog>, pii: Arc<PiiCipher>) -> Self {
        Self { inner, pii }
    }
}

#[async_trait]
impl Catalog for SealedCatalog {
    async fn upsert(&self, item: &Item) -> Result<()> {
        self.inner.upsert(item).await
    }
    async fn delete(&self, item_id: &str, at: i64) -> Result<bool> {
        self.inner.delete(item_id, at).await
    }
    async fn load_all(&self) -> Result<(Vec<Item>, Vec<String>)> {
        self.inner.load_all().await
    }
    async fn put_profile(&self, user_id: &str, profile: &Value) -> Result<()> {
        let sealed = self.pii.seal(user_id, profile)?;
        self.inner.put_profile(user_id, &sealed).await
    }
    async fn get_profile(&self, user_id: &str) -> Result<Option<Value>> {
        match self.inner.get_profile(user_id).await? {
            Some(stored) => Ok(Some(self.pii.open(user_id, &stored)?)),
            None => Ok(None),
        }
    }
    async fn delete_profile(&self, user_id: &str) -> Result<()> {
        self.inner.delete_profile(user_id).await
    }
    async fn profiles(&self) -> Result<Vec<(String, Value)>> {
        let stored = self.inner.profiles().await?;
        let mut open = Vec::with_capacity(stored.len());
        for (user, profile) in stored {
            match self.pii.open(&user, &profile) {
                Ok(profile) => open.push((user, profile)),
                // Neither the user nor the value is logged: either may be personal.
                Err(error) => tracing::warn!(%error, "skipping a profile that does not open"),
            }
        }
        Ok(open)
    }
    async fn health(&self) -> std::result::Result<(), String> {
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::Secret;

    fn config(keys: &[(&str, [u8; 32])], active: Option<&str>) -> PiiConfig {
        PiiConfig {
            keys: keys
                .iter()
                .map(|(id, k)| ((*id).to_owned(), Secret(B64.encode(k))))
                .collect(),
            active_key: active.map(str::to_owned),
            ..PiiConfig::default()
        }
    }

    #[test]
    fn seals_personal_fields_and_opens_them_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pii =
            PiiCipher::from_config(&config(&[("k1", [7; 32])], None), dir.path()).expect("cipher");
        let profile = serde_json::json!({"email": "ada@example.org", "name": "Ada", "age": 36});
        let sealed = pii.seal("u1", &profile).expect("seal");
        let text = sealed.to_string();
        assert!(
            !text.contains("ada@example.org") && !text.contains("Ada"),
            "{text}"
        );
        assert_eq!(sealed["age"], 36, "other fields stay readable for training");
        assert!(
            sealed["email"][SEALED]
                .as_str()
                .expect("sealed")
                .starts_with("k1:")
        );
        assert_eq!(pii.open("u1", &sealed).expect("open"), profile);
        // Bound to its user: copied into another profile, it does not open.
        assert!(pii.open("u2", &sealed).is_err());
        // Sealing twice gives different ciphertexts (fresh nonces).
        assert_ne!(pii.seal("u1", &profile).expect("seal"), sealed);
    }

    #[test]
    fn old_keys_keep_opening_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before =
            PiiCipher::from_config(&config(&[("k1", [1; 32])], None), dir.path()).expect("cipher");
        let old = before
            .seal("u", &serde_json::json!({"email": "a@b.c"}))
            .expect("seal");
        let after = PiiCipher::from_config(
            &config(&[("k1", [1; 32]), ("k2", [2; 32])], Some("k2")),
            dir.path(),
        )
        .expect("cipher");
        assert_eq!(after.open("u", &old).expect("open")["email"], "a@b.c");
        let new = after
            .seal("u", &serde_json::json!({"email": "a@b.c"}))
            .expect("seal");
        assert!(
            new["email"][SEALED]
                .as_str()
                .expect("sealed")
                .starts_with("k2:")
        );
        assert!(
            before.open("u", &new).is_err(),
            "k2 is unknown to the old config"
        );
    }

    #[test]
    fn generates_one_local_key_and_reuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = PiiCipher::from_config(&PiiConfig::default(), dir.path()).expect("cipher");
        let sealed = first
            .seal("u", &serde_json::json!({"name": "N"}))
            .expect("seal");
        let again = PiiCipher::from_config(&PiiConfig::default(), dir.path()).expect("cipher");
        assert_eq!(again.open("u", &sealed).expect("open")["name"], "N");
        let unknown_active = config(&[("k", [0; 32])], Some("missing"));
        assert!(PiiCipher::from_config(&unknown_active, dir.path()).is_err());
    }

    #[test]
    fn names_match_ignoring_case_and_nested_personal_fields_are_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pii =
            PiiCipher::from_config(&config(&[("k1", [3; 32])], None), dir.path()).expect("cipher");
        let profile = serde_json::json!({
            "EMAIL": "ada@example.org",
            "contact": {"Name": "Ada Lovelace", "city": "London"},
            "age": 36,
        });
        let sealed = pii.seal("u1", &profile).expect("seal");
        let text = sealed.to_string();
        assert!(
            !text.contains("ada@example.org") && !text.contains("Lovelace"),
            "{text}"
        );
        assert_eq!(sealed["age"], 36);
        assert_eq!(pii.open("u1", &sealed).expect("open"), profile);
    }

    #[tokio::test]
    async fn a_value_that_only_looks_sealed_does_not_break_profiles_for_everyone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pii = Arc::new(
            PiiCipher::from_config(&config(&[("k1", [5; 32])], None), dir.path()).expect("cipher"),
        );
        let db = Arc::new(crate::db::Db::open(&dir.path().join("db")).expect("db"));
        let inner: Arc<dyn Catalog> = Arc::new(crate::catalog::RocksCatalog::new(db));
        let catalog = SealedCatalog::new(inner.clone(), pii);
        // A client's own value shaped like ciphertext is sealed like a personal one: it opens
        // back to exactly what the client sent.
        let lookalike = serde_json::json!({"bio": {"$pii": "k1:bm90IHNlYWxlZA=="}, "age": 30});
        catalog
            .put_profile("mimic", &lookalike)
            .await
            .expect("stored");
        assert_eq!(
            catalog.get_profile("mimic").await.expect("opens"),
            Some(lookalike)
        );
        // One written before that rule (straight to the store) does not open; the others load.
        inner
            .put_profile(
                "legacy",
                &serde_json::json!({"bio": {"$pii": "nokey:AAAA"}}),
            )
            .await
            .expect("stored");
        catalog
            .put_profile(
                "ada",
                &serde_json::json!({"email": "ada@example.org", "age": 36}),
            )
            .await
            .expect("stored");
        let mut users: Vec<String> = catalog
            .profiles()
            .await
            .expect("profiles load")
            .into_iter()
            .map(|(user, _)| user)
            .collect();
        users.sort();
        assert_eq!(users, ["ada", "mimic"]);
    }
}
