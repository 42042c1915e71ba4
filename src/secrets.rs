//! The secret store (SPEC §2): `master.key` (32 raw random bytes) and
//! `secrets.json` (`{"version":1,"entries":{name:{iv,tag,ciphertext}}}`),
//! AES-256-GCM with a fresh 12-byte IV per write and the 16-byte tag kept
//! apart, standard base64 with padding — the TypeScript runner's envelope,
//! byte for byte.
//!
//! A corrupt key or a tampered envelope is an error, never a reason to make
//! a new key: that would silently throw the stored token away. Where the
//! store lives (beside config.json) is the caller's business.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::files;
use crate::random;

pub const KEY_FILE: &str = "master.key";
pub const SECRETS_FILE: &str = "secrets.json";
const KEY_LEN: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A secret value. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The secrets this process holds, to scrub from outside text.
fn known() -> &'static RwLock<Vec<String>> {
    static KNOWN: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    KNOWN.get_or_init(RwLock::default)
}

/// What a scrubbed secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Remembers `secret`, so `scrub` removes it from text that came from
/// outside (a vault or proxy that echoes the Authorization header in an
/// error body, an agent that prints it). Too short a value is not one: it
/// would redact ordinary words.
pub fn remember(secret: &Secret) {
    if secret.0.len() < 6 {
        return;
    }
    let mut known = known().write().unwrap_or_else(|p| p.into_inner());
    if !known.contains(&secret.0) {
        known.push(secret.0.clone());
    }
}

/// `text` with every remembered secret replaced by `[redacted]`; borrowed
/// when there is none in it (the usual case).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let known = known().read().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in known.iter() {
        out = out.replace(s.as_str(), REDACTED);
    }
    Cow::Owned(out)
}

/// `scrub` of an owned string, without a copy when it holds no secret.
pub fn scrub_owned(text: String) -> String {
    match scrub(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => clean,
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug)]
pub enum SecretsError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// master.key exists but is not 32 bytes.
    BadKey {
        path: PathBuf,
        len: usize,
    },
    /// secrets.json is not the expected JSON shape.
    Malformed {
        path: PathBuf,
        reason: String,
    },
    /// An entry does not decrypt with master.key.
    Tampered {
        path: PathBuf,
        entry: String,
    },
    /// secrets.json has entries but master.key is missing.
    MissingKey {
        path: PathBuf,
    },
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SecretsError::BadKey { path, len } => write!(
                f,
                "{}: expected 32 bytes, found {len}: the key is corrupt; restore it from a backup, or remove it and secrets.json and store the vault token again",
                path.display()
            ),
            SecretsError::Malformed { path, reason } => write!(f, "{}: {reason}", path.display()),
            SecretsError::Tampered { path, entry } => write!(
                f,
                "{}: entry {entry:?} does not decrypt with master.key (the file was altered, or master.key is not the one it was written with)",
                path.display()
            ),
            SecretsError::MissingKey { path } => write!(
                f,
                "{}: master.key is missing beside it, so its entries cannot be decrypted; restore master.key, or remove secrets.json and store the vault token again",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SecretsError {}

/// One directory holding `master.key` and `secrets.json`.
#[derive(Clone, Debug)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    pub fn new(dir: impl Into<PathBuf>) -> SecretStore {
        SecretStore { dir: dir.into() }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    fn secrets_path(&self) -> PathBuf {
        self.dir.join(SECRETS_FILE)
    }

    /// Reads and decrypts one entry. `Ok(None)` when there is no such
    /// entry (or no secrets.json at all).
    pub fn get(&self, name: &str) -> Result<Option<Secret>, SecretsError> {
        let path = self.secrets_path();
        let entries = read_entries(&path)?;
        let Some(entry) = entries.get(name) else {
            return Ok(None);
        };
        let key = self
            .read_key()?
            .ok_or(SecretsError::MissingKey { path: path.clone() })?;
        let plain = open_envelope(&key, entry).map_err(|problem| match problem {
            Problem::Tampered => SecretsError::Tampered {
                path: path.clone(),
                entry: name.to_string(),
            },
            Problem::Shape(reason) => SecretsError::Malformed {
                path: path.clone(),
                reason: format!("entry {name:?}: {reason}"),
            },
        })?;
        String::from_utf8(plain)
            .map(|s| Some(Secret(s)))
            .map_err(|_| SecretsError::Malformed {
                path,
                reason: format!("entry {name:?} is not UTF-8 text"),
            })
    }

    /// Encrypts and stores one entry (fresh IV), keeping the others.
    /// Creates master.key (and the directory) on first need.
    pub fn set(&self, name: &str, value: &Secret) -> Result<(), SecretsError> {
        let path = self.secrets_path();
        let mut entries = read_entries(&path)?;
        // A new key while entries exist would make them unreadable for
        // good: that is the "silently regenerated" key SPEC §2 forbids.
        if !entries.is_empty() && self.read_key()?.is_none() {
            return Err(SecretsError::MissingKey { path });
        }
        let key = self.key_or_create()?;
        let envelope = seal(&key, value.expose().as_bytes()).map_err(|e| self.io(&path, e))?;
        entries.insert(name.to_string(), envelope);
        self.write_entries(&path, entries)
    }

    /// Removes one entry. Nothing to do if it is absent.
    pub fn remove(&self, name: &str) -> Result<(), SecretsError> {
        let path = self.secrets_path();
        let mut entries = read_entries(&path)?;
        if entries.remove(name).is_none() {
            return Ok(());
        }
        self.write_entries(&path, entries)
    }

    fn write_entries(&self, path: &Path, entries: Map<String, Value>) -> Result<(), SecretsError> {
        let doc = json!({ "version": 1, "entries": entries });
        let mut bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| self.io(path, io::Error::other(e)))?;
        bytes.push(b'\n');
        files::create_private_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        files::write_atomic(path, &bytes).map_err(|e| self.io(path, e))
    }

    fn read_key(&self) -> Result<Option<[u8; KEY_LEN]>, SecretsError> {
        let path = self.key_path();
        let Some(bytes) = files::read_optional(&path, 4 << 10).map_err(|e| self.io(&path, e))?
        else {
            return Ok(None);
        };
        <[u8; KEY_LEN]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| SecretsError::BadKey {
                path,
                len: bytes.len(),
            })
    }

    /// The key, made on first need. Two processes making it at once agree:
    /// the file is created without clobbering, and the loser reads the
    /// winner's key.
    fn key_or_create(&self) -> Result<[u8; KEY_LEN], SecretsError> {
        if let Some(key) = self.read_key()? {
            return Ok(key);
        }
        let path = self.key_path();
        let mut key = [0u8; KEY_LEN];
        random::fill(&mut key).map_err(|e| self.io(&path, e))?;
        files::create_private_dir(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        if files::write_new(&path, &key).map_err(|e| self.io(&path, e))? {
            return Ok(key);
        }
        self.read_key()?
            .ok_or_else(|| self.io(&path, io::Error::other("vanished while being created")))
    }

    fn io(&self, path: &Path, source: io::Error) -> SecretsError {
        SecretsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn read_entries(path: &Path) -> Result<Map<String, Value>, SecretsError> {
    let Some(bytes) = files::read_optional(path, 1 << 20).map_err(|source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    })?
    else {
        return Ok(Map::new());
    };
    parse_entries(&bytes).map_err(|reason| SecretsError::Malformed {
        path: path.to_path_buf(),
        reason,
    })
}

/// The entries of a secrets.json document.
pub fn parse_entries(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match doc.get("version") {
        Some(v) if v == 1 => {}
        other => {
            return Err(format!(
                "unsupported version {} (expected 1)",
                other.map_or("(none)".to_string(), Value::to_string)
            ));
        }
    }
    match doc.get("entries") {
        Some(Value::Object(entries)) => Ok(entries.clone()),
        None => Ok(Map::new()),
        Some(_) => Err("\"entries\" is not an object".to_string()),
    }
}

/// Decrypts one envelope with `key`; `Err` for a malformed or tampered one.
pub fn decrypt(key: &[u8; KEY_LEN], entry: &Value) -> Result<Vec<u8>, String> {
    open_envelope(key, entry).map_err(|p| match p {
        Problem::Tampered => "does not decrypt".to_string(),
        Problem::Shape(reason) => reason,
    })
}

enum Problem {
    Tampered,
    Shape(String),
}

/// Encrypts `plain` into an envelope `{iv, tag, ciphertext}`.
fn seal(key: &[u8; KEY_LEN], plain: &[u8]) -> io::Result<Value> {
    let cipher = Aes256Gcm::new(key.into());
    let mut iv = [0u8; IV_LEN];
    random::fill(&mut iv)?;
    let mut buf = plain.to_vec();
    let nonce = Nonce::from(iv);
    let tag = cipher
        .encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into())
        .map_err(|_| io::Error::other("encryption failed"))?;
    Ok(json!({
        "iv": B64.encode(iv),
        "tag": B64.encode(tag.as_slice()),
        "ciphertext": B64.encode(&buf),
    }))
}

/// Decrypts an envelope.
fn open_envelope(key: &[u8; KEY_LEN], entry: &Value) -> Result<Vec<u8>, Problem> {
    let field = |name: &str, len: Option<usize>| -> Result<Vec<u8>, Problem> {
        let text = entry
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::Shape(format!("\"{name}\" is missing or not a string")))?;
        let bytes = B64
            .decode(text)
            .map_err(|e| Problem::Shape(format!("\"{name}\" is not base64: {e}")))?;
        match len {
            Some(len) if bytes.len() != len => Err(Problem::Shape(format!(
                "\"{name}\" is {} bytes, expected {len}",
                bytes.len()
            ))),
            _ => Ok(bytes),
        }
    };
    let iv = field("iv", Some(IV_LEN))?;
    let tag = field("tag", Some(TAG_LEN))?;
    let mut buf = field("ciphertext", None)?;
    let nonce = Nonce::try_from(iv.as_slice()).map_err(|_| Problem::Tampered)?;
    let tag = Tag::try_from(tag.as_slice()).map_err(|_| Problem::Tampered)?;
    Aes256Gcm::new(key.into())
        .decrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into(), &tag)
        .map_err(|_| Problem::Tampered)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_secrets_are_scrubbed() {
        remember(&Secret::new("pvt_scrub_me_0123"));
        remember(&Secret::new("abc"));
        assert_eq!(
            scrub("401: Authorization: Bearer pvt_scrub_me_0123 rejected"),
            "401: Authorization: Bearer [redacted] rejected"
        );
        assert!(matches!(scrub("nothing here, abc"), Cow::Borrowed(_)));
        assert_eq!(scrub_owned("x pvt_scrub_me_0123".into()), "x [redacted]");
    }
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn store(name: &str) -> (SecretStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pr-secrets-{name}-{}", random::hex(6)));
        (SecretStore::new(&dir), dir)
    }

    fn entry(dir: &Path) -> Value {
        let doc: Value =
            serde_json::from_slice(&fs::read(dir.join(SECRETS_FILE)).unwrap()).unwrap();
        doc["entries"]["vault_token"].clone()
    }

    fn rewrite_entry(dir: &Path, field: &str, f: impl Fn(&mut Vec<u8>)) {
        let path = dir.join(SECRETS_FILE);
        let mut doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let mut bytes = B64
            .decode(doc["entries"]["vault_token"][field].as_str().unwrap())
            .unwrap();
        f(&mut bytes);
        doc["entries"]["vault_token"][field] = Value::String(B64.encode(&bytes));
        fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    }

    #[test]
    fn round_trip_with_private_files() {
        let (s, dir) = store("rt");
        assert_eq!(s.get("vault_token").unwrap(), None);
        s.set("vault_token", &Secret::new("pvt_abc")).unwrap();
        s.set("other", &Secret::new("x")).unwrap();
        assert_eq!(s.get("vault_token").unwrap().unwrap().expose(), "pvt_abc");
        assert_eq!(s.get("other").unwrap().unwrap().expose(), "x");
        for f in [KEY_FILE, SECRETS_FILE] {
            assert_eq!(
                fs::metadata(dir.join(f)).unwrap().mode() & 0o777,
                0o600,
                "{f}"
            );
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap().len(), 32);
        let text = fs::read_to_string(dir.join(SECRETS_FILE)).unwrap();
        assert!(!text.contains("pvt_abc"));
        s.remove("other").unwrap();
        assert_eq!(s.get("other").unwrap(), None);
        assert_eq!(s.get("vault_token").unwrap().unwrap().expose(), "pvt_abc");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_write_has_a_fresh_iv() {
        let (s, dir) = store("iv");
        s.set("vault_token", &Secret::new("same")).unwrap();
        let first = entry(&dir);
        s.set("vault_token", &Secret::new("same")).unwrap();
        let second = entry(&dir);
        assert_ne!(first["iv"], second["iv"]);
        assert_ne!(first["ciphertext"], second["ciphertext"]);
        assert_eq!(
            B64.decode(second["iv"].as_str().unwrap()).unwrap().len(),
            12
        );
        assert_eq!(
            B64.decode(second["tag"].as_str().unwrap()).unwrap().len(),
            16
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tampering_is_a_clear_error() {
        for field in ["ciphertext", "tag", "iv"] {
            let (s, dir) = store("tamper");
            s.set("vault_token", &Secret::new("pvt_secret")).unwrap();
            rewrite_entry(&dir, field, |b| b[0] ^= 1);
            let err = s.get("vault_token").unwrap_err().to_string();
            assert!(
                err.contains("does not decrypt with master.key"),
                "{field}: {err}"
            );
            fs::remove_dir_all(dir).unwrap();
        }
        let (s, dir) = store("short");
        s.set("vault_token", &Secret::new("pvt_secret")).unwrap();
        rewrite_entry(&dir, "iv", |b| b.truncate(8));
        assert!(
            s.get("vault_token")
                .unwrap_err()
                .to_string()
                .contains("\"iv\" is 8 bytes, expected 12")
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrong_size_key_is_fatal_and_kept() {
        let (s, dir) = store("badkey");
        s.set("vault_token", &Secret::new("t")).unwrap();
        fs::write(dir.join(KEY_FILE), [7u8; 31]).unwrap();
        let err = s.get("vault_token").unwrap_err().to_string();
        assert!(
            err.contains("master.key: expected 32 bytes, found 31"),
            "{err}"
        );
        // Writing does not replace the corrupt key either.
        assert!(s.set("vault_token", &Secret::new("u")).is_err());
        assert_eq!(fs::read(dir.join(KEY_FILE)).unwrap(), [7u8; 31]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_key_with_entries_is_fatal() {
        let (s, dir) = store("nokey");
        s.set("vault_token", &Secret::new("t")).unwrap();
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        assert!(matches!(
            s.get("vault_token"),
            Err(SecretsError::MissingKey { .. })
        ));
        // Nor is a new key made on top of them.
        assert!(matches!(
            s.set("vault_token", &Secret::new("u")),
            Err(SecretsError::MissingKey { .. })
        ));
        assert!(!dir.join(KEY_FILE).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_files() {
        let (s, dir) = store("malformed");
        fs::create_dir_all(&dir).unwrap();
        for (text, want) in [
            ("nope", "not JSON"),
            ("{\"version\":2,\"entries\":{}}", "unsupported version 2"),
            (
                "{\"version\":1,\"entries\":[]}",
                "\"entries\" is not an object",
            ),
            (
                "{\"version\":1,\"entries\":{\"vault_token\":{\"iv\":\"!!\"}}}",
                "\"iv\" is not base64",
            ),
            (
                "{\"version\":1,\"entries\":{\"vault_token\":5}}",
                "\"iv\" is missing",
            ),
        ] {
            fs::write(dir.join(SECRETS_FILE), text).unwrap();
            fs::write(dir.join(KEY_FILE), [1u8; 32]).unwrap();
            let err = s.get("vault_token").unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(format!("{:?}", Secret::new("pvt_x")), "Secret(<redacted>)");
    }
}
