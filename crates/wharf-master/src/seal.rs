//! Encryption at rest: what must not sit in the store in the clear (the cluster CA's private
//! keys today; secrets and ingress keys next) is sealed with XChaCha20-Poly1305 under a data
//! key, with associated data naming the item and its version (a sealed value moved to another
//! item does not open). The data key is in the store, itself sealed under the master key, which
//! never enters the store: a file in the data directory (`master.key`, 0600).
//!
//! A store whose data key the master key does not open is refused at start with what to do;
//! nothing is half-started. `rotate` makes a new master key crash-safely: the new key is
//! written next to the old one (`master.key.new`), the data key re-sealed, then the new key
//! takes the old one's place; a start finds whichever of the two opens the store.
//!
//! Autolock (`wharf server --autolock`, as Swarm's): the master key is derived with argon2id
//! from an unlock key printed once when the store is made; `unlock` opens the data key with it.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use wharf_store::{Compare, Op, Store, Txn};

use crate::Error;
use crate::model::{decode, encode, keys};

/// The associated data of the data key, sealed under the master key.
const DATA_KEY_ITEM: &str = "wharf data key";

/// A sealed value: the nonce and the ciphertext (with its tag), hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// 32 bytes of key.
#[derive(Clone)]
struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    fn random() -> Key {
        Key(rand::random())
    }

    fn seal(&self, item: &str, version: u64, plain: &[u8]) -> Sealed {
        let nonce: [u8; 24] = rand::random();
        let aad = format!("{item}\n{version}");
        let ciphertext = XChaCha20Poly1305::new(&self.0.into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("sealing in memory cannot fail");
        Sealed {
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        }
    }

    fn open(&self, item: &str, version: u64, s: &Sealed) -> Option<Vec<u8>> {
        let nonce: [u8; 24] = hex::decode(&s.nonce).ok()?.try_into().ok()?;
        let ciphertext = hex::decode(&s.ciphertext).ok()?;
        let aad = format!("{item}\n{version}");
        XChaCha20Poly1305::new(&self.0.into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

/// Seals and opens items under the store's data key.
#[derive(Clone, Debug)]
pub struct Sealer {
    data: Key,
}

impl Sealer {
    /// A sealer with a key of its own (an in-memory store in tests: nothing outlives it).
    pub fn ephemeral() -> Sealer {
        Sealer {
            data: Key::random(),
        }
    }

    /// `plain` sealed as version `version` of `item`.
    pub fn seal(&self, item: &str, version: u64, plain: &[u8]) -> Sealed {
        self.data.seal(item, version, plain)
    }

    /// The plaintext of version `version` of `item`: an error when it does not open (a value
    /// changed, moved from another item, or sealed under another key).
    pub fn open(&self, item: &str, version: u64, s: &Sealed) -> Result<Vec<u8>, Error> {
        self.data
            .open(item, version, s)
            .ok_or_else(|| Error::Corrupt(format!("{item} (version {version}) does not open")))
    }
}

/// The master key file of a data directory, and its successor during a rotation.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("master.key")
}

fn next_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("master.key.new")
}

fn read_key(path: &Path) -> Result<Option<Key>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "{} is not a master key (64 hex digits)",
                path.display()
            ))
        })?;
    Ok(Some(Key(bytes)))
}

/// Write `key` to `path` (0600), synced, through a temporary file and a rename.
fn write_key(path: &Path, key: &Key) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(hex::encode(key.0).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))
}

/// The sealer of the store, with the master key of `data_dir`: made (key file and data key)
/// for a store that has no data key yet; refused, saying what to do, when the key file is
/// missing or does not open the store's data key.
pub async fn open(store: &dyn Store, data_dir: &Path) -> Result<Sealer, Error> {
    if is_autolocked(store).await? {
        return Err(Error::Invalid {
            message: "this store is autolocked: its master key is an unlock key, not a file".into(),
            location: None,
            hint: Some(
                "start `wharf server --autolock`, then run `wharf unlock` on this host".into(),
            ),
        });
    }
    let (file, next) = (key_file(data_dir), next_key_file(data_dir));
    let stored = store.get(keys::DATA_KEY).await?;
    let Some(kv) = stored else {
        let master = match read_key(&file)? {
            Some(k) => k,
            None => {
                let k = Key::random();
                write_key(&file, &k)?;
                k
            }
        };
        let data = Key::random();
        let wrapped = master.seal(DATA_KEY_ITEM, 1, &data.0);
        let txn = Txn::new()
            .when([Compare::missing(keys::DATA_KEY)])
            .then([Op::put(keys::DATA_KEY, encode(&wrapped))]);
        if store.txn(txn).await?.succeeded {
            return Ok(Sealer { data });
        }
        return Err(Error::Unavailable(
            "the data key changed while it was made: start again".into(),
        ));
    };
    let wrapped: Sealed = decode(keys::DATA_KEY, &kv.value)?;
    for path in [&file, &next] {
        let Some(master) = read_key(path)? else {
            continue;
        };
        if let Some(data) = master.open(DATA_KEY_ITEM, 1, &wrapped) {
            if path == &next {
                // A rotation ended between re-sealing and the rename: finish it.
                std::fs::rename(&next, &file).map_err(|e| {
                    Error::Unavailable(format!("cannot finish the key rotation: {e}"))
                })?;
            }
            let data: [u8; 32] = data
                .try_into()
                .map_err(|_| Error::Corrupt("the data key is not 32 bytes".into()))?;
            return Ok(Sealer { data: Key(data) });
        }
    }
    let why = if file.exists() {
        format!("{} does not open this store's data key", file.display())
    } else {
        format!(
            "the store is sealed, and its master key {} is missing",
            file.display()
        )
    };
    Err(Error::Invalid {
        message: why,
        location: None,
        hint: Some(
            "restore master.key from the backup taken with the store (the two go together); \
             a master joining masters on a shared etcd store needs a copy of their master.key \
             in its data directory; without it the sealed keys cannot be read"
                .into(),
        ),
    })
}

/// Make a new master key for the store of `data_dir` and re-seal the data key under it.
pub async fn rotate(store: &dyn Store, data_dir: &Path, sealer: &Sealer) -> Result<(), Error> {
    let (file, next) = (key_file(data_dir), next_key_file(data_dir));
    let kv = store
        .get(keys::DATA_KEY)
        .await?
        .ok_or_else(|| Error::Unavailable("the store has no data key yet".into()))?;
    let master = Key::random();
    write_key(&next, &master)?;
    let wrapped = master.seal(DATA_KEY_ITEM, 1, &sealer.data.0);
    let txn = Txn::new()
        .when([Compare::unchanged_since(keys::DATA_KEY, kv.mod_revision)])
        .then([Op::put(keys::DATA_KEY, encode(&wrapped))]);
    if !store.txn(txn).await?.succeeded {
        let _ = std::fs::remove_file(&next);
        return Err(Error::Conflict {
            message: "the data key changed meanwhile".into(),
            hint: Some("run the command again".into()),
        });
    }
    std::fs::rename(&next, &file)
        .map_err(|e| Error::Unavailable(format!("cannot replace {}: {e}", file.display())))
}

/// The associated data of the data key, sealed under a passphrase's key (autolock).
const LOCKED_DATA_KEY_ITEM: &str = "wharf data key (autolock)";

/// `/keys/autolock`: present when the store is autolocked: the master key is derived from a
/// passphrase (argon2id, this salt) that `wharf unlock` gives at every start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autolock {
    /// The argon2id salt, hex.
    pub salt: String,
}

/// The master key of `passphrase` under `salt` (argon2id, its default cost).
fn derive(passphrase: &str, salt: &[u8]) -> Result<Key, Error> {
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Unavailable(format!("cannot derive the master key: {e}")))?;
    Ok(Key(out))
}

/// Whether the store's master key is a passphrase's (`wharf server --autolock`).
pub async fn is_autolocked(store: &dyn Store) -> Result<bool, Error> {
    Ok(store.get(keys::AUTOLOCK).await?.is_some())
}

/// A new unlock key for an autolocked store: 24 random bytes, hex, with a prefix that says
/// what it is.
pub fn new_unlock_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("WUK1-{}", hex::encode(bytes))
}

/// A new unlock key for the autolocked `store` (unlocked: `sealer` holds its data key): a new
/// salt, the data key sealed under the new key's argon2id key, both in one guarded write. The
/// old key no longer unlocks the store.
pub async fn rotate_unlock(store: &dyn Store, sealer: &Sealer) -> Result<String, Error> {
    let lock = store
        .get(keys::AUTOLOCK)
        .await?
        .ok_or_else(|| Error::Unavailable("the store is not autolocked".into()))?;
    let data = store
        .get(keys::DATA_KEY)
        .await?
        .ok_or_else(|| Error::Unavailable("the store has no data key yet".into()))?;
    let passphrase = new_unlock_key();
    let salt: [u8; 16] = rand::random();
    let master = derive(&passphrase, &salt)?;
    let wrapped = master.seal(LOCKED_DATA_KEY_ITEM, 1, &sealer.data.0);
    let txn = Txn::new()
        .when([
            Compare::unchanged_since(keys::AUTOLOCK, lock.mod_revision),
            Compare::unchanged_since(keys::DATA_KEY, data.mod_revision),
        ])
        .then([
            Op::put(
                keys::AUTOLOCK,
                encode(&Autolock {
                    salt: hex::encode(salt),
                }),
            ),
            Op::put(keys::DATA_KEY, encode(&wrapped)),
        ]);
    if !store.txn(txn).await?.succeeded {
        return Err(Error::Conflict {
            message: "the unlock key changed meanwhile".into(),
            hint: Some("run the command again".into()),
        });
    }
    Ok(passphrase)
}

/// The sealer of an autolocked store, with the master key derived from `passphrase`: made
/// (salt and data key) for a store that has no data key yet. A wrong passphrase is
/// `Error::Unauthorized`; a store sealed by a key file is refused, saying so.
pub async fn unlock(store: &dyn Store, passphrase: &str) -> Result<Sealer, Error> {
    let lock = store.get(keys::AUTOLOCK).await?;
    let data = store.get(keys::DATA_KEY).await?;
    match (lock, data) {
        (None, None) => {
            let salt: [u8; 16] = rand::random();
            let master = derive(passphrase, &salt)?;
            let data = Key::random();
            let wrapped = master.seal(LOCKED_DATA_KEY_ITEM, 1, &data.0);
            let lock = Autolock {
                salt: hex::encode(salt),
            };
            let txn = Txn::new()
                .when([
                    Compare::missing(keys::DATA_KEY),
                    Compare::missing(keys::AUTOLOCK),
                ])
                .then([
                    Op::put(keys::AUTOLOCK, encode(&lock)),
                    Op::put(keys::DATA_KEY, encode(&wrapped)),
                ]);
            if store.txn(txn).await?.succeeded {
                return Ok(Sealer { data });
            }
            Err(Error::Unavailable(
                "the data key changed while it was made: start again".into(),
            ))
        }
        (Some(lock), Some(data)) => {
            let lock: Autolock = decode(keys::AUTOLOCK, &lock.value)?;
            let salt = hex::decode(&lock.salt)
                .map_err(|_| Error::Corrupt("the autolock salt is not hex".into()))?;
            let wrapped: Sealed = decode(keys::DATA_KEY, &data.value)?;
            let master = derive(passphrase, &salt)?;
            let Some(data) = master.open(LOCKED_DATA_KEY_ITEM, 1, &wrapped) else {
                return Err(Error::Unauthorized {
                    message: "wrong unlock key".into(),
                    hint: Some(
                        "give the unlock key `wharf server --autolock` printed when the store was made"
                            .into(),
                    ),
                });
            };
            let data: [u8; 32] = data
                .try_into()
                .map_err(|_| Error::Corrupt("the data key is not 32 bytes".into()))?;
            Ok(Sealer { data: Key(data) })
        }
        (None, Some(_)) => Err(Error::Invalid {
            message: "this store is sealed by its master key file, not autolocked".into(),
            location: None,
            hint: Some(
                "start without --autolock (autolock is chosen when the store is made)".into(),
            ),
        }),
        (Some(_), None) => Err(Error::Corrupt(
            "the store is autolocked but has no data key".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use wharf_store::SqliteStore;

    use super::*;

    #[tokio::test]
    async fn a_new_unlock_key_unlocks_and_the_old_one_no_longer_does() {
        let store = SqliteStore::open_in_memory().unwrap();
        let old = new_unlock_key();
        let sealer = unlock(&store, &old).await.unwrap();
        let sealed = sealer.seal("x", 1, b"kept");
        let new = rotate_unlock(&store, &sealer).await.unwrap();
        assert_ne!(new, old);
        assert!(matches!(
            unlock(&store, &old).await,
            Err(Error::Unauthorized { .. })
        ));
        let again = unlock(&store, &new).await.unwrap();
        assert_eq!(
            again.open("x", 1, &sealed).unwrap(),
            b"kept",
            "the same data key"
        );
    }

    #[test]
    fn a_sealed_value_opens_only_as_its_item_and_version() {
        let s = Sealer::ephemeral();
        let sealed = s.seal("ca.key", 1, b"secret");
        assert_eq!(s.open("ca.key", 1, &sealed).unwrap(), b"secret");
        assert!(s.open("ca.key", 2, &sealed).is_err(), "another version");
        assert!(s.open("other", 1, &sealed).is_err(), "another item");
        assert!(
            Sealer::ephemeral().open("ca.key", 1, &sealed).is_err(),
            "another key"
        );
        assert!(!serde_json::to_string(&sealed).unwrap().contains("secret"));
    }

    #[tokio::test]
    async fn the_key_file_opens_the_store_and_its_loss_or_rotation_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_memory().unwrap();
        let first = open(&store, dir.path()).await.unwrap();
        let sealed = first.seal("x", 1, b"v");
        let again = open(&store, dir.path()).await.unwrap();
        assert_eq!(again.open("x", 1, &sealed).unwrap(), b"v");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        rotate(&store, dir.path(), &again).await.unwrap();
        let rotated = open(&store, dir.path()).await.unwrap();
        assert_eq!(
            rotated.open("x", 1, &sealed).unwrap(),
            b"v",
            "same data key"
        );

        // A rotation cut short after re-sealing: the new key file is found and put in place.
        let before = std::fs::read_to_string(key_file(dir.path())).unwrap();
        rotate(&store, dir.path(), &rotated).await.unwrap();
        let after = std::fs::read_to_string(key_file(dir.path())).unwrap();
        std::fs::write(key_file(dir.path()), &before).unwrap();
        std::fs::write(next_key_file(dir.path()), &after).unwrap();
        open(&store, dir.path()).await.unwrap();
        assert!(!next_key_file(dir.path()).exists());

        std::fs::remove_file(key_file(dir.path())).unwrap();
        let e = open(&store, dir.path()).await.unwrap_err();
        assert!(
            e.to_string().contains("master key") && e.to_string().contains("is missing"),
            "{e}"
        );
        std::fs::write(key_file(dir.path()), hex::encode([9u8; 32])).unwrap();
        let e = open(&store, dir.path()).await.unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
    }

    #[tokio::test]
    async fn an_autolocked_store_opens_with_its_unlock_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_memory().unwrap();
        let key = new_unlock_key();
        let first = unlock(&store, &key).await.unwrap();
        let sealed = first.seal("x", 1, b"v");
        let again = unlock(&store, &key).await.unwrap();
        assert_eq!(again.open("x", 1, &sealed).unwrap(), b"v");
        let wrong = unlock(&store, "WUK1-guess").await.unwrap_err();
        assert!(matches!(wrong, Error::Unauthorized { .. }), "{wrong:?}");
        let by_file = open(&store, dir.path()).await.unwrap_err();
        assert!(by_file.to_string().contains("autolocked"), "{by_file}");
        assert!(!key_file(dir.path()).exists(), "no key file made");

        let filed = SqliteStore::open_in_memory().unwrap();
        open(&filed, dir.path()).await.unwrap();
        let e = unlock(&filed, &key).await.unwrap_err();
        assert!(e.to_string().contains("not autolocked"), "{e}");
    }
}
