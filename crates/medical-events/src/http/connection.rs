//! `Connection: close` on every HTTP/1 response after which the connection
//! is closed.
//!
//! An answer given before the request body was read (401, 413, 415, 429,
//! a shed or timed-out 503) leaves the rest of the body on the wire, and a
//! connection with unread bytes on it cannot carry another request. hyper
//! then tries one read of what has arrived and, if the body is still not
//! over, closes the connection after the response; but it decides that
//! after the response head is written, so the head does not say so, and a
//! client that reuses the connection (as keep-alive allows) writes its next
//! request into a closed socket.
//!
//! This layer, outermost on both services, watches the request body. If
//! the body was not read to its end when the response is ready, it reads
//! and discards a small remainder (at most [`DISCARD_BYTES`], within
//! [`DISCARD_TIME`]), as Go's server does, so that a refused small request
//! keeps its connection; otherwise the response says `Connection: close`,
//! and hyper, seeing it, closes the connection after this response.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// The largest unread remainder discarded to keep a connection open.
pub const DISCARD_BYTES: u64 = 64 * 1024;
/// How long discarding that remainder may take.
pub const DISCARD_TIME: Duration = Duration::from_millis(500);

/// Middleware: see the module documentation.
pub async fn close_unless_body_read(request: Request, next: Next) -> Response {
    // HTTP/2 has no Connection header: its streams end on their own.
    if request.version() >= Version::HTTP_2 {
        return next.run(request).await;
    }
    // With `Expect: 100-continue` an unread body was never sent; reading it
    // now would ask the client to send it.
    let expects_continue = request.headers().contains_key(header::EXPECT);
    let (parts, body) = request.into_parts();
    let watched = Watched::new(body);
    let mut response = next
        .run(Request::from_parts(parts, Body::new(watched.clone())))
        .await;
    let reusable = match watched.release() {
        None => true,
        Some(_) if expects_continue => false,
        Some(rest) => discard(rest).await,
    };
    if !reusable {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end if it is small and arrives promptly; whether it did.
async fn discard(mut body: Body) -> bool {
    if body.size_hint().lower() > DISCARD_BYTES {
        return false;
    }
    let read_to_end = async {
        let mut read = 0u64;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > DISCARD_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_TIME, read_to_end)
        .await
        .unwrap_or(false)
}

enum State {
    Reading(Body),
    /// Read to its end: the connection can take the next request.
    Finished,
    /// Taken back by the middleware once the response was ready.
    Released,
}

/// The request body as the handler sees it, shared with the middleware,
/// which learns from it whether the body was read to its end.
#[derive(Clone)]
struct Watched(Arc<Mutex<State>>);

impl Watched {
    fn new(body: Body) -> Self {
        let state = if body.is_end_stream() {
            State::Finished
        } else {
            State::Reading(body)
        };
        Self(Arc::new(Mutex::new(state)))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while polling leaves nothing half-done in `State`.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The unread rest of the body, or `None` if it was read to its end.
    fn release(&self) -> Option<Body> {
        match std::mem::replace(&mut *self.state(), State::Released) {
            State::Reading(body) => Some(body),
            State::Finished | State::Released => None,
        }
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut state = self.state();
        let State::Reading(body) = &mut *state else {
            return Poll::Ready(match *state {
                State::Released => Some(Err(axum::Error::new("the request is already answered"))),
                _ => None,
            });
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
            _ => false,
        };
        if finished {
            *state = State::Finished;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &*self.state() {
            State::Reading(body) => body.is_end_stream(),
            State::Finished | State::Released => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*self.state() {
            State::Reading(body) => body.size_hint(),
            State::Finished | State::Released => SizeHint::with_exact(0),
        }
    }
}
