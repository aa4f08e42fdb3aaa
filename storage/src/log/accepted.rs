//! Deduplication by `(user_id, event_id)`: the accepted ids are stored as hashes keyed by a
//! per-node salt (nothing personal in clear), together with the offset up to which the log's
//! records have their ids stored. Kept apart so that what is hashed, and how the legacy plain
//! keys are migrated, is read in one place.

use sha2::{Digest, Sha256};

use crate::db::{Cf, Db, id_stamp};
use crate::error::Result;

/// Meta keys: the salt of the accepted-id hashes, the legacy migration done, and per partition
/// the offset up to which the accepted ids of the log's records are stored.
const SALT_KEY: &[u8] = b"accepted_ids_salt";
const HASHED_KEY: &[u8] = b"accepted_ids_hashed";
const IDS_THROUGH: &[u8] = b"log_ids_through";
/// First byte of a hashed accepted id: never the first byte of a UTF-8 user id, so keys written
/// by earlier versions (`user \0 event`) are told apart.
const HASHED: u8 = 0xff;
/// The accepted-ids key of an event: a hash keyed by the node's salt, so that the set holds no
/// user or event id in clear, and the set can outlive a user's erasure for the dedupe window.
pub(super) fn accepted_key(salt: &[u8], user_id: &str, event_id: &str) -> [u8; 17] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update((user_id.len() as u64).to_le_bytes());
    hasher.update(user_id.as_bytes());
    hasher.update(event_id.as_bytes());
    let digest = hasher.finalize();
    let mut key = [HASHED; 17];
    key[1..].copy_from_slice(&digest[..16]);
    key
}

/// The node's salt for accepted-id hashes, made once.
pub(super) fn salt(db: &Db) -> Result<Vec<u8>> {
    if let Some(salt) = db.get(Cf::Meta, SALT_KEY)? {
        return Ok(salt);
    }
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut salt = vec![0u8; 32];
    OsRng.fill_bytes(&mut salt);
    db.put(Cf::Meta, SALT_KEY, &salt)?;
    Ok(salt)
}

/// Earlier versions kept accepted ids as `user \0 event` without a time: hash them, counting
/// their window from now. Runs once; a crash half-way resumes (hashed keys are told apart).
pub(super) fn hash_plain_accepted_ids(db: &Db, salt: &[u8]) -> Result<()> {
    if db.contains(Cf::Meta, HASHED_KEY)? {
        return Ok(());
    }
    let stamp = id_stamp(common::now_millis());
    let mut batch = rocksdb::WriteBatch::default();
    for kv in db.scan(Cf::AcceptedIds) {
        let (key, _) = kv?;
        if key.first() == Some(&HASHED) {
            break;
        }
        if let Some(at) = key.iter().position(|&b| b == 0) {
            let user = String::from_utf8_lossy(&key[..at]);
            let event = String::from_utf8_lossy(&key[at + 1..]);
            batch.put_cf(
                db.cf(Cf::AcceptedIds),
                accepted_key(salt, &user, &event),
                stamp,
            );
        }
        batch.delete_cf(db.cf(Cf::AcceptedIds), &key);
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(db.cf(Cf::Meta), HASHED_KEY, []);
    db.write(batch)
}

pub(super) fn ids_through_key(partition: u32) -> Vec<u8> {
    let mut key = IDS_THROUGH.to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}
