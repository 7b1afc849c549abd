//! Strict base64url (RFC 4648 §5) without padding, as JWS requires (RFC 7515 §2).
//!
//! Decoding refuses padding, the standard alphabet's `+` and `/`, whitespace and non-canonical
//! trailing bits, so one token has exactly one spelling (a cache keyed by the token text cannot
//! be fooled by a second spelling of a revoked token).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Encodes bytes as base64url without padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes strict base64url without padding.
///
/// # Errors
/// [`base64::DecodeError`] on any character outside the url-safe alphabet, on padding, and on
/// non-zero trailing bits.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_roundtrip_ok() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn decode_padding_refused() {
        assert!(decode("YQ==").is_err());
        assert_eq!(decode("YQ").unwrap(), b"a");
    }

    #[test]
    fn decode_standard_alphabet_refused() {
        assert!(decode("+/8").is_err());
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn decode_noncanonical_trailing_bits_refused() {
        // "YQ" is canonical for "a"; "YR" decodes to the same byte with a stray trailing bit.
        assert!(decode("YR").is_err());
    }

    #[test]
    fn decode_whitespace_refused() {
        assert!(decode("Y Q").is_err());
        assert!(decode("YQ\n").is_err());
    }
}
