//! The network side: accepting connections under a cap, TLS, timeouts, and serving the router
//! through hyper (HTTP/1.1).
//!
//! - **Connection cap** (`max_connections`, lowered to fit the descriptor limit): at the cap, the
//!   connection that has been idle longest (no request in progress) is closed to make room; when
//!   none is idle, the new connection is closed. Idle connections cannot lock others out.
//! - **Header read timeout**: once the first byte of a request (or of a TLS handshake) arrives,
//!   its headers must be complete within `header_read_timeout_s`.
//! - **Idle timeout**: a connection with no request in progress is closed after
//!   `idle_timeout_s`.
//! - **Request timeout**: a request, body included, is answered within `request_timeout_s`
//!   (408 otherwise), and a response the client stops reading for that long is abandoned.
//!
//! A reaper task checks every connection four times a second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::App;

/// The client's address, put in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What the reaper knows of one connection.
struct Conn {
    id: u64,
    /// Requests in progress (their responses not yet fully sent).
    busy: AtomicU32,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte after that arrived (0: none yet).
    head_started: AtomicU64,
    /// Since when a write has been waiting for the client (0: not waiting).
    write_blocked: AtomicU64,
    closing: AtomicBool,
    close: tokio::sync::Notify,
}

impl Conn {
    fn close(&self) {
        if !self.closing.swap(true, Relaxed) {
            self.close.notify_one();
        }
    }
}

#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Registry {
    fn add(&self) -> Arc<Conn> {
        let c = Arc::new(Conn {
            id: self.next.fetch_add(1, Relaxed),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(mono_ms()),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            close: tokio::sync::Notify::new(),
        });
        self.conns
            .lock()
            .expect("registry poisoned")
            .insert(c.id, c.clone());
        c
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("registry poisoned").remove(&id);
    }

    fn len(&self) -> usize {
        self.conns.lock().expect("registry poisoned").len()
    }

    fn snapshot(&self) -> Vec<Arc<Conn>> {
        self.conns
            .lock()
            .expect("registry poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Room for one more under `cap`: true when there is, after closing the connection idle
    /// longest if needed; false when every connection is busy.
    fn make_room(&self, cap: usize) -> bool {
        let m = self.conns.lock().expect("registry poisoned");
        let open = m.values().filter(|c| !c.closing.load(Relaxed)).count();
        if open < cap {
            return true;
        }
        let victim = m
            .values()
            .filter(|c| !c.closing.load(Relaxed) && c.busy.load(Relaxed) == 0)
            .min_by_key(|c| c.idle_since.load(Relaxed));
        match victim {
            Some(v) => {
                v.close();
                true
            }
            None => false,
        }
    }
}

/// A stream that tells its connection's record when bytes arrive and when writes stall.
struct Io<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let c = &self.conn;
            if c.busy.load(Relaxed) == 0 && c.head_started.load(Relaxed) == 0 {
                c.head_started.store(mono_ms(), Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> Io<T> {
    fn track<R>(&self, r: &Poll<R>) {
        match r {
            Poll::Pending => {
                let _ = self
                    .conn
                    .write_blocked
                    .compare_exchange(0, mono_ms(), Relaxed, Relaxed);
            }
            Poll::Ready(_) => self.conn.write_blocked.store(0, Relaxed),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks its connection idle again when the response it belongs to is done (or dropped).
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(mono_ms(), Relaxed);
            self.0.head_started.store(0, Relaxed);
        }
    }
}

/// A response body that holds something (a busy mark, a memory budget permit) until it has
/// been sent or dropped.
pub struct Guarded {
    inner: axum::body::Body,
    _guard: Box<dyn Send + Sync>,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with `guard` held until its body is sent or dropped.
pub fn guarded(
    resp: axum::response::Response,
    guard: impl Send + Sync + 'static,
) -> axum::response::Response {
    resp.map(|b| {
        axum::body::Body::new(Guarded {
            inner: b,
            _guard: Box::new(guard),
        })
    })
}

/// The descriptors this process may open (its soft limit).
fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Raise the soft descriptor limit to the hard one (what a connection cap needs), returning
/// the limit in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
    }
    fd_limit()
}

async fn reap(reg: Arc<Registry>, header_ms: u64, idle_ms: u64, request_ms: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = mono_ms();
        for c in reg.snapshot() {
            if c.closing.load(Relaxed) {
                continue;
            }
            let wb = c.write_blocked.load(Relaxed);
            if wb != 0 && now.saturating_sub(wb) > request_ms {
                c.close();
                continue;
            }
            if c.busy.load(Relaxed) > 0 {
                continue;
            }
            let hs = c.head_started.load(Relaxed);
            if hs != 0 {
                if now.saturating_sub(hs) > header_ms {
                    c.close();
                }
            } else if now.saturating_sub(c.idle_since.load(Relaxed)) > idle_ms {
                c.close();
            }
        }
    }
}

async fn http<I>(
    io: I,
    conn: Arc<Conn>,
    peer: std::net::SocketAddr,
    router: axum::Router,
    request_timeout: Duration,
    backstop: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        conn.busy.fetch_add(1, Relaxed);
        conn.head_started.store(0, Relaxed);
        let busy = Busy(conn.clone());
        req.extensions_mut().insert(Peer(peer));
        async move {
            use tower::ServiceExt;
            let call = router.oneshot(req.map(axum::body::Body::new));
            let resp = match tokio::time::timeout(request_timeout, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => crate::err(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "the request took too long (body sent too slowly?)",
                )
                .into_response(),
            };
            Ok::<_, Infallible>(guarded(resp, busy))
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(backstop)
        .keep_alive(true);
    let c = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(c);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = c.as_mut() => return,
        _ = stopping => {}
    }
    c.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(request_timeout, c.as_mut()).await;
}

/// Serve `app` on `listener` (plain HTTP, or HTTPS with `tls`) until `shutdown` completes;
/// then finish the requests in progress (at most the request timeout) and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let l = app.config.limits.clone();
    let fds = fd_limit();
    let cap = (l.max_connections).min(fds.saturating_sub(128).max(16)) as usize;
    if (cap as u64) < l.max_connections {
        tracing::warn!(
            "at most {cap} connections (the open-files limit is {fds}; max_connections is {})",
            l.max_connections
        );
    }
    let (header, idle, request) = (
        Duration::from_secs(l.header_read_timeout_s),
        Duration::from_secs(l.idle_timeout_s),
        Duration::from_secs(l.request_timeout_s),
    );
    let router = crate::router(app.clone());
    let reg = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(reap(
        reg.clone(),
        header.as_millis() as u64,
        idle.as_millis() as u64,
        request.as_millis() as u64,
    ));
    let chores = tokio::spawn(crate::chores(app.clone()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !reg.make_room(cap) {
            app.count_mem("refused_connections");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = reg.add();
        let (reg2, router, tls, stop) = (reg.clone(), router.clone(), tls.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let io = Io {
                inner: stream,
                conn: conn.clone(),
            };
            let backstop = idle + header;
            let work = async {
                match tls {
                    None => http(io, conn.clone(), peer, router, request, backstop, stop).await,
                    Some(acceptor) => match tokio::time::timeout(header, acceptor.accept(io)).await
                    {
                        Ok(Ok(s)) => {
                            http(s, conn.clone(), peer, router, request, backstop, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    },
                }
            };
            tokio::select! {
                _ = work => {}
                _ = conn.close.notified() => tracing::debug!("closed the connection of {peer}"),
            }
            reg2.remove(conn.id);
        });
    }
    let _ = stop_tx.send(true);
    reaper.abort();
    chores.abort();
    let deadline = Instant::now() + request;
    while reg.len() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = app.clone();
    let _ = tokio::task::spawn_blocking(move || a.flush_counters()).await;
    // The store may hold a synchronous PostgreSQL client, which must not be dropped on an async
    // thread: let it go on a blocking one.
    let _ = tokio::task::spawn_blocking(move || drop(app)).await;
    Ok(())
}
