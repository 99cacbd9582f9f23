//! Batches: one MLLP payload carrying several messages, wrapped in FHS/BHS
//! headers and BTS/FTS trailers. The splitter returns each message's bytes
//! in order, to be read and mapped one by one, so that one bad message does
//! not lose the others; the listener decides how to answer (one response
//! per payload).
//!
//! Splitting is on bytes, before decoding: each message has its own MSH-18,
//! and segment names and ends are ASCII in every set read here. Headers and
//! trailers are optional, as senders use them (a lone BHS, a BTS without
//! BHS); what cannot be read without guessing is refused: a segment before
//! the first MSH, a header in the middle, a BTS count that disagrees.

use super::charset::{Charset, UTF8_BOM};
use super::message::{ReadOptions, blank};

/// A payload split into its messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch<'a> {
    /// The FHS segment, if the payload is a file.
    pub file_header: Option<&'a [u8]>,
    /// The BHS segments, in order.
    pub batch_headers: Vec<&'a [u8]>,
    /// Each message's bytes (MSH to its last segment), in order.
    pub messages: Vec<&'a [u8]>,
    /// Whether any batch segment (FHS, BHS, BTS, FTS) was seen.
    pub wrapped: bool,
    /// The payload starts with a UTF-8 byte-order mark: its messages are
    /// UTF-8 where their MSH-18 says nothing.
    pub utf8_bom: bool,
}

impl Batch<'_> {
    /// More than a single plain message: answer it as a batch.
    pub fn is_batch(&self) -> bool {
        self.wrapped || self.messages.len() > 1
    }

    /// How to read its messages on a listener read with `listener`.
    pub fn read_options(&self, listener: &ReadOptions) -> ReadOptions {
        let mut options = listener.clone();
        if self.utf8_bom {
            options.default_charset = Charset::Utf8;
        }
        options
    }
}

/// Why a payload cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a {segment} segment comes before any MSH")]
    OutsideMessage { segment: String },
    #[error("a {segment} segment is out of place")]
    Misplaced { segment: &'static str },
    #[error("BTS-1 counts {declared} messages, the batch has {found}")]
    CountMismatch { declared: usize, found: usize },
}

/// Splits a payload (a single message gives a batch of one, unwrapped).
pub fn split_batch(payload: &[u8]) -> Result<Batch<'_>, BatchError> {
    let mut batch = Batch::default();
    // The message being collected: (start offset, end offset).
    let mut current: Option<(usize, usize)> = None;
    let mut in_batch = false;
    let mut batch_start = 0;
    let mut batches_closed = 0;
    let mut file_closed = false;
    let mut first = true;
    let mut field_separator = b'|';
    batch.utf8_bom = payload.starts_with(UTF8_BOM);
    // A byte-order mark before the first segment is not part of it.
    let skip = if batch.utf8_bom { UTF8_BOM.len() } else { 0 };

    for (start, line) in lines(&payload[skip..]) {
        let start = skip + start;
        let end = start + line.len();
        let is = |name: &[u8]| {
            line.starts_with(name) && line.get(3).is_none_or(|b| !b.is_ascii_alphanumeric())
        };
        if file_closed {
            return Err(BatchError::Misplaced { segment: "FTS" });
        }
        let was_first = std::mem::replace(&mut first, false);
        if is(b"MSH") {
            if batches_closed > 0 && !in_batch {
                return Err(BatchError::Misplaced { segment: "BTS" });
            }
            finish(&mut batch, payload, current.take());
            current = Some((start, end));
        } else if is(b"FHS") {
            if !was_first {
                return Err(BatchError::Misplaced { segment: "FHS" });
            }
            field_separator = line.get(3).copied().unwrap_or(b'|');
            batch.file_header = Some(line);
            batch.wrapped = true;
        } else if is(b"BHS") {
            if in_batch || current.is_some() {
                return Err(BatchError::Misplaced { segment: "BHS" });
            }
            field_separator = line.get(3).copied().unwrap_or(b'|');
            batch.batch_headers.push(line);
            batch.wrapped = true;
            in_batch = true;
            batch_start = batch.messages.len();
        } else if is(b"BTS") {
            finish(&mut batch, payload, current.take());
            let found = batch.messages.len() - batch_start;
            if let Some(declared) = count(line, field_separator) {
                if declared != found {
                    return Err(BatchError::CountMismatch { declared, found });
                }
            }
            batch.wrapped = true;
            in_batch = false;
            batches_closed += 1;
            batch_start = batch.messages.len();
        } else if is(b"FTS") {
            finish(&mut batch, payload, current.take());
            batch.wrapped = true;
            file_closed = true;
        } else if let Some((_, message_end)) = current.as_mut() {
            *message_end = end;
        } else {
            return Err(BatchError::OutsideMessage {
                segment: segment_name(line),
            });
        }
    }
    finish(&mut batch, payload, current);
    Ok(batch)
}

/// A segment's first three bytes as the error repeats them: printable
/// ASCII, anything else as `?` (the sender may have sent anything).
fn segment_name(line: &[u8]) -> String {
    (line.iter().take(3))
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn finish<'a>(batch: &mut Batch<'a>, payload: &'a [u8], message: Option<(usize, usize)>) {
    if let Some((start, end)) = message {
        batch.messages.push(&payload[start..end]);
    }
}

/// The segments of a payload, not blank, with their offsets; CR, LF and CRLF
/// all end a segment.
fn lines(payload: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut offset = 0;
    payload
        .split(|&b| b == b'\r' || b == b'\n')
        .map(move |line| {
            let start = offset;
            offset += line.len() + 1;
            (start, line)
        })
        .filter(|(_, line)| !blank(line))
}

/// BTS-1, the batch message count, when given.
fn count(bts: &[u8], field_separator: u8) -> Option<usize> {
    let value = bts.get(4..)?.split(|&b| b == field_separator).next()?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(batch: &Batch<'a>) -> Vec<&'a str> {
        batch
            .messages
            .iter()
            .map(|m| std::str::from_utf8(m).unwrap())
            .collect()
    }

    #[test]
    fn a_plain_message_is_a_batch_of_one() {
        let batch = split_batch(b"MSH|^~\\&|A\rPID|||1\r").unwrap();
        assert_eq!(texts(&batch), ["MSH|^~\\&|A\rPID|||1"]);
        assert!(!batch.is_batch());
    }

    #[test]
    fn lines_of_only_whitespace_are_blank() {
        let batch = split_batch(b" \t\rMSH|^~\\&|A\r  \rPID|||1\r \r").unwrap();
        assert_eq!(texts(&batch), ["MSH|^~\\&|A\r  \rPID|||1"]);
    }

    #[test]
    fn a_byte_order_mark_before_the_first_segment_is_skipped_and_noted() {
        let listener = ReadOptions {
            default_charset: Charset::Latin1,
        };
        for payload in [
            &b"\xEF\xBB\xBFMSH|^~\\&|A\rPID|||1\r"[..],
            b"\xEF\xBB\xBF\r\nMSH|^~\\&|A\rPID|||1\r",
            b"\xEF\xBB\xBFFHS|^~\\&\rMSH|^~\\&|A\rPID|||1\rFTS|1\r",
        ] {
            let batch = split_batch(payload).unwrap();
            assert_eq!(batch.messages.len(), 1, "{payload:?}");
            assert!(texts(&batch)[0].ends_with("MSH|^~\\&|A\rPID|||1"));
            assert!(batch.utf8_bom);
            assert_eq!(batch.read_options(&listener).default_charset, Charset::Utf8);
        }
        let plain = split_batch(b"MSH|^~\\&|A\rPID|||1\r").unwrap();
        assert!(!plain.utf8_bom);
        assert_eq!(plain.read_options(&listener), listener);
        // Only at the start: elsewhere the mark is part of its line.
        let later = split_batch(b"MSH|^~\\&|A\r\xEF\xBB\xBFBTS|1\r").unwrap();
        assert!(!later.wrapped && !later.utf8_bom);
        assert_eq!(later.messages, [&b"MSH|^~\\&|A\r\xEF\xBB\xBFBTS|1"[..]]);
    }

    #[test]
    fn refuses_what_cannot_be_split_without_guessing() {
        for (payload, error) in [
            (
                &b"BHS|^~\\&\rEVN|A04\rMSH|^~\\&\rBTS|1"[..],
                BatchError::OutsideMessage {
                    segment: "EVN".into(),
                },
            ),
            (
                b"BHS|^~\\&\rMSH|^~\\&\rEVN|A04\rBHS|^~\\&\rPID|1\rBTS|1",
                BatchError::Misplaced { segment: "BHS" },
            ),
            (
                b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&\rFHS|^~\\&\rBTS|1\rFTS|1",
                BatchError::Misplaced { segment: "FHS" },
            ),
            (
                b"BHS|^~\\&\rMSH|^~\\&\rBTS|2",
                BatchError::CountMismatch {
                    declared: 2,
                    found: 1,
                },
            ),
            (
                b"MSH|^~\\&\rFTS|1\rMSH|^~\\&",
                BatchError::Misplaced { segment: "FTS" },
            ),
        ] {
            assert_eq!(split_batch(payload), Err(error));
        }
    }
}
