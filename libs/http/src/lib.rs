//! rollcall-http: the one way Rollcall serves HTTP. SCIM, audit and access listeners all go
//! through [`serve`], so each has the same defences against slow and stalled clients and the
//! same request span and error log ([`rollcall_telemetry::http::layer`]):
//!
//! - **header timeout**: a request's complete head must arrive within this time of the
//!   connection's start, or of the end of the previous response on a keep-alive connection;
//!   otherwise the connection is closed (hyper answers `408` when part of a head arrived).
//!   It therefore also bounds how long a keep-alive connection waits idle for its next request.
//! - **body timeout**: a request's body must arrive whole within this time of its head; a
//!   handler reading it after that gets an error ([`is_body_timeout`]) and answers it in its own
//!   protocol.
//! - **idle timeout**: a connection on which no byte moves in either direction for this long,
//!   while no handler is working on a response, is closed: a client that stopped reading a
//!   response (an export) gives back everything the response held.
//!
//! Shutdown is graceful: the listener stops accepting, every connection finishes the request
//! it is serving, and [`serve`] returns once all are closed (each within its timeouts).
#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyDeadline, RequestBodyDeadlineLayer};
use tracing::{debug, warn};

/// How long clients may take; every Rollcall listener has all three.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpConfig {
    /// Time a client has to send a request's complete headers, counted from the connection's
    /// start or from the end of the previous response (so it also closes idle keep-alive
    /// connections). `10s`, `500ms`, `2m`; a bare number is seconds.
    #[arg(
        long = "http-header-timeout",
        env = "ROLLCALL_HTTP_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = duration
    )]
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body, counted from the end of its headers.
    #[arg(
        long = "http-body-timeout",
        env = "ROLLCALL_HTTP_BODY_TIMEOUT",
        default_value = "30s",
        value_parser = duration
    )]
    pub body_timeout: Duration,
    /// A connection on which no byte moves either way for this long, while no request on it is
    /// being worked on, is closed (a client that stopped reading a response, such as an export).
    #[arg(
        long = "http-idle-timeout",
        env = "ROLLCALL_HTTP_IDLE_TIMEOUT",
        default_value = "60s",
        value_parser = duration
    )]
    pub idle_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Parses `500ms`, `10s`, `2m` or a bare number of seconds; zero is refused.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        _ => {
            return Err(format!(
                "{text:?} is not a duration such as 500ms, 10s or 2m"
            ))
        }
    };
    if duration.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    Ok(duration)
}

/// A bound socket and the timeouts its connections get.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    config: HttpConfig,
}

impl Listener {
    /// `tcp`, served with `config`.
    pub fn new(tcp: TcpListener, config: HttpConfig) -> Self {
        Self { tcp, config }
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Its timeouts.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }
}

impl From<TcpListener> for Listener {
    /// `tcp` with the default timeouts.
    fn from(tcp: TcpListener) -> Self {
        Self::new(tcp, HttpConfig::default())
    }
}

/// The bearer token of a request (RFC 6750 §2.1: `Authorization: Bearer <token>`, the scheme
/// in any case), if it sends one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether a request body failed because it did not arrive within the body timeout (for the
/// handler that read it to answer `408` in its own protocol).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Serves `router` on `listener` until `shutdown` resolves, then shuts down gracefully.
/// `service` names it in the request span (`scim`, `audit`, `access`).
pub async fn serve(
    listener: Listener,
    service: &'static str,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let Listener { tcp, config } = listener;
    let app = ServiceBuilder::new()
        .layer(RequestBodyDeadlineLayer::new(config.body_timeout))
        .service(router.layer(rollcall_telemetry::http::layer(service)));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    // Every connection holds a receiver; the sender learns when the last one is gone.
    let (closing, connections) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors or similar: give the process a moment to recover.
                warn!(error = %error, service, "accepting a connection failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            app.clone(),
            Arc::clone(&builder),
            config.idle_timeout,
            connections.clone(),
        ));
    }
    drop(tcp);
    let _ = closing.send(true);
    drop(connections);
    closing.closed().await;
    Ok(())
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Every listener's service: the router behind the body deadline.
type App = RequestBodyDeadline<Router>;

/// Serves one connection until it ends, is idle for `idle`, or (gracefully) until `closing`.
async fn connection(
    stream: TcpStream,
    service: App,
    builder: Arc<Builder<TokioExecutor>>,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Activity::default();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    let mut conn = pin!(builder.serve_connection(io, TowerToHyperService::new(service)));
    let mut graceful = false;
    loop {
        let idle_at = activity.idle_at(idle);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    debug!(error = %error, "connection ended with an error");
                }
                break;
            }
            _ = closing.changed(), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(idle_at) => {
                if activity.idle_at(idle) <= Instant::now() {
                    debug!(idle_ms = idle.as_millis() as u64, "closing an idle connection");
                    break;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being worked on.
#[derive(Debug, Clone)]
struct Activity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    origin: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(ActivityState {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }))
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.0.origin.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// When the connection counts as idle if nothing happens before: never while a handler
    /// works (checked again one `idle` later).
    fn idle_at(&self, idle: Duration) -> Instant {
        if self.0.busy.load(Ordering::Relaxed) > 0 {
            return Instant::now() + idle;
        }
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        self.0.origin + last + idle
    }

    fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// A service that counts its requests in flight on the connection's [`Activity`].
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Tracked<S>
where
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let busy = self.activity.busy();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(busy);
            response
        })
    }
}

/// A request being worked on; the idle clock restarts when it is done.
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0 .0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records when a byte last moved.
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("0s").is_err());
        assert!(duration("ten").is_err());
        assert!(duration("10h").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn the_defaults_are_what_the_settings_say() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            http: HttpConfig,
        }
        let parsed = Cli::try_parse_from(["rollcall"]).expect("defaults parse");
        assert_eq!(parsed.http, HttpConfig::default());
    }

    #[tokio::test]
    async fn a_body_timeout_is_recognised_through_the_errors_that_wrap_it() {
        let never = futures::stream::pending::<Result<axum::body::Bytes, io::Error>>();
        let body = tower_http::timeout::DeadlineBody::new(
            Duration::from_millis(1),
            axum::body::Body::from_stream(never),
        );
        let error = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX)
            .await
            .expect_err("the deadline passes");
        assert!(is_body_timeout(&error));
        assert!(!is_body_timeout(&io::Error::other("reset")));
    }
}
