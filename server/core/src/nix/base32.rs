//! Nix's own base32 flavour ("nix32").
//!
//! It differs from RFC 4648: the alphabet omits `e`, `o`, `u` and `t`, and the
//! input is read as one little-endian number whose most significant 5-bit
//! group is printed first. Store path hashes and `sha256:` hashes written by
//! Nix use this encoding, so we need a byte-exact implementation.

use super::Error;

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its digit value, or 0xFF when it is not a digit.
const REVERSE: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Whether `c` is one of the 32 nix32 digits.
pub fn is_nix32_char(c: u8) -> bool {
    REVERSE[c as usize] != 0xFF
}

/// Number of characters needed to encode `bytes` bytes (`ceil(bytes * 8 / 5)`).
pub const fn encoded_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

/// Number of bytes an encoded string of `chars` characters carries.
///
/// Not every length is a valid encoding; [`decode`] additionally checks that
/// `encoded_len(decoded_len(chars)) == chars`.
pub const fn decoded_len(chars: usize) -> usize {
    chars * 5 / 8
}

/// Encodes `input` as nix32.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    // Walk the 5-bit groups from the most significant one down to bit 0.
    for n in (0..len).rev() {
        let bit = n * 5;
        let byte = bit / 8;
        let shift = bit % 8;
        let low = u16::from(input[byte]) >> shift;
        let high = input
            .get(byte + 1)
            .map_or(0, |&b| u16::from(b) << (8 - shift));
        let digit = ((low | high) & 0x1F) as usize;
        out.push(char::from(ALPHABET[digit]));
    }
    out
}

/// Decodes a nix32 string.
///
/// Rejects characters outside the alphabet, lengths that no byte count
/// encodes to, and set bits beyond the decoded length: each byte string has
/// exactly one valid encoding, which keeps hashes usable as keys.
pub fn decode(input: &str) -> Result<Vec<u8>, Error> {
    let chars = input.as_bytes();
    let len = decoded_len(chars.len());
    if encoded_len(len) != chars.len() {
        return Err(Error::InvalidBase32(format!(
            "length {} is not a valid encoded length",
            chars.len()
        )));
    }
    let mut out = vec![0u8; len];
    for (pos, &c) in chars.iter().enumerate() {
        let digit = REVERSE[c as usize];
        if digit == 0xFF {
            return Err(Error::InvalidBase32(format!(
                "invalid character {:?} at position {pos}",
                char::from(c)
            )));
        }
        let bit = (chars.len() - 1 - pos) * 5;
        let byte = bit / 8;
        let shift = bit % 8;
        let value = u16::from(digit) << shift;
        // `byte < len` always holds because 5 * (chars - 1) < 8 * len.
        out[byte] |= (value & 0xFF) as u8;
        let carry = (value >> 8) as u8;
        match out.get_mut(byte + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => {
                return Err(Error::InvalidBase32(
                    "non-zero bits beyond the encoded length".into(),
                ))
            }
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &[(&str, &str)] = &[
        (
            "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a",
            "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci",
        ),
        (
            "df3404eaf1481506db9ca155e0a871d5b4d22e62a96961e8bf4ad1a8ca525330",
            "0c2kab5ailaapzl62sd9c8pd5d6mf6lf0md1kkdhc5a8y7m08d6z",
        ),
        (
            "baeabdb75c223d171800c17b05c5e7e8e9980723a90eb6ffcc632a305afc5a42",
            "0hjszid30ak3rkzvc3m94c3risg8wz2hayy100c1fg92bjvvvsms",
        ),
    ];

    #[test]
    fn spec_vectors_encode() {
        for (hex, nix32) in VECTORS {
            assert_eq!(encode(&hex::decode(hex).unwrap()), *nix32);
        }
    }

    #[test]
    fn spec_vectors_decode() {
        for (hex, nix32) in VECTORS {
            assert_eq!(hex::encode(decode(nix32).unwrap()), *hex);
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(decoded_len(32), 20);
        assert_eq!(decoded_len(52), 32);
    }

    #[test]
    fn empty_round_trip() {
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn small_known_values() {
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[1]), "01");
        assert_eq!(encode(&[0x1F]), "0z");
        assert_eq!(encode(&[0x20]), "10");
        assert_eq!(encode(&[0xFF]), "7z");
    }

    #[test]
    fn round_trip_all_lengths() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in 0..80 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let enc = encode(&data);
            assert_eq!(enc.len(), encoded_len(len));
            assert_eq!(decode(&enc).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn rejects_bad_chars() {
        for bad in ['e', 'o', 'u', 't', 'A', '-', ' ', 'é'] {
            let mut s = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci".to_string();
            s.replace_range(5..6, &bad.to_string());
            if bad.len_utf8() == 1 {
                assert!(decode(&s).is_err(), "{bad:?} accepted");
            } else {
                // A multi-byte char changes the length; still must fail.
                assert!(decode(&s).is_err());
            }
        }
    }

    #[test]
    fn rejects_excess_bits() {
        // One byte uses two chars = 10 bits; the top two bits must be zero.
        assert!(decode("7z").is_ok());
        assert!(decode("8z").is_err());
        assert!(decode("z0").is_err());
        // 32-byte hashes: 260 bits, top 4 must be zero, so first char <= '1'.
        let ok = "1".to_string() + &"z".repeat(51);
        assert!(decode(&ok).is_ok());
        let bad = "2".to_string() + &"0".repeat(51);
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn rejects_impossible_lengths() {
        for len in [1, 3, 6, 33, 51, 54] {
            assert!(decode(&"0".repeat(len)).is_err(), "length {len}");
        }
        assert!(decode(&"0".repeat(32)).is_ok());
        assert!(decode(&"0".repeat(52)).is_ok());
    }

    #[test]
    fn is_nix32_char_matches_alphabet() {
        for c in 0..=255u8 {
            assert_eq!(is_nix32_char(c), ALPHABET.contains(&c));
        }
    }
}
