//! FASC-N: the Federal Agency Smart Credential Number of a PIV / PIV-I card.
//!
//! Layout and encoding from the PACS TIG (SCEPACS v2.3, section 6) as referenced by FIPS 201 and
//! SP 800-73-4: 40 characters of 5 bits each (200 bits = 25 bytes). A character is the 4-bit BCD
//! value, least significant bit first, followed by an odd-parity bit. Character sequence:
//!
//! ```text
//! SS AGENCY(4) FS SYSTEM(4) FS CREDENTIAL(6) FS CS(1) FS ICI(1) FS PI(10) OC(1) OI(4) POA(1) ES LRC
//! ```
//!
//! SS = 0xB, FS = 0xD, ES = 0xF; the LRC is the XOR of the 4-bit values of the 39 characters before
//! it, carried with its own odd parity. The bits are packed most significant bit first.
//!
//! In a certificate the 25 bytes are the value of the `pivFASC-N` otherName
//! (2.16.840.1.101.3.6.6, an OCTET STRING) in subjectAltName.

use core::fmt;

/// The 25-byte encoded length of a FASC-N.
pub const FASCN_LEN: usize = 25;

const SS: u8 = 0xB;
const FS: u8 = 0xD;
const ES: u8 = 0xF;

/// Why a FASC-N could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FascnError {
    /// The input is not 25 bytes long.
    #[error("a FASC-N is {FASCN_LEN} bytes, got {0}")]
    Length(usize),
    /// A 5-bit character does not have odd parity.
    #[error("FASC-N character {index} has bad parity")]
    Parity {
        /// Position of the character (0-based, of 40).
        index: usize,
    },
    /// A sentinel or separator is missing, or a data position holds a sentinel/separator.
    #[error("FASC-N character {index} is {found:#x}, expected {expected}")]
    Structure {
        /// Position of the character (0-based, of 40).
        index: usize,
        /// The 4-bit value found.
        found: u8,
        /// What the layout requires at that position.
        expected: &'static str,
    },
    /// The longitudinal redundancy check does not match the characters.
    #[error("FASC-N LRC is {found:#x}, the characters give {computed:#x}")]
    Lrc {
        /// The LRC carried in the FASC-N.
        found: u8,
        /// The LRC computed over the first 39 characters.
        computed: u8,
    },
    /// A field given for encoding has the wrong number of digits or a non-digit.
    #[error("FASC-N field {field} must be {digits} decimal digits")]
    Field {
        /// The field's name.
        field: &'static str,
        /// How many digits it takes.
        digits: usize,
    },
}

/// The fields of a FASC-N, each a string of decimal digits of the exact width the TIG fixes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fascn {
    /// Agency code (4 digits; 9999 for PIV-I issuers outside the federal government).
    pub agency: String,
    /// System code (4 digits).
    pub system: String,
    /// Credential number (6 digits).
    pub credential: String,
    /// Credential series (1 digit).
    pub cs: String,
    /// Individual credential issue (1 digit).
    pub ici: String,
    /// Person identifier (10 digits).
    pub pi: String,
    /// Organizational category (1 digit: 1 federal, 2 state, 3 commercial, 4 foreign).
    pub oc: String,
    /// Organizational identifier (4 digits).
    pub oi: String,
    /// Person/organization association category (1 digit).
    pub poa: String,
}

/// Field names and widths in layout order, each followed by the separator after it.
const FIELDS: [(&str, usize, Option<u8>); 9] = [
    ("agency", 4, Some(FS)),
    ("system", 4, Some(FS)),
    ("credential", 6, Some(FS)),
    ("cs", 1, Some(FS)),
    ("ici", 1, Some(FS)),
    ("pi", 10, None),
    ("oc", 1, None),
    ("oi", 4, None),
    ("poa", 1, Some(ES)),
];

impl Fascn {
    fn fields(&self) -> [&str; 9] {
        [
            &self.agency,
            &self.system,
            &self.credential,
            &self.cs,
            &self.ici,
            &self.pi,
            &self.oc,
            &self.oi,
            &self.poa,
        ]
    }

    /// Checks every field's width and digits.
    pub fn validate(&self) -> Result<(), FascnError> {
        for ((name, digits, _), value) in FIELDS.iter().zip(self.fields()) {
            if value.len() != *digits || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FascnError::Field {
                    field: name,
                    digits: *digits,
                });
            }
        }
        Ok(())
    }

    /// The 40 4-bit character values, LRC included.
    fn characters(&self) -> Result<[u8; 40], FascnError> {
        self.validate()?;
        let mut chars = [0u8; 40];
        let mut n = 0;
        chars[n] = SS;
        n += 1;
        for ((_, _, sep), value) in FIELDS.iter().zip(self.fields()) {
            for b in value.bytes() {
                chars[n] = b - b'0';
                n += 1;
            }
            if let Some(sep) = sep {
                chars[n] = *sep;
                n += 1;
            }
        }
        chars[n] = chars[..n].iter().fold(0, |acc, c| acc ^ c);
        Ok(chars)
    }

    /// Encodes to the 25-byte form carried in the CHUID and in certificates.
    pub fn encode(&self) -> Result<[u8; FASCN_LEN], FascnError> {
        let chars = self.characters()?;
        let mut out = [0u8; FASCN_LEN];
        for (i, value) in chars.iter().enumerate() {
            for bit in 0..5 {
                let set = if bit < 4 {
                    (value >> bit) & 1 == 1
                } else {
                    value.count_ones() % 2 == 0 // odd parity over the 5 bits
                };
                if set {
                    let pos = i * 5 + bit;
                    out[pos / 8] |= 0x80 >> (pos % 8);
                }
            }
        }
        Ok(out)
    }

    /// Decodes the 25-byte form, checking parity, sentinels, separators and the LRC.
    pub fn decode(bytes: &[u8]) -> Result<Self, FascnError> {
        if bytes.len() != FASCN_LEN {
            return Err(FascnError::Length(bytes.len()));
        }
        let mut chars = [0u8; 40];
        for (i, slot) in chars.iter_mut().enumerate() {
            let mut five = 0u8;
            for bit in 0..5 {
                let pos = i * 5 + bit;
                if bytes[pos / 8] & (0x80 >> (pos % 8)) != 0 {
                    five |= 1 << bit;
                }
            }
            if five.count_ones() % 2 != 1 {
                return Err(FascnError::Parity { index: i });
            }
            *slot = five & 0x0F;
        }
        let expect = |index: usize, want: u8, name: &'static str| {
            if chars[index] == want {
                Ok(())
            } else {
                Err(FascnError::Structure {
                    index,
                    found: chars[index],
                    expected: name,
                })
            }
        };
        expect(0, SS, "start sentinel")?;
        let mut n = 1;
        let mut values: Vec<String> = Vec::with_capacity(9);
        for (_, digits, sep) in FIELDS {
            let mut s = String::with_capacity(digits);
            for _ in 0..digits {
                if chars[n] > 9 {
                    return Err(FascnError::Structure {
                        index: n,
                        found: chars[n],
                        expected: "a decimal digit",
                    });
                }
                s.push(char::from(b'0' + chars[n]));
                n += 1;
            }
            values.push(s);
            if let Some(sep) = sep {
                expect(
                    n,
                    sep,
                    if sep == ES {
                        "end sentinel"
                    } else {
                        "field separator"
                    },
                )?;
                n += 1;
            }
        }
        let computed = chars[..39].iter().fold(0, |acc, c| acc ^ c);
        if computed != chars[39] {
            return Err(FascnError::Lrc {
                found: chars[39],
                computed,
            });
        }
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(Fascn {
            agency: next(),
            system: next(),
            credential: next(),
            cs: next(),
            ici: next(),
            pi: next(),
            oc: next(),
            oi: next(),
            poa: next(),
        })
    }
}

impl fmt::Display for Fascn {
    /// The human form used in the TIG's examples: `SS` digits `FS` ... `ES`, without the LRC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "S{}F{}F{}F{}F{}F{}{}{}{}E",
            self.agency,
            self.system,
            self.credential,
            self.cs,
            self.ici,
            self.pi,
            self.oc,
            self.oi,
            self.poa
        )
    }
}

impl core::str::FromStr for Fascn {
    type Err = FascnError;

    /// Parses the human form `S9999F9999F999999F0F1F0000000000300001E`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |index: usize, expected: &'static str| FascnError::Structure {
            index,
            found: 0,
            expected,
        };
        let b = s.as_bytes();
        if b.len() != 39 {
            return Err(FascnError::Length(b.len()));
        }
        if b[0] != b'S' {
            return Err(bad(0, "start sentinel 'S'"));
        }
        let mut n = 1;
        let mut values = Vec::with_capacity(9);
        for (_, digits, sep) in FIELDS {
            let field = s.get(n..n + digits).unwrap_or_default().to_string();
            values.push(field);
            n += digits;
            if let Some(sep) = sep {
                let want = if sep == ES { b'E' } else { b'F' };
                if b.get(n) != Some(&want) {
                    return Err(bad(n, "separator 'F' or end sentinel 'E'"));
                }
                n += 1;
            }
        }
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let f = Fascn {
            agency: next(),
            system: next(),
            credential: next(),
            cs: next(),
            ici: next(),
            pi: next(),
            oc: next(),
            oi: next(),
            poa: next(),
        };
        f.validate()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The non-federal placeholder FASC-N that YubiKey/ykman and OpenSC write into a CHUID, whose
    /// fields those projects document as `SS 9999 FS 9999 FS 999999 FS 0 FS 1 FS 0000000000 3
    /// 0000 1 ES LRC` (TIG SCEPACS section 6 encoding, agency 9999 per section 6.4).
    const YUBIKEY_FASCN: &str = "d4e739da739ced39ce739d836858210842108421c84210c3eb";

    #[test]
    fn decodes_the_published_placeholder() {
        let f = Fascn::decode(&hex(YUBIKEY_FASCN)).unwrap();
        assert_eq!(f.to_string(), "S9999F9999F999999F0F1F0000000000300001E");
        assert_eq!(f.agency, "9999");
        assert_eq!(f.credential, "999999");
        assert_eq!(f.ici, "1");
        assert_eq!(f.oc, "3");
        assert_eq!(f.poa, "1");
    }

    #[test]
    fn encodes_the_published_placeholder_bit_for_bit() {
        let f: Fascn = "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap();
        assert_eq!(f.encode().unwrap().to_vec(), hex(YUBIKEY_FASCN));
    }

    #[test]
    fn round_trips_arbitrary_digits() {
        let f: Fascn = "S0032F0001F092446F0F1F1112010030100751E".parse().unwrap();
        let bytes = f.encode().unwrap();
        assert_eq!(Fascn::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn sentinels_and_separators_have_the_tig_bit_patterns() {
        // TIG table: SS = 11010, FS = 10110, ES = 11111 (b1 b2 b3 b4 P), digit 0 = 00001, 1 = 10000.
        let bytes = hex(YUBIKEY_FASCN);
        let first_char = bytes[0] >> 3;
        assert_eq!(first_char, 0b11010);
    }

    #[test]
    fn refuses_wrong_length() {
        assert_eq!(Fascn::decode(&[0u8; 24]), Err(FascnError::Length(24)));
    }

    #[test]
    fn refuses_a_flipped_bit_by_parity() {
        let mut bytes = hex(YUBIKEY_FASCN);
        bytes[3] ^= 0x10;
        assert!(matches!(
            Fascn::decode(&bytes),
            Err(FascnError::Parity { .. })
        ));
    }

    #[test]
    fn refuses_a_bad_lrc() {
        let f: Fascn = "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap();
        let mut bytes = f.encode().unwrap();
        // The LRC is the last 5 bits: replace it by another odd-parity character (digit 0 = 00001).
        bytes[24] = (bytes[24] & 0xE0) | 0b00001;
        assert!(matches!(Fascn::decode(&bytes), Err(FascnError::Lrc { .. })));
    }

    #[test]
    fn refuses_a_missing_separator() {
        // A FASC-N whose first separator is replaced by the digit 9 (parity still odd).
        let f: Fascn = "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap();
        let mut bytes = f.encode().unwrap();
        // Character 5 occupies bits 25..30: bytes[3] bits 1..0 and bytes[3]/[4]. Rewrite it.
        let nine = 0b10011u8; // 9 = 1001 LSB first -> 1,0,0,1 parity 1
        for bit in 0..5 {
            let pos = 25 + bit;
            let mask = 0x80 >> (pos % 8);
            if nine & (0x10 >> bit) != 0 {
                bytes[pos / 8] |= mask;
            } else {
                bytes[pos / 8] &= !mask;
            }
        }
        assert!(matches!(
            Fascn::decode(&bytes),
            Err(FascnError::Structure { index: 5, .. })
        ));
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(
            "S999F9999F999999F0F1F0000000000300001E"
                .parse::<Fascn>()
                .is_err()
        );
        assert!(
            "S99a9F9999F999999F0F1F0000000000300001E"
                .parse::<Fascn>()
                .is_err()
        );
        let mut f: Fascn = "S9999F9999F999999F0F1F0000000000300001E".parse().unwrap();
        f.pi = "123".into();
        assert_eq!(
            f.encode(),
            Err(FascnError::Field {
                field: "pi",
                digits: 10
            })
        );
    }

    #[test]
    fn never_panics_on_random_bytes() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut b = [0u8; 25];
            for v in &mut b {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            let _ = Fascn::decode(&b);
        }
    }
}
