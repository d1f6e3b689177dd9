//! Personal data encrypted per member, for erasure by crypto-shredding.
//!
//! Every member has a random 256-bit data key. The personal part of each of
//! its events (handles, display names, excerpts, urls, attributes) is sealed
//! with it (AES-256-GCM, a fresh 96-bit nonce per event, the member id as
//! associated data, so a sealed part cannot be moved to another member).
//! The data key is kept in `member_keys` wrapped (sealed) by the master key,
//! which is configuration, never in the database. Destroying a member's
//! wrapped key makes its personal data unreadable everywhere at once; reads
//! join `member_keys`, so every replica sees it in the same transaction.
//!
//! Identity lookups do not keep handles either: `identities` holds a keyed
//! hash (HMAC-SHA-256, a key derived from the master key) of the community
//! and the normalized handle, so the same handle still finds its member and
//! the table reveals no handle.
//!
//! A sealed part starts with [`SEALED`], a byte no stored personal part
//! starts with (its first byte is a protobuf tag of a small field number),
//! so parts written before encryption existed still read as they are (until
//! `Store::migrate` seals them, once per database).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, Generate, Key, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

use crate::StoreError;

/// The first byte of a sealed personal part (format version 1).
pub const SEALED: u8 = 0xFF;
const NONCE_LEN: usize = 12;
/// Unwrapped data keys kept in memory, by wrapped key. Bounded: past it
/// the cache starts over (an unwrap costs microseconds).
const CACHE_LIMIT: usize = 100_000;

/// The key that wraps every member's data key. 32 bytes.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Arc<Aes256Gcm>,
    /// The key of identity lookups, derived from the master key.
    lookup: Arc<[u8; 32]>,
}

/// How a keyed identity lookup starts in `identities.handle_key` (a
/// normalized handle from before lookups were keyed does not).
pub const LOOKUP_PREFIX: &str = "h1:";

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, StoreError> {
        let key = Key::<Aes256Gcm>::try_from(bytes)
            .map_err(|_| StoreError::MasterKey(format!("must be 32 bytes, got {}", bytes.len())))?;
        let lookup: [u8; 32] = hmac_sha256(bytes, &[b"rapport identity lookup v1"]);
        Ok(MasterKey {
            cipher: Arc::new(Aes256Gcm::new(&key)),
            lookup: Arc::new(lookup),
        })
    }

    /// A key written as base64 (as `openssl rand -base64 32` prints it),
    /// surrounding whitespace ignored.
    pub fn from_base64(text: &str) -> Result<MasterKey, StoreError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| StoreError::MasterKey(format!("not base64: {e}")))?;
        MasterKey::from_bytes(&bytes)
    }

    /// Reads a key file (base64), or, when `create` and it does not exist,
    /// generates one and writes it readable by its owner only.
    pub fn load_or_create(path: &Path, create: bool) -> Result<MasterKey, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => MasterKey::from_base64(&text).map_err(|e| {
                StoreError::MasterKey(format!("{}: {}", path.display(), e.master_key_problem()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Key::<Aes256Gcm>::generate();
                let text = base64::engine::general_purpose::STANDARD.encode(key.as_slice());
                write_private(path, &text).map_err(|e| {
                    StoreError::MasterKey(format!("cannot create {}: {e}", path.display()))
                })?;
                MasterKey::from_bytes(key.as_slice())
            }
            Err(e) => Err(StoreError::MasterKey(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// What `identities.handle_key` holds for a normalized handle in a
    /// community: a keyed hash, equal for equal handles, revealing none.
    pub fn identity_lookup(&self, community_id: &str, handle_key: &str) -> String {
        let mac = hmac_sha256(
            &self.lookup[..],
            &[community_id.as_bytes(), &[0], handle_key.as_bytes()],
        );
        format!("{LOOKUP_PREFIX}{}", hex::encode(mac))
    }

    /// A new member's data key, and its wrapped form for `member_keys`.
    pub fn new_data_key(&self, member_id: &str) -> (DataKey, Vec<u8>) {
        let key = Key::<Aes256Gcm>::generate();
        let wrapped = seal(&self.cipher, key.as_slice(), member_id.as_bytes());
        (DataKey(Arc::new(Aes256Gcm::new(&key))), wrapped)
    }

    fn unwrap_key(&self, wrapped: &[u8], member_id: &str) -> Result<DataKey, StoreError> {
        let bytes = open(&self.cipher, wrapped, member_id.as_bytes()).ok_or_else(|| {
            StoreError::MasterKey(format!(
                "the data key of member {member_id:?} does not open with this master key \
                 (was the master key changed?)"
            ))
        })?;
        let key = Key::<Aes256Gcm>::try_from(&bytes[..])
            .map_err(|_| StoreError::Corrupt(format!("data key of member {member_id:?}")))?;
        Ok(DataKey(Arc::new(Aes256Gcm::new(&key))))
    }
}

impl StoreError {
    fn master_key_problem(&self) -> String {
        match self {
            StoreError::MasterKey(problem) => problem.clone(),
            other => other.to_string(),
        }
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// One member's data key, unwrapped.
#[derive(Clone)]
pub struct DataKey(Arc<Aes256Gcm>);

impl DataKey {
    /// The sealed form of a personal part.
    pub fn seal(&self, personal: &[u8], member_id: &str) -> Vec<u8> {
        seal(&self.0, personal, member_id.as_bytes())
    }
}

fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = Nonce::generate();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encrypts any message shorter than 64 GiB");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(SEALED);
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&sealed);
    out
}

fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let rest = sealed.strip_prefix(&[SEALED])?;
    if rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).ok()?;
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// The master key and the data keys unwrapped so far.
#[derive(Clone, Debug)]
pub struct Keyring {
    master: MasterKey,
    /// For reads: by wrapped key (the row read carries it).
    unwrapped: Arc<Mutex<HashMap<Vec<u8>, DataKey>>>,
    /// For writes: by member, holding only keys known to be committed.
    by_member: Arc<Mutex<HashMap<String, DataKey>>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Keyring {
    pub fn new(master: MasterKey) -> Keyring {
        Keyring {
            master,
            unwrapped: Arc::default(),
            by_member: Arc::default(),
        }
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The `identities` key of an identity (see [`MasterKey::identity_lookup`]).
    pub fn lookup(&self, key: &rapport_domain::IdentityKey) -> String {
        self.master
            .identity_lookup(&key.community_id, &key.handle_key)
    }

    /// The data key of `member_id` from its wrapped form.
    pub fn data_key(&self, wrapped: &[u8], member_id: &str) -> Result<DataKey, StoreError> {
        if let Some(key) = self.unwrapped.lock().expect("keyring").get(wrapped) {
            return Ok(key.clone());
        }
        let key = self.master.unwrap_key(wrapped, member_id)?;
        let mut cache = self.unwrapped.lock().expect("keyring");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(wrapped.to_vec(), key.clone());
        Ok(key)
    }

    /// The data key to seal a member's new events with, if known.
    pub(crate) fn write_key(&self, member_id: &str) -> Option<DataKey> {
        self.by_member
            .lock()
            .expect("keyring")
            .get(member_id)
            .cloned()
    }

    /// Remembers data keys that are committed in `member_keys` (never one
    /// of a transaction that may still roll back: events sealed with a key
    /// that was never stored could not be read).
    pub(crate) fn remember(&self, keys: impl IntoIterator<Item = (String, DataKey)>) {
        let mut cache = self.by_member.lock().expect("keyring");
        for (member, key) in keys {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(member, key);
        }
    }

    /// Drops a member's key from the write cache (it was erased).
    pub(crate) fn forget(&self, member_id: &str) {
        self.by_member.lock().expect("keyring").remove(member_id);
    }

    /// A personal part as read: opened with the member's wrapped key;
    /// `None` when the member's key is gone (erased); as it is when it was
    /// written before encryption.
    pub fn open_personal(
        &self,
        personal: Option<Vec<u8>>,
        wrapped: Option<&[u8]>,
        member_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(personal) = personal else {
            return Ok(None);
        };
        if personal.first() != Some(&SEALED) {
            return Ok(Some(personal));
        }
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let key = self.data_key(wrapped, member_id)?;
        open(&key.0, &personal, member_id.as_bytes())
            .map(Some)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "a personal part of member {member_id:?} does not open"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_sealed_part_opens_for_its_member_only() {
        let ring = Keyring::new(master());
        let (key, wrapped) = ring.master().new_data_key("m1");
        let sealed = key.seal(b"ana#1234", "m1");
        assert_eq!(sealed[0], SEALED);
        assert!(!sealed.windows(8).any(|w| w == b"ana#1234"), "no plaintext");
        let opened = ring
            .open_personal(Some(sealed.clone()), Some(&wrapped), "m1")
            .unwrap();
        assert_eq!(opened.as_deref(), Some(&b"ana#1234"[..]));
        // Moved to another member, it does not open (the key is bound to m1).
        assert!(
            ring.open_personal(Some(sealed.clone()), Some(&wrapped), "m2")
                .is_err()
        );
        // Without the member's key (erased), there is nothing to read.
        assert_eq!(ring.open_personal(Some(sealed), None, "m1").unwrap(), None);
    }

    #[test]
    fn parts_written_before_encryption_read_as_they_are() {
        let ring = Keyring::new(master());
        let legacy = vec![0x0A, 0x03, b'a', b'n', b'a'];
        assert_eq!(
            ring.open_personal(Some(legacy.clone()), None, "m1")
                .unwrap(),
            Some(legacy)
        );
    }

    #[test]
    fn identity_lookups_match_equal_handles_and_reveal_none() {
        let key = master();
        let a = key.identity_lookup("acme", "ana#1234");
        assert_eq!(a, key.identity_lookup("acme", "ana#1234"));
        assert_ne!(
            a,
            key.identity_lookup("globex", "ana#1234"),
            "per community"
        );
        assert_ne!(a, key.identity_lookup("acme", "ana#1235"));
        assert!(a.starts_with(LOOKUP_PREFIX) && !a.contains("ana"));
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        assert_ne!(a, other.identity_lookup("acme", "ana#1234"), "keyed");
    }

    #[test]
    fn another_master_key_cannot_unwrap() {
        let (_, wrapped) = master().new_data_key("m1");
        let other = Keyring::new(MasterKey::from_bytes(&[8u8; 32]).unwrap());
        let error = other.data_key(&wrapped, "m1").unwrap_err().to_string();
        assert!(error.contains("master key"), "{error}");
    }

    #[test]
    fn master_keys_are_32_bytes_of_base64() {
        assert!(
            MasterKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([1u8; 32]))
                .is_ok()
        );
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn a_missing_key_file_is_created_once_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        assert!(
            MasterKey::load_or_create(&path, false).is_err(),
            "not created unless asked"
        );
        let ring = Keyring::new(MasterKey::load_or_create(&path, true).unwrap());
        let (_, wrapped) = ring.master().new_data_key("m1");
        let again = Keyring::new(MasterKey::load_or_create(&path, true).unwrap());
        assert!(
            again.data_key(&wrapped, "m1").is_ok(),
            "the same key the second time"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
