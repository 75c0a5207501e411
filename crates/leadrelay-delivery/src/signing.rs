//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`), one signature per secret in force, so
//! that during a rotation receivers holding either secret can verify.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing secret that is not `whsec_` followed by base64.
#[derive(Debug, thiserror::Error)]
#[error("signing secret must be whsec_ followed by base64 ({0})")]
pub struct SecretError(String);

/// The key bytes of a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").ok_or_else(|| SecretError("missing whsec_ prefix".to_owned()))?;
    base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|error| SecretError(error.to_string()))
}

/// The `webhook-signature` header value for a message, one `v1,` signature per key.
pub fn signature_header(keys: &[Vec<u8>], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            // HMAC takes keys of any length.
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts every key length");
            mac.update(webhook_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three Standard Webhooks headers.
pub fn headers(keys: &[Vec<u8>], webhook_id: &str, timestamp_seconds: i64, body: &[u8]) -> [(String, String); 3] {
    [
        ("webhook-id".to_owned(), webhook_id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp_seconds.to_string()),
        ("webhook-signature".to_owned(), signature_header(keys, webhook_id, timestamp_seconds, body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference implementations.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_sends_one_signature_per_secret() {
        let keys = vec![secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(), b"second".to_vec()];
        let header = signature_header(&keys, "msg_1", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|part| part.starts_with("v1,")));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_not base64!").is_err());
    }
}
