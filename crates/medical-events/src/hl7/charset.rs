//! The character sets of MSH-18 this listener reads. Frames are bytes; text
//! exists only after MSH-18 (itself ASCII) says how to decode them.
//!
//! Decoding is strict: bytes that are not valid in the declared set refuse
//! the message (`AE`) rather than store a guess. A sender that leaves MSH-18
//! empty gets the listener's default, which is where a Latin-1 sender that
//! does not say so is accommodated.

use std::fmt;

/// The UTF-8 byte-order mark. Some senders write one before the MSH (HL7
/// v2.5 advises against it); it is not part of the message, and it says
/// the message is UTF-8.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A character set named by HL7 table 0211.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `ASCII`: 7-bit; the HL7 default when MSH-18 is empty.
    Ascii,
    /// `8859/1`: ISO 8859-1 (Latin-1), one byte per character.
    Latin1,
    /// `UNICODE UTF-8`.
    Utf8,
}

impl Charset {
    /// The table 0211 value for MSH-18.
    pub fn hl7_name(self) -> &'static str {
        match self {
            Self::Ascii => "ASCII",
            Self::Latin1 => "8859/1",
            Self::Utf8 => "UNICODE UTF-8",
        }
    }

    /// Reads an MSH-18 value: `Ok(None)` when it is empty (the listener's
    /// default applies), `Err` with the value when it names another set.
    /// Case and surrounding spaces are forgiven; spelling is not.
    pub fn from_hl7_name(value: &str) -> Result<Option<Self>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        [Self::Ascii, Self::Latin1, Self::Utf8]
            .into_iter()
            .find(|charset| charset.hl7_name().eq_ignore_ascii_case(value))
            .map(Some)
            .ok_or_else(|| value.to_owned())
    }

    /// The text of `bytes`, or `None` if they are not valid in this set.
    pub fn decode(self, bytes: &[u8]) -> Option<String> {
        match self {
            Self::Ascii => bytes
                .is_ascii()
                .then(|| bytes.iter().map(|&b| char::from(b)).collect()),
            // Every byte is a Latin-1 character, the code point of its value.
            Self::Latin1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
            Self::Utf8 => std::str::from_utf8(bytes).ok().map(str::to_owned),
        }
    }

    /// Like `decode`, but never fails: what is invalid becomes U+FFFD.
    /// For reading a header well enough to address an ACK.
    pub fn decode_lossy(self, bytes: &[u8]) -> String {
        match self {
            Self::Ascii => bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        char::from(b)
                    } else {
                        '\u{FFFD}'
                    }
                })
                .collect(),
            Self::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            Self::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    /// The bytes of `text` in this set; a character it cannot hold becomes
    /// `?` (ACKs only echo what the sender sent, so this is a last resort).
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Self::Ascii => text
                .chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
            Self::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
            Self::Utf8 => text.as_bytes().to_vec(),
        }
    }
}

impl fmt::Display for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hl7_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_table_0211() {
        assert_eq!(Charset::from_hl7_name(""), Ok(None));
        assert_eq!(Charset::from_hl7_name("  "), Ok(None));
        assert_eq!(Charset::from_hl7_name("ASCII"), Ok(Some(Charset::Ascii)));
        assert_eq!(Charset::from_hl7_name("8859/1"), Ok(Some(Charset::Latin1)));
        assert_eq!(
            Charset::from_hl7_name("unicode utf-8"),
            Ok(Some(Charset::Utf8))
        );
        assert_eq!(
            Charset::from_hl7_name("UNICODE UTF-16"),
            Err("UNICODE UTF-16".to_owned())
        );
    }

    #[test]
    fn latin1_maps_each_byte_to_its_code_point() {
        let bytes = b"M\xfcller \xe9";
        assert_eq!(Charset::Latin1.decode(bytes).unwrap(), "Müller é");
        assert_eq!(Charset::Latin1.encode("Müller é"), bytes.to_vec());
        assert_eq!(Charset::Latin1.encode("€"), b"?".to_vec());
    }

    #[test]
    fn strict_decoding_refuses_bytes_outside_the_set() {
        assert_eq!(Charset::Ascii.decode(b"M\xfcller"), None);
        assert_eq!(Charset::Utf8.decode(b"M\xfcller"), None);
        assert_eq!(Charset::Utf8.decode("Müller".as_bytes()).unwrap(), "Müller");
        assert_eq!(Charset::Ascii.decode_lossy(b"M\xfc"), "M\u{FFFD}");
    }
}
