//! Lowercase hex encoding and case-insensitive fixed-length hex decoding, the only hex this
//! crate needs (signatures are hex digests). No dependency for thirty lines.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly `N` bytes of hex, either case. `None` for any other length or a non-hex
/// character.
pub(crate) fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_all_nibbles_lowercase() {
        assert_eq!(
            encode(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]),
            "0123456789abcdef"
        );
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decode_either_case_roundtrips() {
        assert_eq!(decode_array::<2>("aBcD"), Some([0xab, 0xcd]));
        assert_eq!(
            decode_array::<3>(&encode(&[0, 0x7f, 0xff])),
            Some([0, 0x7f, 0xff])
        );
    }

    #[test]
    fn decode_wrong_length_none() {
        assert_eq!(decode_array::<2>("abc"), None);
        assert_eq!(decode_array::<2>("abcdef"), None);
    }

    #[test]
    fn decode_non_hex_none() {
        assert_eq!(decode_array::<2>("abcg"), None);
        assert_eq!(decode_array::<2>("+bcd"), None);
        // Multi-byte UTF-8 of the right byte length is not hex either.
        assert_eq!(decode_array::<1>("é"), None);
    }
}
