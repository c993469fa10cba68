//! Secrets at rest: the secret values of endpoints written through the
//! management API are encrypted in the endpoint store's topic, so that
//! whoever can read the topic (a Kafka user, a backup, a mirror) learns
//! nothing of them.
//!
//! **What is secret**, by transport (the endpoint's own keys):
//!
//! | transport | keys |
//! |---|---|
//! | `http` | `secret`, `secrets[*]`, `shared_secret`, `tls.client_key`, `oauth2.client_secret`, `headers.<Name>` for `Authorization`, `Proxy-Authorization` and every name listed in `secret_headers` |
//! | `slack` | `url` (the incoming-webhook URL is the credential) |
//! | `kafka` | `options.sasl.password`, `options.ssl.key.pem`, `options.ssl.key.password` |
//!
//! **How**: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`), a 256-bit
//! key, a random 192-bit nonce per value (random nonces are safe at that
//! size), and the endpoint id as associated data, so that a sealed value
//! copied into another endpoint's record does not open there. A sealed
//! value replaces the string in the stored JSON as
//! `{"$encrypted": "v1:<key id>:<base64url(nonce || ciphertext)>"}`; the key
//! id (8 hex digits of a hash of the key) names which key sealed it, so a
//! record sealed with a key no longer configured says so.
//!
//! **Keys** come from `secrets.encryption_keys` (`${VAR}` from a Kubernetes
//! Secret) and `secrets.encryption_keys_file`: the first seals, all open.
//! Rotation is adding a new first key; every write seals again with it, and
//! the old key can go once nothing sealed with it is left.
//!
//! Reading the store, the endpoint manager opens a record before it checks
//! it; a record that does not open is refused like an invalid one.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::Problem;

/// The key of the object that holds a sealed value in a stored endpoint.
pub const SEALED: &str = "$encrypted";

/// The key of the object that stands for a secret in what the API shows.
pub const HINT: &str = "hint";

/// Sealed values say which format they use: this one.
const FORMAT: &str = "v1";

/// Bound to every sealed value with the endpoint id.
const AAD_PREFIX: &[u8] = b"dispatcher endpoint secret v1\0";

const NONCE_LEN: usize = 24;

/// The `secrets` section of the config.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// 32-byte keys, base64 (or 64 hex digits): the first seals, all open.
    pub encryption_keys: Vec<String>,
    /// A file with more keys, one a line (`#` starts a comment), after those
    /// of `encryption_keys`.
    pub encryption_keys_file: Option<PathBuf>,
    /// The keys, parsed (by [`SecretsConfig::load`]).
    #[serde(skip)]
    pub keyring: Keyring,
}

impl fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsConfig")
            .field(
                "encryption_keys",
                &format_args!("[{} redacted]", self.encryption_keys.len()),
            )
            .field("encryption_keys_file", &self.encryption_keys_file)
            .field("keyring", &self.keyring)
            .finish()
    }
}

impl SecretsConfig {
    /// Parse the keys into [`SecretsConfig::keyring`]; problems name the key
    /// and its position, never a key.
    pub fn load(&mut self, problems: &mut Vec<Problem>) {
        let mut texts: Vec<(String, String)> = self
            .encryption_keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("secrets.encryption_keys[{i}]"), k.clone()))
            .collect();
        if let Some(path) = &self.encryption_keys_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if !line.is_empty() && !line.starts_with('#') {
                            texts.push((
                                format!(
                                    "secrets.encryption_keys_file ({}: line {})",
                                    path.display(),
                                    n + 1
                                ),
                                line.to_owned(),
                            ));
                        }
                    }
                }
                Err(e) => problems.push(Problem::new(
                    "secrets.encryption_keys_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (at, text) in texts {
            match parse_key(&text) {
                Ok(bytes) => {
                    let key = Key::new(&bytes);
                    if !seen.insert(key.id.clone()) {
                        problems.push(Problem::new(at, "the same key is listed twice"));
                        continue;
                    }
                    keys.push(key);
                }
                Err(e) => problems.push(Problem::new(at, e)),
            }
        }
        self.keyring = Keyring {
            keys: Arc::new(keys),
        };
    }
}

/// A key: 32 bytes, as base64 (standard or URL-safe, padded or not) or as
/// 64 hex digits.
fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
    } else {
        let t = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .ok()
    };
    match decoded {
        Some(bytes) => bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a key is 32 bytes, this one has {} (generate one with `openssl rand -base64 32`)",
                b.len()
            )
        }),
        None => Err(
            "not base64 nor 64 hex digits (generate a key with `openssl rand -base64 32`)".into(),
        ),
    }
}

#[derive(Clone)]
struct Key {
    /// 8 hex digits naming the key in sealed values and messages.
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let digest = Sha256::new()
            .chain_update(b"dispatcher key id\0")
            .chain_update(bytes)
            .finalize();
        Key {
            id: digest[..4].iter().map(|b| format!("{b:02x}")).collect(),
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(bytes)),
        }
    }
}

/// The configured keys. Cheap to clone.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<Vec<Key>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids name keys without revealing anything of them.
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

/// Why a value could not be opened or sealed. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no key to encrypt it with: set secrets.encryption_keys to store endpoints with secrets"
    )]
    NoKey,
    #[error("sealed with key {0}, which is not among secrets.encryption_keys")]
    UnknownKey(String),
    #[error("does not decrypt with key {0}: damaged, or sealed for another endpoint")]
    Damaged(String),
    #[error("not a sealed value of a known format")]
    Format,
}

impl Keyring {
    /// A keyring of raw keys, the first sealing (tests and benchmarks).
    pub fn from_keys(keys: &[[u8; 32]]) -> Keyring {
        Keyring {
            keys: Arc::new(keys.iter().map(Key::new).collect()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key that seals (the first).
    pub fn sealing_key_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    fn aad(endpoint_id: &str) -> Vec<u8> {
        [AAD_PREFIX, endpoint_id.as_bytes()].concat()
    }

    /// Seal `plaintext` for endpoint `endpoint_id` with the first key.
    pub fn seal(&self, endpoint_id: &str, plaintext: &str) -> Result<Value, SecretError> {
        let key = self.keys.first().ok_or(SecretError::NoKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(endpoint_id);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            // Only inputs of more than 256 GiB fail.
            .map_err(|_| SecretError::Format)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let text = format!(
            "{FORMAT}:{}:{}",
            key.id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(blob)
        );
        let mut object = Map::new();
        object.insert(SEALED.into(), Value::String(text));
        Ok(Value::Object(object))
    }

    /// Open a sealed value's text (what `$encrypted` holds).
    pub fn open(&self, endpoint_id: &str, sealed: &str) -> Result<String, SecretError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(FORMAT), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Format);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.chars().take(8).collect()))?;
        let blob = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretError::Format)?;
        if blob.len() < NONCE_LEN {
            return Err(SecretError::Format);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let aad = Self::aad(endpoint_id);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Damaged(key.id.clone()))?;
        String::from_utf8(plain).map_err(|_| SecretError::Damaged(key.id.clone()))
    }

    /// A stored endpoint with every sealed value opened: what the endpoint
    /// manager checks and runs. Problems name the key path, never a value.
    pub fn open_endpoint(
        &self,
        endpoint_id: &str,
        stored: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<Problem>> {
        let mut open = stored.clone();
        let mut problems = Vec::new();
        for (key, value) in open.iter_mut() {
            self.open_value(endpoint_id, key, value, &mut problems);
        }
        if problems.is_empty() {
            Ok(open)
        } else {
            Err(problems)
        }
    }

    fn open_value(&self, id: &str, path: &str, value: &mut Value, problems: &mut Vec<Problem>) {
        match value {
            Value::Object(map) => {
                if let Some(sealed) = sealed_text(map) {
                    match self.open(id, sealed) {
                        Ok(text) => *value = Value::String(text),
                        Err(e) => problems.push(Problem::new(path, e.to_string())),
                    }
                    return;
                }
                for (k, v) in map.iter_mut() {
                    self.open_value(id, &format!("{path}.{k}"), v, problems);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    self.open_value(id, &format!("{path}[{i}]"), v, problems);
                }
            }
            _ => {}
        }
    }

    /// Seal every secret of a plaintext endpoint (see the module docs for
    /// which keys are secret), in place.
    pub fn seal_endpoint(
        &self,
        endpoint_id: &str,
        endpoint: &mut Map<String, Value>,
    ) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        visit_secrets(endpoint, &mut |path, value| {
            if let Value::String(text) = value {
                match self.seal(endpoint_id, text) {
                    Ok(sealed) => *value = sealed,
                    Err(e) => problems.push(Problem::new(path, e.to_string())),
                }
            }
        });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The ids of the keys that sealed the values of a stored endpoint.
    pub fn sealed_with(stored: &Map<String, Value>) -> HashSet<String> {
        fn walk(value: &Value, ids: &mut HashSet<String>) {
            match value {
                Value::Object(map) => match sealed_text(map) {
                    Some(text) => {
                        if let Some(id) = text.split(':').nth(1) {
                            ids.insert(id.to_owned());
                        }
                    }
                    None => map.values().for_each(|v| walk(v, ids)),
                },
                Value::Array(items) => items.iter().for_each(|v| walk(v, ids)),
                _ => {}
            }
        }
        let mut ids = HashSet::new();
        stored.values().for_each(|v| walk(v, &mut ids));
        ids
    }
}

/// `{"$encrypted": text}` (and nothing else): its text.
fn sealed_text(map: &Map<String, Value>) -> Option<&str> {
    match (map.len(), map.get(SEALED)) {
        (1, Some(Value::String(text))) => Some(text),
        _ => None,
    }
}

/// The first place in `value` that holds a `$encrypted` key, if any: only
/// the dispatcher writes sealed values, never a request.
pub fn find_sealed(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::Object(map) => {
            if map.contains_key(SEALED) {
                return Some(path.to_owned());
            }
            map.iter().find_map(|(k, v)| {
                find_sealed(
                    v,
                    &if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    },
                )
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_sealed(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Header names whose values are secret whether listed or not.
const ALWAYS_SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

/// Kafka producer options that hold credentials.
const SECRET_KAFKA_OPTIONS: &[&str] = &["sasl.password", "ssl.key.pem", "ssl.key.password"];

/// Call `f` with the path and value of every secret of an endpoint (as JSON,
/// plaintext, sealed or hinted). Which keys are secret depends on the
/// endpoint's `transport` (see the module docs); a transport this module
/// does not know has none.
pub fn visit_secrets(endpoint: &mut Map<String, Value>, f: &mut dyn FnMut(String, &mut Value)) {
    let transport = endpoint
        .get("transport")
        .and_then(Value::as_str)
        .unwrap_or("http")
        .to_owned();
    match transport.as_str() {
        "http" => {
            for key in ["secret", "shared_secret"] {
                if let Some(v) = endpoint.get_mut(key) {
                    f(key.to_owned(), v);
                }
            }
            if let Some(Value::Array(items)) = endpoint.get_mut("secrets") {
                for (i, v) in items.iter_mut().enumerate() {
                    f(format!("secrets[{i}]"), v);
                }
            }
            let mut marked: HashSet<String> = ALWAYS_SECRET_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect();
            if let Some(Value::Array(names)) = endpoint.get("secret_headers") {
                marked.extend(
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_ascii_lowercase),
                );
            }
            if let Some(Value::Object(headers)) = endpoint.get_mut("headers") {
                for (name, v) in headers.iter_mut() {
                    if marked.contains(&name.to_ascii_lowercase()) {
                        f(format!("headers.{name}"), v);
                    }
                }
            }
            for (section, key) in [("tls", "client_key"), ("oauth2", "client_secret")] {
                if let Some(v) = endpoint
                    .get_mut(section)
                    .and_then(Value::as_object_mut)
                    .and_then(|s| s.get_mut(key))
                {
                    f(format!("{section}.{key}"), v);
                }
            }
        }
        "slack" => {
            if let Some(v) = endpoint.get_mut("url") {
                f("url".to_owned(), v);
            }
        }
        "kafka" => {
            if let Some(Value::Object(options)) = endpoint.get_mut("options") {
                for (name, v) in options.iter_mut() {
                    if SECRET_KAFKA_OPTIONS.contains(&name.as_str()) {
                        f(format!("options.{name}"), v);
                    }
                }
            }
        }
        _ => {}
    }
}

/// What the API shows of a secret: enough to recognise it, nothing to use:
/// a known public prefix (`whsec_`, a URL's scheme and host) and, for a
/// value of 16 characters or more, its last four.
pub fn hint(secret: &str) -> String {
    let (prefix, rest) = if let Some(rest) = secret.strip_prefix("whsec_") {
        ("whsec_".to_owned(), rest)
    } else if let Some((scheme, after)) = secret.split_once("://") {
        let host = after.split('/').next().unwrap_or_default();
        // A URL with credentials in it (user:pass@) shows nothing at all.
        if host.contains('@') {
            return "…".into();
        } else {
            (format!("{scheme}://{host}/"), &after[host.len()..])
        }
    } else {
        (String::new(), secret)
    };
    let chars: Vec<char> = rest.chars().collect();
    let tail: String = if chars.len() >= 16 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        String::new()
    };
    format!("{prefix}…{tail}")
}

/// Replace every secret of a plaintext endpoint by `{"hint": ...}`, in place:
/// what GET shows.
pub fn hint_endpoint(endpoint: &mut Map<String, Value>) {
    visit_secrets(endpoint, &mut |_, value| {
        if let Value::String(text) = value {
            let mut object = Map::new();
            object.insert(HINT.into(), Value::String(hint(text)));
            *value = Value::Object(object);
        }
    });
}

fn hint_of(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map.get(HINT).and_then(Value::as_str),
        _ => None,
    }
}

/// In a plaintext endpoint from a request, put back the stored secret
/// wherever the request holds a `{"hint": ...}` object (what GET showed):
/// "keep this one". A hint in a scalar key keeps that key's stored value; a
/// hint in `secrets` keeps the stored signing secret (`secret` or in
/// `secrets`) with that hint, so a rotation can list the old one after the
/// new one. A hint with nothing stored to match is a problem.
pub fn keep_hinted(
    endpoint: &mut Map<String, Value>,
    current: Option<&Map<String, Value>>,
) -> Result<(), Vec<Problem>> {
    let mut stored: Vec<(String, String)> = Vec::new();
    if let Some(current) = current {
        let mut copy = current.clone();
        visit_secrets(&mut copy, &mut |path, value| {
            if let Value::String(text) = value {
                stored.push((path, text.clone()));
            }
        });
    }
    let mut problems = Vec::new();
    visit_secrets(endpoint, &mut |path, value| {
        let Some(wanted) = hint_of(value) else {
            return;
        };
        let found: Vec<&String> = if path.starts_with("secrets[") {
            stored
                .iter()
                .filter(|(p, text)| {
                    (p == "secret" || p.starts_with("secrets[")) && hint(text) == wanted
                })
                .map(|(_, t)| t)
                .collect()
        } else {
            stored
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|(_, t)| t)
                .collect()
        };
        let distinct: HashSet<&String> = found.iter().copied().collect();
        match distinct.len() {
            1 => *value = Value::String(found[0].clone()),
            0 => problems.push(Problem::new(
                path,
                "a hint keeps the stored secret, but no stored secret matches it here: send the value",
            )),
            _ => problems.push(Problem::new(
                path,
                "this hint matches several stored secrets: send the value",
            )),
        }
    });
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A fresh Standard Webhooks signing secret: `whsec_` and 32 random bytes
/// in base64.
pub fn new_signing_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K1: [u8; 32] = [7; 32];
    const K2: [u8; 32] = [9; 32];

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn endpoint() -> Map<String, Value> {
        obj(json!({
            "id": "acme",
            "url": "https://acme.example/hook",
            "events": ["*"],
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "secrets": ["whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk="],
            "shared_secret": "shared-secret-value-1234",
            "headers": {"Authorization": "Bearer tok-0123456789abcdef", "X-Tenant": "acme", "X-Api-Key": "key-0123456789abcdef"},
            "secret_headers": ["x-api-key"],
            "tls": {"client_key": "-----BEGIN PRIVATE KEY-----abc", "client_cert": "CERT"},
            "oauth2": {"token_url": "https://auth.example/token", "client_id": "id", "client_secret": "oauth-secret-0123456789"},
        }))
    }

    #[test]
    fn sealed_secrets_leave_nothing_readable_and_open_again() {
        let ring = Keyring::from_keys(&[K1]);
        let plain = endpoint();
        let mut sealed = plain.clone();
        ring.seal_endpoint("acme", &mut sealed).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        for secret in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk",
            "shared-secret-value",
            "tok-0123456789abcdef",
            "key-0123456789abcdef",
            "PRIVATE KEY",
            "oauth-secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // What is not secret stays readable.
        assert!(text.contains("https://acme.example/hook") && text.contains("\"acme\""));
        assert!(text.contains("CERT"));
        assert_eq!(ring.open_endpoint("acme", &sealed).unwrap(), plain);
        assert_eq!(
            Keyring::sealed_with(&sealed),
            HashSet::from([ring.sealing_key_id().unwrap().to_owned()])
        );
    }

    #[test]
    fn a_rotated_keyring_opens_old_values_and_seals_with_the_new_key() {
        let old = Keyring::from_keys(&[K1]);
        let mut sealed = endpoint();
        old.seal_endpoint("acme", &mut sealed).unwrap();
        let rotated = Keyring::from_keys(&[K2, K1]);
        assert_eq!(rotated.open_endpoint("acme", &sealed).unwrap(), endpoint());
        let mut again = endpoint();
        rotated.seal_endpoint("acme", &mut again).unwrap();
        assert_eq!(
            Keyring::sealed_with(&again),
            HashSet::from([rotated.sealing_key_id().unwrap().to_owned()])
        );
        // Without the old key: refused, naming the key and the path only.
        let new_only = Keyring::from_keys(&[K2]);
        let problems = new_only.open_endpoint("acme", &sealed).unwrap_err();
        assert!(problems
            .iter()
            .any(|p| p.path == "secret" && p.message.contains(old.sealing_key_id().unwrap())));
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_endpoint() {
        let ring = Keyring::from_keys(&[K1]);
        let sealed = ring.seal("acme", "s3cret-s3cret").unwrap();
        let text = sealed[SEALED].as_str().unwrap();
        assert_eq!(ring.open("acme", text).unwrap(), "s3cret-s3cret");
        assert!(matches!(
            ring.open("other", text),
            Err(SecretError::Damaged(_))
        ));
        let mut bad = text.to_owned();
        bad.pop();
        bad.push(if text.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open("acme", &bad).is_err());
        assert_eq!(ring.open("acme", "v2:x:y"), Err(SecretError::Format));
        assert_eq!(
            Keyring::default().seal("acme", "x"),
            Err(SecretError::NoKey)
        );
    }

    #[test]
    fn hints_show_a_prefix_and_the_last_four_characters_only() {
        assert_eq!(
            hint("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "whsec_…LaSw"
        );
        assert_eq!(
            hint("https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"),
            "https://hooks.slack.com/…XXXX"
        );
        assert_eq!(hint("short"), "…");
        assert_eq!(hint("https://user:pw@host/x"), "…");
        let mut e = endpoint();
        hint_endpoint(&mut e);
        assert_eq!(e["secret"], json!({"hint": "whsec_…LaSw"}));
        assert_eq!(e["headers"]["X-Tenant"], json!("acme"));
        assert_eq!(e["headers"]["X-Api-Key"], json!({"hint": "…cdef"}));
    }

    #[test]
    fn hints_in_a_request_keep_the_stored_secrets() {
        let current = endpoint();
        let mut shown = current.clone();
        hint_endpoint(&mut shown);
        // GET, edit a non-secret key, PUT: the secrets are kept.
        shown.insert("url".into(), json!("https://acme.example/v2"));
        let mut request = shown.clone();
        keep_hinted(&mut request, Some(&current)).unwrap();
        let mut expected = current.clone();
        expected.insert("url".into(), json!("https://acme.example/v2"));
        assert_eq!(request, expected);

        // A rotation: a new secret first, the old one kept by its hint.
        let mut rotation = obj(json!({
            "id": "acme", "url": "https://acme.example/hook", "events": ["*"],
            "secret": "whsec_bmV3IHNlY3JldCBrZXkgZm9yIHJvdGF0aW9u",
            "secrets": [{"hint": "whsec_…LaSw"}],
        }));
        keep_hinted(&mut rotation, Some(&current)).unwrap();
        assert_eq!(
            rotation["secrets"],
            json!(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        );

        // Nothing stored to keep: refused, at the key.
        let mut fresh = obj(json!({"id": "new", "secret": {"hint": "whsec_…LaSw"}}));
        let problems = keep_hinted(&mut fresh, None).unwrap_err();
        assert_eq!(problems[0].path, "secret");
    }

    #[test]
    fn keys_are_32_bytes_and_problems_never_show_them() {
        let mut config = SecretsConfig {
            encryption_keys: vec![
                base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
                "00".repeat(32),
                "dG9vLXNob3J0".into(),
                "not a key!".into(),
                base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
            ],
            ..Default::default()
        };
        let mut problems = Vec::new();
        config.load(&mut problems);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "secrets.encryption_keys[2]",
                "secrets.encryption_keys[3]",
                "secrets.encryption_keys[4]"
            ]
        );
        assert_eq!(config.keyring.keys.len(), 2);
        let text = format!("{problems:?} {config:?}");
        assert!(
            !text.contains("dG9vLXNob3J0") && !text.contains("AQEB"),
            "{text}"
        );
    }

    #[test]
    fn requests_cannot_carry_sealed_values() {
        assert_eq!(
            find_sealed(&json!({"a": [1, {"$encrypted": "x"}]}), ""),
            Some("a[1]".into())
        );
        assert_eq!(find_sealed(&json!({"a": "$encrypted"}), ""), None);
    }
}
