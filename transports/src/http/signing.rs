//! Standard Webhooks request signing (<https://www.standardwebhooks.com/>).
//!
//! This module owns the secret format (`whsec_<base64>`), the signed content
//! (`{webhook-id}.{webhook-timestamp}.{body}`) and the `webhook-signature`
//! value (`v1,<base64 HMAC-SHA256>`, space-separated when several secrets are
//! active during a rotation). Key material never leaves this module: the
//! types here print as `[redacted]` and their errors name positions, never
//! characters of a secret.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix that marks a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The only signature scheme Standard Webhooks defines today.
const SIGNATURE_VERSION: &str = "v1,";

/// Length of base64 (with padding) of a 32-byte HMAC-SHA256 tag.
const ENCODED_TAG_LEN: usize = 44;

/// Secrets are standard base64; some generators drop the padding, so accept
/// both rather than refuse a key that every verifier decodes the same way.
const SECRET_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a string is not a usable `whsec_<base64>` secret.
///
/// Offsets count bytes from the start of the whole secret (prefix included);
/// the offending character itself is never shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("missing the `whsec_` prefix")]
    MissingPrefix,
    #[error("no key after `whsec_`")]
    EmptyKey,
    #[error("invalid base64 at offset {offset}")]
    InvalidByte { offset: usize },
    #[error("invalid base64 length")]
    InvalidLength,
    #[error("invalid base64 padding")]
    InvalidPadding,
}

impl SecretError {
    fn from_base64(err: base64::DecodeError) -> SecretError {
        // `DecodeError`'s own Display shows the offending byte, which is part
        // of the secret: keep only its position.
        match err {
            base64::DecodeError::InvalidByte(offset, _)
            | base64::DecodeError::InvalidLastSymbol(offset, _) => SecretError::InvalidByte {
                offset: offset + SECRET_PREFIX.len(),
            },
            base64::DecodeError::InvalidLength(_) => SecretError::InvalidLength,
            base64::DecodeError::InvalidPadding => SecretError::InvalidPadding,
        }
    }
}

/// A secret in a list was not `whsec_<base64>`. `number` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret #{number} is not whsec_<base64>: {source}")]
pub struct SignerError {
    pub number: usize,
    #[source]
    pub source: SecretError,
}

/// One decoded signing key, held as a keyed HMAC state so that signing only
/// clones it instead of re-deriving the key pads on every request.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl SigningKey {
    /// Parse a `whsec_<base64>` secret; the key is the decoded base64 part.
    pub fn from_whsec(secret: &str) -> Result<SigningKey, SecretError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        if encoded.is_empty() {
            return Err(SecretError::EmptyKey);
        }
        let key = SECRET_ENGINE
            .decode(encoded)
            .map_err(SecretError::from_base64)?;
        if key.is_empty() {
            return Err(SecretError::EmptyKey);
        }
        SigningKey::from_bytes(&key)
    }

    /// A key from raw bytes (what `whsec_` wraps).
    pub fn from_bytes(key: &[u8]) -> Result<SigningKey, SecretError> {
        // HMAC accepts keys of any length; the error arm is unreachable but
        // mapped rather than unwrapped.
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| SecretError::EmptyKey)?;
        Ok(SigningKey { mac })
    }

    /// `base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))`, appended to `out`.
    fn sign_into(&self, msg_id: &str, timestamp: &str, body: &[u8], out: &mut String) {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// Signs requests with every active key of one endpoint.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl Signer {
    /// Parse a list of `whsec_` secrets, first (newest) first. Errors name
    /// the secret by its 1-based position in `secrets`.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Signer, SignerError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                SigningKey::from_whsec(s.as_ref()).map_err(|source| SignerError {
                    number: i + 1,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { keys })
    }

    /// A signer over already-parsed keys.
    pub fn from_keys(keys: Vec<SigningKey>) -> Signer {
        Signer { keys }
    }

    /// How many keys sign each request.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key, so [`Signer::sign`] would return "".
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `webhook-signature` value: `v1,<sig>` for each key, separated by
    /// single spaces. `timestamp` is the exact `webhook-timestamp` text.
    pub fn sign(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> String {
        let per_key = SIGNATURE_VERSION.len() + ENCODED_TAG_LEN;
        // Exact, so the header value built from it needs no reallocation.
        let mut out = String::with_capacity((self.keys.len() * (per_key + 1)).saturating_sub(1));
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(SIGNATURE_VERSION);
            key.sign_into(msg_id, timestamp, body, &mut out);
        }
        out
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} keys, [redacted])", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification and its
    /// reference libraries' test suites.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: &str = "1614265330";
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specification_example() {
        let signer = Signer::new(&[SPEC_SECRET]).unwrap();
        assert_eq!(signer.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn matches_the_official_library() {
        let body = br#"{"event":"message.sent","data":{"n":1.50}}"#;
        let ours = Signer::new(&[SPEC_SECRET])
            .unwrap()
            .sign("id-1", "1700000000", body);
        let theirs = standardwebhooks::Webhook::new(SPEC_SECRET)
            .unwrap()
            .sign("id-1", 1_700_000_000, body)
            .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn rotation_signs_with_every_key_in_order() {
        let second = "whsec_c2Vjb25kLWtleS1ieXRlcy0xMjM0NTY3ODkw";
        let signer = Signer::new(&[SPEC_SECRET, second]).unwrap();
        assert_eq!(signer.len(), 2);
        let sig = signer.sign(SPEC_ID, SPEC_TS, SPEC_BODY);
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIG);
        assert_eq!(
            parts[1],
            Signer::new(&[second])
                .unwrap()
                .sign(SPEC_ID, SPEC_TS, SPEC_BODY)
        );
    }

    #[test]
    fn unpadded_secret_decodes_to_the_same_key() {
        // 5 bytes of key => 8 base64 chars with one '='.
        let padded = Signer::new(&["whsec_a2V5MTI="]).unwrap();
        let unpadded = Signer::new(&["whsec_a2V5MTI"]).unwrap();
        assert_eq!(padded.sign("a", "1", b"x"), unpadded.sign("a", "1", b"x"));
    }

    #[test]
    fn empty_signer_signs_nothing() {
        let signer = Signer::new::<&str>(&[]).unwrap();
        assert!(signer.is_empty());
        assert_eq!(signer.sign("a", "1", b""), "");
    }

    #[test]
    fn parse_errors_name_position_not_content() {
        let cases: &[(&str, SecretError)] = &[
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SecretError::MissingPrefix,
            ),
            ("whsec_", SecretError::EmptyKey),
            ("whsec_abc*defg", SecretError::InvalidByte { offset: 9 }),
            ("whsec_abcde", SecretError::InvalidLength),
            ("whsec_ab=c", SecretError::InvalidByte { offset: 8 }),
        ];
        for (secret, expected) in cases {
            assert_eq!(
                SigningKey::from_whsec(secret).unwrap_err(),
                *expected,
                "{secret}"
            );
        }

        let err = Signer::new(&[SPEC_SECRET, "whsec_sup3r*secret"]).unwrap_err();
        assert_eq!(err.number, 2);
        let text = err.to_string();
        assert_eq!(
            text,
            "secret #2 is not whsec_<base64>: invalid base64 at offset 11"
        );
        assert!(!text.contains("sup3r"));
    }

    #[test]
    fn debug_output_is_redacted() {
        let signer = Signer::new(&[SPEC_SECRET]).unwrap();
        let text = format!(
            "{signer:?} {:?}",
            SigningKey::from_whsec(SPEC_SECRET).unwrap()
        );
        assert!(text.contains("redacted"));
        assert!(!text.contains("MfKQ"));
    }
}
