//! One MLLP connection: frames read front to back, each answered before
//! the next is looked at, so the sender's order is the order messages are
//! stored in (and a patient's sequence). Idle connections stay open (TCP
//! keepalive finds dead peers); a frame left incomplete longer than
//! `MLLP_FRAME_TIMEOUT_MS` is dropped with the connection, never stored.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::answer::{Answerer, Unconfirmed};
use crate::hl7::mllp::{CARRIAGE_RETURN, END_BLOCK, START_BLOCK};
use crate::hl7::{Frame, MllpCodec, MllpError};

const READ_CHUNK: usize = 64 * 1024;

/// Why a connection ended (for the log).
#[derive(Debug, thiserror::Error)]
pub(super) enum Ended {
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("shutting down")]
    Shutdown,
    #[error("a frame was left incomplete for {0:?}; dropped unstored")]
    FrameTimeout(Duration),
    #[error(transparent)]
    Framing(#[from] MllpError),
    #[error("cannot send an answer: {0}")]
    Write(std::io::Error),
    #[error("{0}; no ACK sent, the sender resends")]
    Unconfirmed(#[from] Unconfirmed),
}

pub(super) async fn run<IO>(
    mut io: IO,
    peer: SocketAddr,
    answerer: &Answerer,
    frame_timeout: Duration,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let ended = serve(&mut io, answerer, frame_timeout, shutdown).await;
    let listener = &answerer.settings.name;
    match &ended {
        Ended::PeerClosed | Ended::Shutdown => {
            debug!(%peer, %listener, reason = %ended, "MLLP connection closed")
        }
        Ended::Unconfirmed(_) => {
            answerer.labels.store_unconfirmed();
            warn!(%peer, %listener, reason = %ended, "MLLP connection closed");
        }
        _ => warn!(%peer, %listener, reason = %ended, "MLLP connection closed"),
    }
    let _ = io.shutdown().await;
}

async fn serve<IO>(
    io: &mut IO,
    answerer: &Answerer,
    frame_timeout: Duration,
    shutdown: CancellationToken,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut codec = MllpCodec::new(answerer.max_message_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut discarded = 0;
    let mut frame_started: Option<Instant> = None;
    let mut at_eof = false;
    loop {
        // Every frame the buffer holds, in order, each answered first.
        let mut completed = false;
        loop {
            let frame = if at_eof {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(MllpError::UnterminatedFrame { bytes }) => {
                    answerer.labels.frame("unterminated");
                    debug!(bytes, "the peer closed inside a frame; dropped unstored");
                    return Ended::PeerClosed;
                }
                Err(error) => return error.into(),
            };
            completed = true;
            if let Err(ended) = answer(io, answerer, frame).await {
                return ended;
            }
        }
        answerer
            .labels
            .discarded(codec.discarded_bytes() - discarded);
        discarded = codec.discarded_bytes();
        if at_eof {
            return Ended::PeerClosed;
        }
        // A frame is timed from the read that began it: one still open
        // after a frame ended began after that end (a sender streaming
        // frames back to back never sits on a boundary between reads).
        frame_started = match (codec.in_frame(), frame_started) {
            (false, _) => None,
            (true, started) if started.is_none() || completed => Some(Instant::now()),
            (true, started) => started,
        };
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            // Idle (between frames) at shutdown: close. Inside a frame, the
            // frame is read to its end or its timeout.
            () = shutdown.cancelled(), if frame_started.is_none() => return Ended::Shutdown,
            read = read_within(io, &mut buf, frame_started.map(|at| at + frame_timeout)) => read,
        };
        match read {
            None => {
                answerer.labels.frame("unterminated");
                return Ended::FrameTimeout(frame_timeout);
            }
            Some(Ok(0)) => at_eof = true,
            Some(Ok(_)) => {}
            Some(Err(error)) => return MllpError::Io(error).into(),
        }
    }
}

/// One read, by `deadline` if there is one (`None`: it passed).
async fn read_within<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> Option<std::io::Result<usize>> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, io.read_buf(buf))
            .await
            .ok(),
        None => Some(io.read_buf(buf).await),
    }
}

async fn answer<IO>(io: &mut IO, answerer: &Answerer, frame: Frame) -> Result<(), Ended>
where
    IO: AsyncWrite + Unpin,
{
    let reply = match frame {
        Frame::Message(payload) => {
            answerer.labels.frame("message");
            answerer.payload(&payload).await?
        }
        Frame::Oversized {
            bytes,
            first_segment,
        } => {
            answerer.labels.frame("oversized");
            debug!(bytes, "oversized frame refused");
            Some(answerer.oversized(first_segment.as_deref()))
        }
        Frame::Interrupted { bytes } => {
            answerer.labels.frame("interrupted");
            debug!(
                bytes,
                "a frame interrupted by a new start block; dropped unstored"
            );
            None
        }
    };
    let Some(reply) = reply.filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let mut framed = Vec::with_capacity(reply.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(&reply);
    framed.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    // A sender that never reads its ACKs must not hold the task forever.
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        io.write_all(&framed).await?;
        io.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Ended::Write(error)),
        Err(_) => Err(Ended::Write(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer does not read its answers",
        ))),
    }
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
