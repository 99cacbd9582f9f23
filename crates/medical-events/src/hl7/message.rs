//! From a frame's bytes to a parsed message, in the order the bytes allow:
//! the MSH header is read first (its delimiters and MSH-18 are ASCII), then
//! the whole message is decoded in the character set MSH-18 names, segment
//! ends (CR, LF or CRLF) are normalized to CR, and only then is the
//! structure parsed, by hl7-parser.
//!
//! Every failure after the header has been read carries the header, so the
//! listener can still address an ACK to the message (MSA-2 = its MSH-10).

use std::borrow::Cow;

use hl7_parser::message::{Field, Segment};

use super::charset::{Charset, UTF8_BOM};
use super::refusal::{Location, Refusal};
use super::separators::Separators;

/// Per-listener settings for reading messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// The character set of messages whose MSH-18 is empty.
    pub default_charset: Charset,
}

impl Default for ReadOptions {
    /// UTF-8 (ASCII is a subset of it); a Latin-1 sender that leaves MSH-18
    /// empty needs its listener configured so.
    fn default() -> Self {
        Self {
            default_charset: Charset::Utf8,
        }
    }
}

/// The frame is not an HL7 v2 message at all: it is answered `AR` with the
/// default delimiters and an empty MSA-2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an HL7 message: {0}")]
pub struct NotHl7(pub &'static str);

/// Why `Hl7Message::read` did not return a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    NotHl7(#[from] NotHl7),
    /// The header was read; the message cannot be. Answer with the header.
    #[error("{refusal}")]
    Refused {
        header: Box<Header>,
        refusal: Refusal,
    },
}

/// The MSH segment as read from the bytes, fields still escaped. Enough to
/// address and shape an ACK even when the rest of the message is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    separators: Separators,
    /// `fields[n]` is MSH-n: `fields[0]` is `MSH`, `fields[1]` the field
    /// separator itself.
    fields: Vec<String>,
    /// The character set the message is in, or the unsupported MSH-18 value.
    charset: Result<Charset, String>,
}

impl Header {
    /// Reads the MSH segment at the start of `bytes` (after a byte-order
    /// mark or blank lines, which some senders leave).
    pub fn read(bytes: &[u8], options: &ReadOptions) -> Result<Self, NotHl7> {
        // A byte-order mark says UTF-8 where MSH-18 says nothing: the
        // listener's default is for senders that do not say.
        let default_charset = if bytes.starts_with(UTF8_BOM) {
            Charset::Utf8
        } else {
            options.default_charset
        };
        let bytes = trim_start(bytes);
        if !bytes.starts_with(b"MSH") {
            return Err(NotHl7("it does not start with an MSH segment"));
        }
        let (separators, _) = Separators::read(bytes).map_err(NotHl7)?;
        let line = &bytes[..bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(bytes.len())];
        // The delimiters are ASCII, so splitting the bytes is safe in every
        // supported (ASCII-compatible) set; MSH-18 itself is ASCII.
        let field_byte = separators.field as u8;
        let declared = line
            .split(|&b| b == field_byte)
            .nth(17)
            .and_then(|msh18| msh18.split(|&b| b == separators.repetition as u8).next())
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        let charset =
            Charset::from_hl7_name(&declared).map(|named| named.unwrap_or(default_charset));
        let text = charset
            .as_ref()
            .map_or(default_charset, |charset| *charset)
            .decode_lossy(line);
        let mut fields: Vec<String> = text.split(separators.field).map(str::to_owned).collect();
        fields.insert(1, separators.field.to_string());
        Ok(Self {
            separators,
            fields,
            charset,
        })
    }

    pub fn separators(&self) -> &Separators {
        &self.separators
    }

    /// MSH-n as sent (escapes not decoded); empty when absent.
    pub fn field(&self, n: usize) -> &str {
        match n {
            0 => "",
            _ => self.fields.get(n).map_or("", String::as_str),
        }
    }

    /// Component `c` of the first repetition of MSH-n, as sent.
    pub fn component(&self, n: usize, c: usize) -> &str {
        component(self.field(n), &self.separators, c)
    }

    /// Component `c` of MSH-n with escapes decoded.
    pub fn text(&self, n: usize, c: usize) -> String {
        self.separators.decode(self.component(n, c)).into_owned()
    }

    /// MSH-n with its components decoded and joined by `^`, whatever the
    /// sender's delimiters, trailing empty components dropped: the same
    /// value for the same meaning (keys, stored fields).
    pub fn canonical(&self, n: usize) -> String {
        canonical(self.field(n), &self.separators)
    }

    /// MSH-10, the sender's id of this message (MSA-2 of its ACK).
    pub fn control_id(&self) -> String {
        self.text(10, 1)
    }

    /// MSH-9.1 and MSH-9.2 joined by `^` (`ADT^A01`); MSH-9.1 alone when
    /// MSH-9.2 is empty.
    pub fn message_type(&self) -> String {
        let code = self.text(9, 1);
        let trigger = self.text(9, 2);
        if trigger.is_empty() {
            code
        } else {
            format!("{code}^{trigger}")
        }
    }

    /// An ACK (or another answer) must not itself be acknowledged.
    pub fn is_ack(&self) -> bool {
        self.text(9, 1).trim() == "ACK"
    }

    /// MSH-12.1, e.g. `2.5.1`.
    pub fn version(&self) -> String {
        self.text(12, 1).trim().to_owned()
    }

    /// MSH-11.1, e.g. `P`.
    pub fn processing_id(&self) -> String {
        self.text(11, 1).trim().to_owned()
    }

    /// The character set of the message, or the MSH-18 value naming one
    /// this listener does not read.
    pub fn charset(&self) -> Result<Charset, &str> {
        self.charset.as_ref().copied().map_err(String::as_str)
    }

    /// Enhanced acknowledgment mode: MSH-15 or MSH-16 is valued.
    pub fn enhanced_mode(&self) -> bool {
        !self.field(15).trim().is_empty() || !self.field(16).trim().is_empty()
    }
}

/// A message whose header was read and whose text is decoded and
/// normalized; its structure is parsed on demand (`parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Message {
    header: Header,
    charset: Charset,
    /// Every segment followed by CR; no empty segments.
    text: String,
    /// What hl7-parser is given, when it cannot take `text` as it is.
    parse_form: Option<String>,
}

impl Hl7Message {
    /// Reads a frame's payload (see `mllp`).
    pub fn read(bytes: &[u8], options: &ReadOptions) -> Result<Self, ReadError> {
        let header = Header::read(bytes, options)?;
        let refused = |refusal| ReadError::Refused {
            header: Box::new(header.clone()),
            refusal,
        };
        let charset = match header.charset() {
            Ok(charset) => charset,
            Err(declared) => {
                return Err(refused(Refusal::UnsupportedCharset {
                    declared: declared.to_owned(),
                }));
            }
        };
        let text = charset
            .decode(trim_start(bytes))
            .ok_or_else(|| refused(Refusal::Undecodable { charset }))?;
        // A line of only spaces or tabs (a hand-edited file's last line) is
        // blank, as an empty one is: no segment.
        let segments: Vec<&str> = text
            .split(['\r', '\n'])
            .filter(|segment| !blank(segment.as_bytes()))
            .collect();
        let parse_form = parse_form(&segments, header.separators());
        let mut normalized = String::with_capacity(text.len() + 1);
        for segment in &segments {
            normalized.push_str(segment);
            normalized.push('\r');
        }
        Ok(Self {
            header,
            charset,
            text: normalized,
            parse_form,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// The decoded message, each segment ended by CR.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The segments of the decoded message.
    pub fn segment_texts(&self) -> impl Iterator<Item = &str> {
        self.text.split_terminator('\r')
    }

    /// Parses the structure. A segment that cannot be read is refused with
    /// its location, never skipped: hl7-parser stops quietly at the first
    /// such segment, which would drop every segment after it.
    pub fn parse(&self) -> Result<Parsed<'_>, Refusal> {
        let form = self
            .parse_form
            .as_deref()
            .unwrap_or_else(|| self.text.strip_suffix('\r').unwrap_or(&self.text));
        let malformed = |index: usize| {
            let line = form.split('\r').nth(index).unwrap_or_default();
            let name: String = line.chars().take(3).collect();
            let sequence = form
                .split('\r')
                .take(index + 1)
                .filter(|segment| segment.starts_with(name.as_str()))
                .count();
            Refusal::Malformed {
                location: Location::segment(&name, sequence.max(1)),
                detail: "a segment is a three-character name and a field separator".to_owned(),
            }
        };
        let message = hl7_parser::Message::parse(form).map_err(|_| malformed(0))?;
        if message.raw_value().len() != form.len() {
            return Err(malformed(message.segments.len()));
        }
        Ok(Parsed {
            message,
            separators: *self.header.separators(),
        })
    }
}

/// A parsed message: hl7-parser's structure and the sender's delimiters.
#[derive(Debug)]
pub struct Parsed<'a> {
    message: hl7_parser::Message<'a>,
    separators: Separators,
}

impl<'a> Parsed<'a> {
    /// hl7-parser's view, for what the helpers below do not cover.
    pub fn message(&self) -> &hl7_parser::Message<'a> {
        &self.message
    }

    pub fn separators(&self) -> &Separators {
        &self.separators
    }

    /// The segments named `name`, in order.
    pub fn segments<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Segment<'a>> + 's {
        self.message.segments().filter(move |s| s.name == name)
    }

    /// Field `n` (1-based; MSH-1 is the field separator) of a segment.
    pub fn field<'s>(segment: &'s Segment<'a>, n: usize) -> Option<&'s Field<'a>> {
        if n == 0 { None } else { segment.field(n) }
    }

    /// A raw value with its escapes decoded.
    pub fn text<'v>(&self, raw: &'v str) -> Cow<'v, str> {
        self.separators.decode(raw)
    }
}

/// Component `c` (1-based) of the first repetition of a raw field.
pub(crate) fn component<'f>(field: &'f str, separators: &Separators, c: usize) -> &'f str {
    let first = field
        .split(separators.repetition)
        .next()
        .unwrap_or_default();
    c.checked_sub(1)
        .and_then(|index| first.split(separators.component).nth(index))
        .unwrap_or_default()
}

/// See `Header::canonical`.
pub(crate) fn canonical(field: &str, separators: &Separators) -> String {
    let first = field
        .split(separators.repetition)
        .next()
        .unwrap_or_default();
    let mut parts: Vec<Cow<str>> = first
        .split(separators.component)
        .map(|part| separators.decode(part))
        .collect();
    while parts.last().is_some_and(|part| part.is_empty()) {
        parts.pop();
    }
    parts.join("^")
}

/// Skips what some senders put before MSH: a UTF-8 byte-order mark, blank
/// lines. The MSH line itself is left whole.
pub(super) fn trim_start(bytes: &[u8]) -> &[u8] {
    let mut rest = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    while let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        if !blank(&rest[..end]) {
            break;
        }
        rest = &rest[end + 1..];
    }
    rest
}

/// Empty or only whitespace (a hand-edited file's last line): no segment.
pub(super) fn blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The text hl7-parser can read, when it differs from the message's: it
/// takes exactly four encoding characters (a fifth, v2.7's truncation
/// character, would shift every MSH field by one) and refuses a segment
/// that is only a name (legal: all its fields empty).
fn parse_form(segments: &[&str], separators: &Separators) -> Option<String> {
    let bare = |segment: &&str| segment.len() == 3;
    if separators.truncation.is_none() && !segments.iter().any(bare) {
        return None;
    }
    let mut form = String::new();
    for (index, segment) in segments.iter().enumerate() {
        if index > 0 {
            form.push('\r');
        }
        match separators.truncation {
            // MSH + field separator + four encoding characters, then the fifth.
            Some(_) if index == 0 => {
                form.push_str(segment.get(..8).unwrap_or(segment));
                form.push_str(segment.get(9..).unwrap_or_default());
            }
            _ => form.push_str(segment),
        }
        if bare(segment) {
            form.push(separators.field);
        }
    }
    Some(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Hl7Message {
        Hl7Message::read(text.as_bytes(), &ReadOptions::default()).unwrap()
    }

    #[test]
    fn header_fields_are_numbered_as_in_the_standard() {
        let message = read(
            "MSH|^~\\&|APP^1.2.3^ISO|FAC|RAPP|RFAC|20240101120000||ADT^A01^ADT_A01|CTRL\\F\\1|P^T|2.5.1|||AL|NE||UNICODE UTF-8\rPID|||1\r",
        );
        let header = message.header();
        assert_eq!(header.field(1), "|");
        assert_eq!(header.field(2), "^~\\&");
        assert_eq!(header.field(3), "APP^1.2.3^ISO");
        assert_eq!(header.canonical(3), "APP^1.2.3^ISO");
        assert_eq!(header.component(3, 1), "APP");
        assert_eq!(header.control_id(), "CTRL|1");
        assert_eq!(header.message_type(), "ADT^A01");
        assert_eq!(header.version(), "2.5.1");
        assert_eq!(header.processing_id(), "P");
        assert_eq!(header.charset(), Ok(Charset::Utf8));
        assert!(header.enhanced_mode());
        assert_eq!(header.field(40), "");
        assert_eq!(header.component(9, 0), "");
    }

    #[test]
    fn segment_ends_are_normalized_to_cr() {
        let cr = read("MSH|^~\\&|A\rPID|||1\r");
        let lf = read("MSH|^~\\&|A\nPID|||1\n");
        let crlf = read("\r\nMSH|^~\\&|A\r\nPID|||1\r\n\r\n");
        let bare = read("MSH|^~\\&|A\rPID|||1");
        assert_eq!(cr.text(), "MSH|^~\\&|A\rPID|||1\r");
        assert_eq!(lf.text(), cr.text());
        assert_eq!(crlf.text(), cr.text());
        assert_eq!(bare.text(), cr.text());
        assert_eq!(cr.segment_texts().count(), 2);
    }

    #[test]
    fn not_hl7_is_told_apart_from_a_bad_message() {
        for junk in [&b""[..], b"hello", b"MSH", b"MSH|", b"PID|||1\rMSH|^~\\&|"] {
            assert!(matches!(
                Hl7Message::read(junk, &ReadOptions::default()),
                Err(ReadError::NotHl7(_))
            ));
        }
        let error = Hl7Message::read(
            b"MSH|^~\\&|A|||||||CTRL9\rPID|\xff\r",
            &ReadOptions::default(),
        )
        .unwrap_err();
        let ReadError::Refused { header, refusal } = error else {
            panic!("{error:?}");
        };
        assert_eq!(header.control_id(), "CTRL9");
        assert_eq!(
            refusal,
            Refusal::Undecodable {
                charset: Charset::Utf8
            }
        );
    }

    #[test]
    fn lines_of_only_whitespace_are_no_segments() {
        let message = Hl7Message::read(
            b" \r\nMSH|^~\\&|A|||||||C1\r \t\rPID|||1\r   \n",
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(message.text(), "MSH|^~\\&|A|||||||C1\rPID|||1\r");
    }

    #[test]
    fn a_byte_order_mark_means_utf_8_unless_msh_18_says_otherwise() {
        let latin1 = ReadOptions {
            default_charset: Charset::Latin1,
        };
        let marked = "\u{FEFF}MSH|^~\\&|A|||||||C1\rPID|||1||M\u{DC}LLER\r";
        let message = Hl7Message::read(marked.as_bytes(), &latin1).unwrap();
        assert_eq!(message.charset(), Charset::Utf8);
        assert_eq!(
            message.text(),
            "MSH|^~\\&|A|||||||C1\rPID|||1||M\u{DC}LLER\r"
        );
        let declared = "\u{FEFF}MSH|^~\\&|A|||||||C1||||||||8859/1\rPID|||1\r";
        let message = Hl7Message::read(declared.as_bytes(), &ReadOptions::default()).unwrap();
        assert_eq!(message.charset(), Charset::Latin1);
        assert!(message.text().starts_with("MSH|"));
    }

    #[test]
    fn unsupported_charsets_are_refused_with_the_header() {
        let text = "MSH|^~\\&|A|||||||C1|P|2.5||||||UNICODE UTF-16\r";
        let Err(ReadError::Refused { refusal, .. }) =
            Hl7Message::read(text.as_bytes(), &ReadOptions::default())
        else {
            panic!("not refused");
        };
        assert!(matches!(refusal, Refusal::UnsupportedCharset { .. }));
        assert_eq!(refusal.location().unwrap().to_string(), "MSH-18");
    }

    #[test]
    fn a_broken_segment_refuses_the_message_instead_of_ending_it() {
        let message = read("MSH|^~\\&|A\rEVN|A01\rP!D|||1\rPID|||2\r");
        let refusal = message.parse().unwrap_err();
        assert_eq!(
            refusal.location().unwrap(),
            Location::segment("P!D", 1),
            "{refusal}"
        );
    }

    #[test]
    fn bare_segments_and_a_truncation_character_parse() {
        let message = read("MSH|^~\\&#|APP|FAC|||||ADT^A01|C1\rNTE\rPID|||12^^^^MR\r");
        assert_eq!(message.header().field(3), "APP");
        assert_eq!(message.header().separators().truncation, Some('#'));
        let parsed = message.parse().unwrap();
        let msh = parsed.segments("MSH").next().unwrap();
        assert_eq!(Parsed::field(msh, 3).unwrap().raw_value(), "APP");
        assert_eq!(Parsed::field(msh, 10).unwrap().raw_value(), "C1");
        let pid = parsed.segments("PID").next().unwrap();
        assert_eq!(Parsed::field(pid, 3).unwrap().raw_value(), "12^^^^MR");
        assert!(Parsed::field(pid, 0).is_none());
        // The text keeps what was sent.
        assert!(message.text().starts_with("MSH|^~\\&#|APP"));
        assert!(message.text().contains("\rNTE\r"));
    }
}
