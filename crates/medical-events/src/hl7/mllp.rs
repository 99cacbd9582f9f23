//! MLLP framing as a tokio-util codec: a frame is `0x0B` payload `0x1C 0x0D`.
//!
//! The decoder scans front to back, so several frames in one read come out
//! one by one, in order. Bytes before a start block are noise: dropped and
//! counted (`discarded_bytes`, for a metric). A payload longer than
//! `max_message_bytes` is not buffered: its first bytes are kept for the
//! error ACK, the rest counted and dropped until its end block, and an
//! `Oversized` item reported. A connection that ends inside a frame is an
//! error (`UnterminatedFrame`); a partial frame is never a message.
//! Segment ends inside the payload are left alone (see `message`).

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::message::trim_start;

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: u8 = 0x1C;
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// The default `max_message_bytes`: 8 MiB (messages with embedded
/// documents are large; MongoDB stops at 16 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// How much of an oversized frame is kept to answer it: its first segment
/// (the MSH), if it ends within this many bytes.
pub const OVERSIZED_HEAD_BYTES: usize = 4096;

/// One item of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete payload, without its block bytes.
    Message(Bytes),
    /// A payload longer than the maximum, dropped. `first_segment` is its
    /// first segment (MSH) when that ended within `OVERSIZED_HEAD_BYTES`,
    /// enough to address an error ACK.
    Oversized {
        bytes: usize,
        first_segment: Option<Bytes>,
    },
    /// A start block arrived inside a frame: the sender gave up on that
    /// frame and began another. Its `bytes` were dropped; nothing to answer.
    Interrupted { bytes: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the connection ended inside a frame, {bytes} bytes after its start block")]
    UnterminatedFrame { bytes: usize },
    #[error("a payload must not contain the MLLP block bytes 0x0B or 0x1C")]
    BlockByteInPayload,
}

#[derive(Debug, Clone)]
enum State {
    /// Looking for a start block.
    Seeking,
    /// The buffer holds the payload so far; `scanned` bytes of it hold no
    /// block byte.
    Reading { scanned: usize },
    /// Dropping an oversized payload until its end block.
    Skipping {
        bytes: usize,
        first_segment: Option<Bytes>,
    },
}

#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_message_bytes: usize,
    state: State,
    discarded: u64,
    /// A frame ended on the last byte read (its end block): a CR arriving
    /// next belongs to that end block, not to the noise.
    pending_cr: bool,
}

impl Default for MllpCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl MllpCodec {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            state: State::Seeking,
            discarded: 0,
            pending_cr: false,
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Whether a frame has begun and not ended (its start block was read):
    /// the reader times a frame from here.
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Seeking)
    }

    /// Noise bytes (outside any frame) dropped since the codec was made.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// A payload of `len` bytes ended at `buf[len]` (an end block).
    fn complete(&mut self, buf: &mut BytesMut, len: usize) -> Frame {
        let payload = buf.split_to(len);
        self.consume_end(buf);
        if len > self.max_message_bytes {
            Frame::Oversized {
                bytes: len,
                first_segment: first_segment(&payload),
            }
        } else {
            Frame::Message(payload.freeze())
        }
    }

    /// Drops the end block at `buf[0]` and the CR after it. A lone `0x1C`
    /// also ends the frame at once (some senders leave out the CR, and a
    /// serial sender waits for its ACK before sending more); a CR that
    /// arrives in the next read is still taken as its end.
    fn consume_end(&mut self, buf: &mut BytesMut) {
        match buf.get(1) {
            Some(&CARRIAGE_RETURN) => buf.advance(2),
            Some(_) => buf.advance(1),
            None => {
                buf.advance(1);
                self.pending_cr = true;
            }
        }
        self.state = State::Seeking;
    }
}

/// The head of a payload through its first line that is not blank: a
/// byte-order mark and blank lines before it stay, as `Header::read` skips
/// them (and takes the mark to mean UTF-8), so an oversized message is
/// answered as one under the limit would be.
fn first_segment(payload: &[u8]) -> Option<Bytes> {
    let head = &payload[..payload.len().min(OVERSIZED_HEAD_BYTES)];
    let rest = trim_start(head);
    let end = head.len() - rest.len() + rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
    Some(Bytes::copy_from_slice(&head[..end]))
}

fn block_byte(byte: &u8) -> bool {
    *byte == START_BLOCK || *byte == END_BLOCK
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = MllpError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        if self.pending_cr && !buf.is_empty() {
            self.pending_cr = false;
            if buf[0] == CARRIAGE_RETURN {
                buf.advance(1);
            }
        }
        loop {
            match &mut self.state {
                State::Seeking => match buf.iter().position(|&b| b == START_BLOCK) {
                    None => {
                        self.discarded += buf.len() as u64;
                        buf.clear();
                        return Ok(None);
                    }
                    Some(start) => {
                        self.discarded += start as u64;
                        buf.advance(start + 1);
                        self.state = State::Reading { scanned: 0 };
                    }
                },
                State::Reading { scanned } => {
                    let found = buf[*scanned..].iter().position(block_byte);
                    match found.map(|at| at + *scanned) {
                        Some(at) if buf[at] == START_BLOCK => {
                            buf.advance(at + 1);
                            self.state = State::Reading { scanned: 0 };
                            return Ok(Some(Frame::Interrupted { bytes: at }));
                        }
                        Some(at) => return Ok(Some(self.complete(buf, at))),
                        None if buf.len() > self.max_message_bytes => {
                            self.state = State::Skipping {
                                bytes: buf.len(),
                                first_segment: first_segment(buf),
                            };
                            buf.clear();
                        }
                        None => {
                            *scanned = buf.len();
                            return Ok(None);
                        }
                    }
                }
                State::Skipping {
                    bytes,
                    first_segment,
                } => match buf.iter().position(block_byte) {
                    None => {
                        *bytes += buf.len();
                        buf.clear();
                        return Ok(None);
                    }
                    Some(at) if buf[at] == START_BLOCK => {
                        let bytes = *bytes + at;
                        buf.advance(at + 1);
                        self.state = State::Reading { scanned: 0 };
                        return Ok(Some(Frame::Interrupted { bytes }));
                    }
                    Some(at) => {
                        let frame = Frame::Oversized {
                            bytes: *bytes + at,
                            first_segment: first_segment.take(),
                        };
                        buf.advance(at);
                        self.consume_end(buf);
                        return Ok(Some(frame));
                    }
                },
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        // What is left is a frame without its end (an end block would
        // have ended it in `decode`).
        let state = std::mem::replace(&mut self.state, State::Seeking);
        match state {
            State::Seeking => Ok(None),
            State::Reading { .. } => {
                let bytes = buf.len();
                buf.clear();
                Err(MllpError::UnterminatedFrame { bytes })
            }
            State::Skipping { bytes, .. } => {
                let bytes = bytes + buf.len();
                buf.clear();
                Err(MllpError::UnterminatedFrame { bytes })
            }
        }
    }
}

/// Frames a payload (an ACK, or a message the delivery sends).
impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, payload: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let payload = payload.as_ref();
        if payload.iter().any(block_byte) {
            return Err(MllpError::BlockByteInPayload);
        }
        dst.reserve(payload.len() + 3);
        dst.put_u8(START_BLOCK);
        dst.put_slice(payload);
        dst.put_slice(&[END_BLOCK, CARRIAGE_RETURN]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_util::codec::FramedRead;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        MllpCodec::default().encode(payload, &mut buf).unwrap();
        buf.to_vec()
    }

    fn message(text: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Feeds `chunks` one after the other, as reads would arrive, then EOF.
    fn decode_chunks(codec: &mut MllpCodec, chunks: &[&[u8]]) -> Result<Vec<Frame>, MllpError> {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf)? {
                frames.push(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn the_encoder_wraps_a_payload_and_refuses_block_bytes() {
        assert_eq!(framed(b"MSH|^~\\&\r"), b"\x0bMSH|^~\\&\r\x1c\x0d");
        let mut buf = BytesMut::new();
        for bad in [&b"a\x1c\rb"[..], b"\x0b"] {
            assert!(matches!(
                MllpCodec::default().encode(bad, &mut buf),
                Err(MllpError::BlockByteInPayload)
            ));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn pipelined_frames_come_out_one_by_one_in_order() {
        let mut stream = Vec::new();
        for n in 1..=5 {
            stream.extend(framed(format!("MSH|^~\\&|{n}\r").as_bytes()));
        }
        let mut codec = MllpCodec::default();
        let frames = decode_chunks(&mut codec, &[&stream]).unwrap();
        let expected: Vec<Frame> = (1..=5)
            .map(|n| message(&format!("MSH|^~\\&|{n}\r")))
            .collect();
        assert_eq!(frames, expected);
        assert_eq!(codec.discarded_bytes(), 0);
    }

    #[test]
    fn noise_before_a_start_block_is_dropped_and_counted() {
        let mut stream = b"GET / HTTP/1.1\r\n".to_vec();
        stream.extend(framed(b"MSH|1"));
        stream.extend(b"\r\n\0");
        stream.extend(framed(b"MSH|2"));
        let mut codec = MllpCodec::default();
        let frames = decode_chunks(&mut codec, &[&stream]).unwrap();
        assert_eq!(frames, [message("MSH|1"), message("MSH|2")]);
        assert_eq!(codec.discarded_bytes(), 16 + 3);
    }

    #[test]
    fn a_frame_split_at_every_byte_boundary_decodes_the_same() {
        let mut stream = b"xx".to_vec();
        stream.extend(framed(b"MSH|^~\\&|A\rPID|||1\r"));
        stream.extend(framed(b"MSH|^~\\&|B\r"));
        let expected = [message("MSH|^~\\&|A\rPID|||1\r"), message("MSH|^~\\&|B\r")];
        for at in 0..=stream.len() {
            let mut codec = MllpCodec::default();
            let (first, second) = stream.split_at(at);
            let frames = decode_chunks(&mut codec, &[first, second]).unwrap();
            assert_eq!(frames, expected, "split at {at}");
            assert_eq!(codec.discarded_bytes(), 2, "split at {at}");
        }
        // And one byte per read.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let mut codec = MllpCodec::default();
        assert_eq!(decode_chunks(&mut codec, &bytes).unwrap(), expected);
        assert_eq!(codec.discarded_bytes(), 2);
    }

    #[test]
    fn an_oversized_frame_is_reported_and_skipped_to_its_end() {
        let big = format!("MSH|^~\\&|BIG|||||||C1\r{}\r", "OBX|".repeat(20));
        let mut stream = framed(big.as_bytes());
        stream.extend(framed(b"MSH|ok"));
        let expected = [
            Frame::Oversized {
                bytes: big.len(),
                first_segment: Some(Bytes::from_static(b"MSH|^~\\&|BIG|||||||C1")),
            },
            message("MSH|ok"),
        ];
        // In one read, and in reads smaller than the limit (skipped, not buffered).
        let mut codec = MllpCodec::new(40);
        assert_eq!(decode_chunks(&mut codec, &[&stream]).unwrap(), expected);
        for size in [1, 7, 39] {
            let mut codec = MllpCodec::new(40);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for chunk in stream.chunks(size) {
                buf.extend_from_slice(chunk);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
                assert!(buf.len() <= 40 + size, "buffered {} bytes", buf.len());
            }
            assert_eq!(frames, expected, "reads of {size}");
        }
        // A payload of exactly the limit is a message.
        let mut codec = MllpCodec::new(6);
        assert_eq!(
            decode_chunks(&mut codec, &[&framed(b"MSH|ok")]).unwrap(),
            [message("MSH|ok")]
        );
    }

    #[test]
    fn an_oversized_frames_head_reaches_past_a_mark_and_blank_lines_to_msh() {
        let big = format!(
            "\u{FEFF}\r\n \rMSH|^~\\&|BIG|||||||C1\r{}\r",
            "OBX|".repeat(20)
        );
        let mut codec = MllpCodec::new(40);
        let frames = decode_chunks(&mut codec, &[&framed(big.as_bytes())]).unwrap();
        let [
            Frame::Oversized {
                first_segment: Some(head),
                ..
            },
        ] = &frames[..]
        else {
            panic!("{frames:?}");
        };
        assert_eq!(
            &head[..],
            "\u{FEFF}\r\n \rMSH|^~\\&|BIG|||||||C1".as_bytes()
        );
        let header = super::super::Header::read(head, &Default::default()).unwrap();
        assert_eq!(header.control_id(), "C1");
    }

    #[test]
    fn an_oversized_frame_without_a_short_first_segment_keeps_no_head() {
        let big = "X".repeat(OVERSIZED_HEAD_BYTES + 10);
        let mut codec = MllpCodec::new(100);
        let frames = decode_chunks(&mut codec, &[&framed(big.as_bytes())]).unwrap();
        assert_eq!(
            frames,
            [Frame::Oversized {
                bytes: big.len(),
                first_segment: None
            }]
        );
    }

    #[test]
    fn an_unterminated_frame_at_eof_is_an_error_not_a_message() {
        for (stream, max) in [
            (
                &b"\x0bMSH|^~\\&|A\rPID|||1\r"[..],
                DEFAULT_MAX_MESSAGE_BYTES,
            ),
            (b"\x0bMSH|^~\\&|A\rPID|||1\r\x0b", DEFAULT_MAX_MESSAGE_BYTES),
            (b"\x0bMSH|^~\\&|A\rPID|||1\r", 5),
        ] {
            let mut codec = MllpCodec::new(max);
            let mut frames = Vec::new();
            let result = (|| {
                let mut buf = BytesMut::from(stream);
                while let Some(frame) = codec.decode(&mut buf)? {
                    frames.push(frame);
                }
                codec.decode_eof(&mut buf)
            })();
            assert!(
                matches!(result, Err(MllpError::UnterminatedFrame { .. })),
                "{result:?}"
            );
            assert!(!frames.iter().any(|f| matches!(f, Frame::Message(_))));
        }
    }

    #[test]
    fn an_end_block_without_its_cr_still_ends_the_frame() {
        let mut codec = MllpCodec::default();
        let frames = decode_chunks(&mut codec, &[b"\x0bMSH|1\x1c\x0bMSH|2\x1c"]).unwrap();
        assert_eq!(frames, [message("MSH|1"), message("MSH|2")]);
        assert_eq!(codec.discarded_bytes(), 0);
    }

    #[test]
    fn an_end_block_without_its_cr_ends_the_frame_without_waiting_for_more() {
        // A serial sender that leaves out the CR sends nothing more until
        // it has its ACK: the frame must come out before EOF.
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&b"\x0bMSH|1\x1c"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(message("MSH|1")));
        assert!(!codec.in_frame());
        // The CR in the next read is its end block's, not noise.
        buf.extend_from_slice(b"\r\x0bMSH|2\x1c\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(message("MSH|2")));
        assert_eq!(codec.discarded_bytes(), 0);
        // The same for an oversized frame being skipped.
        let mut codec = MllpCodec::new(3);
        let mut buf = BytesMut::from(&b"\x0bMSH|too long\x1c"[..]);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Oversized { bytes: 12, .. })
        ));
        buf.extend_from_slice(b"\r");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.discarded_bytes(), 0);
    }

    #[test]
    fn a_start_block_inside_a_frame_interrupts_it() {
        let mut codec = MllpCodec::default();
        let frames = decode_chunks(&mut codec, &[b"\x0bMSH|cut\x0bMSH|2\x1c\r"]).unwrap();
        assert_eq!(frames, [Frame::Interrupted { bytes: 7 }, message("MSH|2")]);
    }

    #[tokio::test]
    async fn framed_read_yields_frames_then_the_eof_error() {
        let mut stream = framed(b"MSH|1");
        stream.extend(b"\x0bMSH|2 never ends");
        let mut reader = FramedRead::new(&stream[..], MllpCodec::default());
        assert_eq!(reader.next().await.unwrap().unwrap(), message("MSH|1"));
        assert!(matches!(
            reader.next().await,
            Some(Err(MllpError::UnterminatedFrame { bytes: 16 }))
        ));
        assert!(reader.next().await.is_none());
    }
}
