//! The delimiters a sender chose in MSH-1 and MSH-2, and the escape
//! sequences that let a value contain them (`\F\ \S\ \T\ \R\ \E\`).
//!
//! Escapes are decoded here rather than by hl7-parser: its decoder indexes
//! the text by character count as if it were a byte offset, so a value with
//! a non-ASCII character before an escape decodes wrongly or panics, and it
//! leaves `\H\`, `\N\` and `\Xhh\` as letters.

use std::borrow::Cow;

/// MSH-1 and MSH-2: the field separator and the encoding characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// The fifth encoding character of v2.7 and later (`#`), if sent.
    pub truncation: Option<char>,
}

impl Default for Separators {
    /// `|^~\&`, what a receiver uses when it has nothing better.
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Separators {
    /// Reads the delimiters of a header segment (MSH, BHS or FHS) from its
    /// bytes: the fourth byte is the field separator, then four or five
    /// encoding characters up to the next field separator. Returns them and
    /// the offset just past MSH-2.
    pub(crate) fn read(segment: &[u8]) -> Result<(Self, usize), &'static str> {
        let field = *segment
            .get(3)
            .ok_or("no field separator after the segment name")?;
        if !is_delimiter(field) {
            return Err("the field separator is not a punctuation character");
        }
        let encoding = &segment[4..];
        let end = encoding
            .iter()
            .position(|&b| b == field || b == b'\r' || b == b'\n')
            .unwrap_or(encoding.len());
        let encoding = &encoding[..end];
        if !(4..=5).contains(&encoding.len()) {
            return Err("MSH-2 does not hold four or five encoding characters");
        }
        let mut seen = vec![field];
        for &b in encoding {
            if !is_delimiter(b) || seen.contains(&b) {
                return Err("the encoding characters are not distinct punctuation characters");
            }
            seen.push(b);
        }
        let separators = Self {
            field: char::from(field),
            component: char::from(encoding[0]),
            repetition: char::from(encoding[1]),
            escape: char::from(encoding[2]),
            subcomponent: char::from(encoding[3]),
            truncation: encoding.get(4).map(|&b| char::from(b)),
        };
        Ok((separators, 4 + end))
    }

    /// MSH-2 as the sender wrote it.
    pub fn encoding_characters(&self) -> String {
        let mut text: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .collect();
        text.extend(self.truncation);
        text
    }

    /// A value with its escape sequences replaced by what they stand for.
    /// Formatting (`\H\ \N\ \.sp\`...) and character-set switches are
    /// dropped; `\.br\` becomes a line feed; `\Xhh..\` becomes its bytes (as
    /// UTF-8 if they are, else Latin-1). An unknown or unterminated sequence
    /// is kept as written, so no text is lost.
    pub fn decode<'a>(&self, value: &'a str) -> Cow<'a, str> {
        let escape = self.escape;
        if !value.contains(escape) {
            return Cow::Borrowed(value);
        }
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find(escape) {
            out.push_str(&rest[..start]);
            let after = &rest[start + escape.len_utf8()..];
            let Some(len) = after.find(escape) else {
                out.push_str(&rest[start..]);
                return Cow::Owned(out);
            };
            let sequence = &after[..len];
            match self.expand(sequence) {
                Some(text) => out.push_str(&text),
                None => {
                    out.push(escape);
                    out.push_str(sequence);
                    out.push(escape);
                }
            }
            rest = &after[len + escape.len_utf8()..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// What one escape sequence (between the escape characters) stands for.
    fn expand(&self, sequence: &str) -> Option<Cow<'static, str>> {
        let single = |c: char| Some(Cow::Owned(c.to_string()));
        match sequence {
            "F" => single(self.field),
            "S" => single(self.component),
            "T" => single(self.subcomponent),
            "R" => single(self.repetition),
            "E" => single(self.escape),
            "P" => self.truncation.and_then(single),
            "H" | "N" => Some(Cow::Borrowed("")),
            ".br" => Some(Cow::Borrowed("\n")),
            _ if sequence.starts_with('.') && sequence.len() > 1 => Some(Cow::Borrowed("")),
            _ if sequence.starts_with(['C', 'M']) && sequence.len() > 1 => Some(Cow::Borrowed("")),
            _ if sequence.starts_with('X') => hex(&sequence[1..]).map(Cow::Owned),
            _ => None,
        }
    }

    /// `text` with every delimiter (and CR, LF) written as its escape, so it
    /// can be placed in a field.
    pub fn encode(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let escape = self.escape;
        for c in text.chars() {
            let code = match c {
                _ if c == self.field => "F",
                _ if c == self.component => "S",
                _ if c == self.subcomponent => "T",
                _ if c == self.repetition => "R",
                _ if c == escape => "E",
                _ if Some(c) == self.truncation => "P",
                '\r' => "X0D",
                '\n' => "X0A",
                _ => {
                    out.push(c);
                    continue;
                }
            };
            out.push(escape);
            out.push_str(code);
            out.push(escape);
        }
        out
    }
}

/// HL7 delimiters are printable ASCII punctuation (never a letter, digit,
/// space or control character).
fn is_delimiter(byte: u8) -> bool {
    byte.is_ascii_graphic() && !byte.is_ascii_alphanumeric()
}

fn hex(digits: &str) -> Option<String> {
    if digits.is_empty() || digits.len() % 2 != 0 || !digits.is_ascii() {
        return None;
    }
    let bytes = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => error.into_bytes().iter().map(|&b| char::from(b)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msh_1_and_2() {
        let (seps, end) = Separators::read(b"MSH|^~\\&|APP").unwrap();
        assert_eq!(seps, Separators::default());
        assert_eq!(end, 8);
        let (seps, end) = Separators::read(b"MSH*:!$%#*APP").unwrap();
        assert_eq!(seps.field, '*');
        assert_eq!(seps.component, ':');
        assert_eq!(seps.escape, '$');
        assert_eq!(seps.truncation, Some('#'));
        assert_eq!(seps.encoding_characters(), ":!$%#");
        assert_eq!(end, 9);
    }

    #[test]
    fn refuses_unusable_delimiters() {
        for bad in [
            &b"MSH"[..],
            b"MSH|",
            b"MSH|^~\\|",
            b"MSH|^~\\&#!|",
            b"MSHA^~\\&|",
            b"MSH|^^\\&|",
            b"MSH|^~\\||",
            b"MSH|^~ &|",
        ] {
            assert!(Separators::read(bad).is_err(), "{bad:?}");
        }
        // MSH-2 ending the segment is still four encoding characters.
        assert!(Separators::read(b"MSH|^~\\&\r").is_ok());
    }

    #[test]
    fn decodes_the_standard_escapes() {
        let seps = Separators::default();
        assert_eq!(seps.decode("plain"), "plain");
        assert_eq!(
            seps.decode(r"a\F\b\S\c\T\d\R\e\E\f"),
            "a|b^c&d~e\\f".to_owned()
        );
        assert_eq!(seps.decode(r"\H\bold\N\ line\.br\two"), "bold line\ntwo");
        assert_eq!(seps.decode(r"\X0D0A\"), "\r\n");
        assert_eq!(seps.decode(r"\XC3A9\ \XE9\"), "é é");
        // Unknown, malformed or unterminated sequences are kept as written.
        assert_eq!(
            seps.decode(r"\Zlocal\ \X1\ \\ a\F"),
            r"\Zlocal\ \X1\ \\ a\F"
        );
    }

    #[test]
    fn decodes_after_non_ascii_text() {
        // Where hl7-parser's decoder slices by character count.
        let seps = Separators::default();
        assert_eq!(seps.decode(r"éé\F\x"), "éé|x");
        assert_eq!(seps.decode(r"ü\S\"), "ü^");
    }

    #[test]
    fn decodes_with_the_senders_delimiters() {
        let (seps, _) = Separators::read(b"MSH*:!$%*").unwrap();
        assert_eq!(seps.decode("12$S$3$E$"), "12:3$");
    }

    #[test]
    fn encoding_round_trips() {
        let seps = Separators::default();
        let text = "a|b^c&d~e\\f\rg\nh é";
        assert_eq!(seps.encode(text), r"a\F\b\S\c\T\d\R\e\E\f\X0D\g\X0A\h é");
        assert_eq!(seps.decode(&seps.encode(text)), text);
    }
}
