//! `[pii]`: which profile fields are personal, and the keys they are encrypted with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::Secret;

/// Personal data at rest: profile fields encrypted with AES-256-GCM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Profile fields that are personal. Default `email`, `name`, `phone`, `address`, `notes`.
    #[serde(default = "fields")]
    pub fields: Vec<String>,
    /// Keys by id, each 32 bytes in base64 (`STREAMREC__PII__KEYS__<ID>=...`). The key id is
    /// stored with every ciphertext, so old keys keep decrypting after a rotation. When empty, a
    /// key is generated once into `data_dir/pii.key` (fine for one node, not for a cluster).
    #[serde(default)]
    pub keys: BTreeMap<String, Secret>,
    /// The key new values are encrypted with. Default: the only key, or the last id in order.
    #[serde(default)]
    pub active_key: Option<String>,
}

fn fields() -> Vec<String> {
    ["email", "name", "phone", "address", "notes"]
        .map(String::from)
        .to_vec()
}

impl Default for PiiConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl PiiConfig {
    /// Nothing here: keys are checked (length, base64, `active_key` present) when the key ring
    /// is built, where the error can name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
