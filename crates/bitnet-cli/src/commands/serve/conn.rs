//! The connection layer under the API: accepting TCP connections and serving HTTP/1.1 on
//! them with hyper, with the limits a server on a network needs, which `axum::serve` does not
//! set (it runs hyper without a timer, so no timeout ever fires):
//!
//! - a request's headers must arrive within `timeout` (and an idle keep-alive connection is
//!   closed after `timeout`: hyper's header timer runs while it waits for the next request);
//! - a write that makes no progress for `timeout` (a client that stopped reading) ends the
//!   connection, and with it its request;
//! - at most `max_connections` connections at once; beyond that a connection is answered 503
//!   and closed, so that idle or slow clients cannot use up the process's file descriptors;
//! - headers are limited to [`MAX_HEADER_BYTES`] (431 beyond), and the kernel's send buffer
//!   to [`SEND_BUFFER_BYTES`], so that what a client that stops reading pins stays small;
//! - an error accepting a connection (out of file descriptors, say) pauses accepting briefly
//!   instead of ending the server.
//!
//! The request body's own deadline is the `read_body` middleware in `ops.rs`.
//!
//! A client that closes its socket, or only its sending side, while its request runs is taken
//! as gone (hyper's default): the response is dropped, which cancels the generation.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

/// Most bytes of request line and headers (hyper answers 431 beyond). Browsers and API
/// clients send a few hundred; nginx's default limit is 8 KiB per line.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Most bytes hyper buffers per connection, reading or writing.
const MAX_BUF_BYTES: usize = 64 << 10;

/// The kernel's send buffer per connection (Linux doubles it). Left to autotuning it grows to
/// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default), all of which a client that stops reading
/// pins; a token stream needs a small fraction of this.
const SEND_BUFFER_BYTES: usize = 128 << 10;

/// How long to stop accepting after an accept error such as EMFILE, so that a full
/// descriptor table does not turn the accept loop into a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What limits the connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Headers, a stalled write and an idle keep-alive connection.
    pub timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish its request in flight (hyper's graceful shutdown) and returns when all
/// have closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection task holds a receiver of `stop` (to hear of the shutdown) and of
    // `alive` (whose sender's `closed()` is then how the loop waits for the last one).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(&e, &mut last_error_logged).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(&stream, limits.max_connections);
            continue;
        };
        // Streamed tokens go out as they come instead of waiting for Nagle's timer.
        let _ = stream.set_nodelay(true);
        set_send_buffer(&stream, SEND_BUFFER_BYTES);
        let io = TokioIo::new(WriteDeadline::new(stream, limits.timeout));
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let alive = alive_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.timeout)
                .max_buf_size(MAX_BUF_BYTES)
                .max_header_size(MAX_HEADER_BYTES)
                // Header names go out as `Content-Type`, not `content-type`, as llama-server
                // and most servers write them: names are case-insensitive, but some clients
                // (llama.cpp's own server tests among them) look them up case-sensitively.
                .title_case_headers(true);
            let mut conn = pin!(builder.serve_connection(io, service));
            tokio::select! {
                // Errors here are the client's (reset, timed out, malformed): the connection
                // ends and nothing else does.
                _ = conn.as_mut() => {}
                // (An async block, so that the watch's read guard is not held across the
                // awaits below.)
                () = async { let _ = stop.wait_for(|&s| s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_rx);
    alive_tx.closed().await;
}

/// Too many connections: a 503 written without waiting (it fits any socket buffer), then
/// the connection is closed.
fn refuse(stream: &TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":{{\"message\":\"the server has {max} connections open (bitnet serve \
         --max-connections); try again shortly\",\"type\":\"server_busy\",\"param\":null,\
         \"code\":\"server_busy\"}}}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// A failed accept: a connection that died in the backlog is skipped; anything else (out of
/// file descriptors or memory) pauses accepting briefly, logged at most once a second.
async fn accept_error(e: &io::Error, last_logged: &mut Option<tokio::time::Instant>) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    let now = tokio::time::Instant::now();
    if last_logged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        *last_logged = Some(now);
        super::log(&format!(
            "cannot accept a connection ({e}); pausing {} ms",
            ACCEPT_PAUSE.as_millis()
        ));
    }
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// A TCP stream whose writes fail with `TimedOut` once one has made no progress for
/// `timeout`: hyper waits on a blocked write forever, so a client that never reads would
/// hold its connection (and its response's buffers) for good.
struct WriteDeadline {
    inner: TcpStream,
    timeout: Duration,
    /// Started when a write first had to wait; cleared when one goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After an operation on `inner`: progress clears the timer, waiting starts or checks it.
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the whole timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, r)
    }
}

/// Sets SO_SNDBUF (best effort: the kernel's default stays where it refuses).
#[cfg(unix)]
fn set_send_buffer(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int, on a descriptor
    // the stream owns for the duration of the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(unix))]
fn set_send_buffer(_: &TcpStream, _: usize) {}

/// Raises the soft limit on open files to the hard one (a server holds a descriptor per
/// connection; the usual soft limit of 1024 is the first limit a busy server meets) and
/// returns the limit now in force, if it could be read.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given. It fails (and the soft limit
        // stays) where the hard limit is unlimited but the kernel caps descriptors lower.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<usize> {
    None
}
