//! Standard Webhooks verification, as a receiver does it: the signed content
//! is `{webhook-id}.{webhook-timestamp}.{body}`, `webhook-signature` holds
//! one or more space-separated `v1,<base64 HMAC-SHA256>`, and the request is
//! genuine when any of them matches any of the receiver's secrets.
//!
//! Written independently of the dispatcher's signer (which would otherwise
//! check itself) and compared with the official `standardwebhooks` crate in
//! the tests. Tags are compared in constant time (`Mac::verify_slice`).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// How far a `webhook-timestamp` may be from the receiver's clock: the
/// tolerance the Standard Webhooks libraries use.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Secrets may come with or without base64 padding.
const SECRET_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret that is not `whsec_<base64>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret #{number} is not whsec_<base64>")]
pub struct SecretError {
    /// 1-based position in the list given.
    pub number: usize,
}

/// Why a request failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {0} is missing or not text")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now")]
    Stale(i64),
    #[error("no v1 signature matches")]
    NoMatch,
    #[error("x-webhook-delivery-id differs from webhook-id")]
    IdMismatch,
}

/// The headers a signed delivery carries.
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

impl<'a> Signed<'a> {
    /// Read the three Standard Webhooks headers, and check that the
    /// dispatcher's own `x-webhook-delivery-id` (when present) agrees.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Signed<'a>, VerifyError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(VerifyError::MissingHeader(name))
        };
        let id = get("webhook-id")?;
        if let Some(own) = headers.get("x-webhook-delivery-id") {
            if own.as_bytes() != id.as_bytes() {
                return Err(VerifyError::IdMismatch);
            }
        }
        Ok(Signed {
            id,
            timestamp: get("webhook-timestamp")?,
            signature: get("webhook-signature")?,
        })
    }
}

/// One receiver's secrets.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} keys, [redacted])", self.keys.len())
    }
}

impl Verifier {
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Verifier, SecretError> {
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let err = SecretError { number: i + 1 };
                let key = s
                    .as_ref()
                    .strip_prefix("whsec_")
                    .and_then(|b64| SECRET_ENGINE.decode(b64).ok())
                    .filter(|k| !k.is_empty())
                    .ok_or(err.clone())?;
                Hmac::<Sha256>::new_from_slice(&key).map_err(|_| err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier { keys })
    }

    /// Check `signed` over `body` at `now_secs` (Unix seconds).
    pub fn verify(
        &self,
        signed: &Signed<'_>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = signed
            .timestamp
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        if (now_secs - ts).abs() > TOLERANCE_SECS {
            return Err(VerifyError::Stale(now_secs - ts));
        }
        // Room for base64's conservative length estimate of a 32-byte tag.
        let mut tag = [0u8; 48];
        for candidate in signed.signature.split(' ') {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            // Anything that is not exactly 32 bytes of base64 cannot match.
            if !matches!(STANDARD.decode_slice(b64, &mut tag), Ok(32)) {
                continue;
            }
            for key in &self.keys {
                let mut mac = key.clone();
                mac.update(signed.id.as_bytes());
                mac.update(b".");
                mac.update(signed.timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                if mac.verify_slice(&tag[..32]).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    fn official(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .sign(id, ts, body)
            .unwrap()
    }

    #[test]
    fn accepts_what_the_official_library_signs() {
        let (id, ts, body) = ("msg_1", 1_700_000_000, br#"{"a":1}"#.as_slice());
        let h = headers(id, ts, &official(SECRET, id, ts, body));
        let v = Verifier::new(&[SECRET]).unwrap();
        v.verify(&Signed::from_headers(&h).unwrap(), body, ts + 10)
            .unwrap();
        // Rotation: the receiver knows only the old secret; either signature matches.
        let both = format!(
            "{} {}",
            official(OTHER, id, ts, body),
            official(SECRET, id, ts, body)
        );
        let h = headers(id, ts, &both);
        v.verify(&Signed::from_headers(&h).unwrap(), body, ts)
            .unwrap();
    }

    #[test]
    fn refuses_tampering_wrong_keys_and_stale_requests() {
        let (id, ts, body) = ("msg_1", 1_700_000_000, br#"{"a":1}"#.as_slice());
        let v = Verifier::new(&[SECRET]).unwrap();
        let h = headers(id, ts, &official(SECRET, id, ts, body));
        let signed = Signed::from_headers(&h).unwrap();
        assert_eq!(
            v.verify(&signed, br#"{"a":2}"#, ts),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            v.verify(&signed, body, ts + TOLERANCE_SECS + 1),
            Err(VerifyError::Stale(TOLERANCE_SECS + 1))
        );
        let wrong = Verifier::new(&[OTHER]).unwrap();
        assert_eq!(wrong.verify(&signed, body, ts), Err(VerifyError::NoMatch));
        let h = headers(id, ts, "v1,bm90IGEgc2lnbmF0dXJl v2,xyz");
        assert_eq!(
            v.verify(&Signed::from_headers(&h).unwrap(), body, ts),
            Err(VerifyError::NoMatch)
        );

        let mut h = headers(id, ts, "v1,x");
        h.insert("x-webhook-delivery-id", "other".parse().unwrap());
        assert_eq!(
            Signed::from_headers(&h).err(),
            Some(VerifyError::IdMismatch)
        );
        h.remove("webhook-signature");
        h.remove("x-webhook-delivery-id");
        assert_eq!(
            Signed::from_headers(&h).err(),
            Some(VerifyError::MissingHeader("webhook-signature"))
        );
    }

    #[test]
    fn refuses_malformed_secrets() {
        assert_eq!(
            Verifier::new(&[SECRET, "plain"]).unwrap_err(),
            SecretError { number: 2 }
        );
        assert!(Verifier::new(&["whsec_"]).is_err());
    }
}
