//! Kept-alive HTTP/1.1 connections to destinations, by origin, on hyper's connection API.
//!
//! Every name is resolved through the guard, so a connection goes only to an address the
//! policy allows. A connection returns to the pool once its answer was read to the end. One
//! that the destination closed while it waited is let go when it is next taken; a request that
//! such a connection refused before taking it goes again on another connection (it never
//! reached the destination), and one it took is never sent twice.
//!
//! The client alone costs about 15 KiB a call in flight, where reqwest's cost about 24 (22 and
//! 30 KiB a delivery in flight, all told): what keeps 10,000 slow calls at once within 256 MB
//! (`benches/deliver.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::guard::{GuardedResolver, Refusal};

/// The body of an outbound request: sent whole.
pub type OutboundBody = Full<Bytes>;

/// Header lines an answer may have (hyper's default is 100; some servers send more cookies).
pub const MAX_RESPONSE_HEADERS: usize = 256;

/// Idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 256;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection attempt to one address goes on alone before the next address is
/// tried beside it (RFC 8305's connection attempt delay): an address family that drops
/// packets does not use up the call's whole timeout.
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);

/// TCP keepalive of a connection: probes after 15 s of silence, every 15 s, so that a kept-alive
/// connection whose peer vanished (a NAT or a firewall forgot it) is noticed while it is idle.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Where a connection goes: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub https: bool,
    /// As the URL writes it (an IPv6 address in brackets).
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of an http or https URL with a host.
    pub fn of(url: &url::Url) -> Result<Origin, Refusal> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(Refusal::Url(url.to_string())),
        };
        let host = url.host_str().filter(|host| !host.is_empty()).ok_or_else(|| Refusal::Url(url.to_string()))?;
        let port = url.port_or_known_default().ok_or_else(|| Refusal::Url(url.to_string()))?;
        Ok(Origin { https, host: host.to_owned(), port })
    }
}

/// Why a call through the pool brought no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("could not connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("{0} cannot be checked against a TLS certificate: it is not a valid DNS name or IP address")]
    ServerName(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A connection lent for one exchange; [`ConnectionPool::release`] takes it back.
pub struct Connection {
    sender: SendRequest<OutboundBody>,
    origin: Origin,
}

struct Idle {
    sender: SendRequest<OutboundBody>,
    since: Instant,
}

#[derive(Default)]
struct IdleConnections {
    by_origin: HashMap<Origin, Vec<Idle>>,
    /// Whether the task that lets go of connections idle too long runs.
    sweeping: bool,
}

impl IdleConnections {
    fn sweep(&mut self, now: Instant) {
        self.by_origin.retain(|_, connections| {
            connections.retain(|kept| kept.usable(now));
            !connections.is_empty()
        });
    }
}

/// The pool of outbound connections.
pub struct ConnectionPool {
    resolver: Arc<GuardedResolver>,
    tls: TlsConnector,
    idle: Arc<Mutex<IdleConnections>>,
}

impl ConnectionPool {
    /// A pool that resolves names through `resolver` and verifies TLS peers against Mozilla's
    /// root certificates.
    pub fn new(resolver: Arc<GuardedResolver>) -> Self {
        Self::with_roots(resolver, rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()))
    }

    fn with_roots(resolver: Arc<GuardedResolver>, roots: rustls::RootCertStore) -> Self {
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { resolver, tls: TlsConnector::from(Arc::new(config)), idle: Arc::default() }
    }

    /// Sends `request` (origin-form, its `Host` set) to `origin`: on a kept-alive connection
    /// when one is idle, else on a new one. The answer's body is the caller's to read; the
    /// connection goes back with [`ConnectionPool::release`] once it has been read to the end.
    pub async fn send(
        &self,
        origin: &Origin,
        mut request: Request<OutboundBody>,
    ) -> Result<(Response<Incoming>, Connection), TransportError> {
        loop {
            let (mut sender, reused) = match self.checkout(origin).await {
                Some(sender) => (sender, true),
                // Boxed: connecting (TLS included) takes kilobytes of state, which every call
                // in flight would otherwise carry after it connected.
                None => (Box::pin(self.connect(origin)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Connection { sender, origin: origin.clone() })),
                Err(mut error) => match error.take_message() {
                    // A kept-alive connection the destination closed while it was idle: the
                    // request was not written, so it goes again on another connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// Takes back a connection whose answer was read to the end, to be used again.
    pub fn release(&self, connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(&self.idle)));
        }
        let connections = idle.by_origin.entry(connection.origin).or_default();
        if connections.len() < MAX_IDLE_PER_ORIGIN {
            connections.push(Idle { sender: connection.sender, since: Instant::now() });
        }
    }

    /// The most recently used idle connection to `origin` that is ready for a request.
    async fn checkout(&self, origin: &Origin) -> Option<SendRequest<OutboundBody>> {
        loop {
            let mut sender = self.take_idle(origin)?;
            // A connection is ready as soon as it has finished its last exchange; an error
            // means it was closed meanwhile.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<OutboundBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let connections = idle.by_origin.get_mut(origin)?;
        let mut found = None;
        while let Some(kept) = connections.pop() {
            if kept.usable(now) {
                found = Some(kept.sender);
                break;
            }
        }
        if connections.is_empty() {
            idle.by_origin.remove(origin);
        }
        found
    }

    /// A new connection to `origin`: to one of its allowed addresses, then TLS for https.
    async fn connect(&self, origin: &Origin) -> Result<SendRequest<OutboundBody>, TransportError> {
        // Checked before connecting: a name no certificate can match needs no connection.
        let bare = origin.host.trim_start_matches('[').trim_end_matches(']');
        let server_name = origin
            .https
            .then(|| ServerName::try_from(bare.to_owned()).map_err(|_| TransportError::ServerName(origin.host.clone())))
            .transpose()?;
        let addresses = self.resolver.resolve_checked(&origin.host).await?;
        let stream = connect_any(addresses.into_iter().map(|address| SocketAddr::new(address.ip(), origin.port)))
            .await
            .map_err(TransportError::Connect)?;
        // Requests are written whole; waiting to fill a segment would only delay them.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE).with_interval(KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        match server_name {
            None => handshake(stream).await,
            Some(name) => handshake(self.tls.connect(name, stream).await.map_err(TransportError::Tls)?).await,
        }
    }
}

/// Connects to the first of `addresses` that answers: each attempt goes on alone for
/// [`NEXT_ADDRESS_DELAY`] (or until it fails) before the next one starts beside it.
async fn connect_any(addresses: impl IntoIterator<Item = SocketAddr>) -> std::io::Result<TcpStream> {
    let mut waiting = addresses.into_iter().peekable();
    let mut attempts = FuturesUnordered::new();
    attempts.extend(waiting.next().map(TcpStream::connect));
    let mut failure = None;
    while !attempts.is_empty() {
        tokio::select! {
            Some(result) = attempts.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    failure = Some(error);
                    attempts.extend(waiting.next().map(TcpStream::connect));
                }
            },
            () = tokio::time::sleep(NEXT_ADDRESS_DELAY), if waiting.peek().is_some() => {
                attempts.extend(waiting.next().map(TcpStream::connect));
            }
        }
    }
    Err(failure.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// Lets go, every half [`IDLE_TIMEOUT`], of the connections idle too long or closed, for as
/// long as the pool lives.
async fn sweep(idle: Weak<Mutex<IdleConnections>>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let Some(idle) = idle.upgrade() else { return };
        idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sweep(Instant::now());
    }
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_TIMEOUT && !self.sender.is_closed()
    }
}

/// Starts HTTP/1.1 on a connected stream; the connection runs in a task of its own until
/// either side closes it.
async fn handshake<S>(stream: S) -> Result<SendRequest<OutboundBody>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        http1::Builder::new().max_headers(MAX_RESPONSE_HEADERS).handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "destination connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::guard::{EgressPolicy, SystemLookup};

    fn pool() -> ConnectionPool {
        ConnectionPool::new(Arc::new(GuardedResolver::new(
            Arc::new(EgressPolicy::allow_private()),
            Arc::new(SystemLookup),
        )))
    }

    fn request(origin: &Origin) -> Request<OutboundBody> {
        Request::post("/leads").header("host", origin.host.as_str()).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    /// A raw HTTP/1.1 server on 127.0.0.1 that answers `ok` to every request and, when
    /// `one_per_connection`, closes the connection after its first answer (`Connection:
    /// close`); counts the connections it accepted.
    async fn server(one_per_connection: bool) -> (Origin, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // A request is its head and a two-byte body.
                        while !buffer.windows(4).any(|window| window == b"\r\n\r\n")
                            || buffer.len() < head_len(&buffer) + 2
                        {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                            }
                        }
                        buffer.drain(..head_len(&buffer) + 2);
                        let answer: &[u8] = if one_per_connection {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if one_per_connection {
                            return;
                        }
                    }
                });
            }
        });
        (Origin { https: false, host: "127.0.0.1".into(), port }, accepted)
    }

    fn head_len(buffer: &[u8]) -> usize {
        buffer.windows(4).position(|window| window == b"\r\n\r\n").map_or(usize::MAX - 2, |at| at + 4)
    }

    async fn exchange(pool: &ConnectionPool, origin: &Origin) -> Result<String, TransportError> {
        let (response, connection) = pool.send(origin, request(origin)).await?;
        let body = response.into_body().collect().await?.to_bytes();
        pool.release(connection);
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// How many connections five calls one after another took.
    async fn connections_for_five_calls(one_per_connection: bool) -> usize {
        let (origin, accepted) = server(one_per_connection).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(exchange(&pool, &origin).await.unwrap(), "ok");
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn calls_one_after_another_share_one_kept_alive_connection() {
        assert_eq!(connections_for_five_calls(false).await, 1);
    }

    #[tokio::test]
    async fn a_connection_the_destination_closed_is_not_used_again() {
        assert_eq!(connections_for_five_calls(true).await, 5);
    }

    #[tokio::test]
    async fn an_answer_with_many_header_lines_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin { https: false, host: "127.0.0.1".into(), port: listener.local_addr().unwrap().port() };
        let mut answer = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for index in 0..200 {
            answer.push_str(&format!("set-cookie: c{index}=1\r\n"));
        }
        answer.push_str("\r\nok");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            while buffer.len() < head_len(&buffer).saturating_add(2) {
                let read = stream.read(&mut chunk).await.unwrap();
                buffer.extend_from_slice(&chunk[..read]);
            }
            stream.write_all(answer.as_bytes()).await.unwrap();
            let _ = stream.read(&mut chunk).await;
        });
        assert_eq!(exchange(&pool(), &origin).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn an_address_that_refuses_gives_way_to_the_next() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (origin, _) = server(false).await;
        let open = SocketAddr::from(([127, 0, 0, 1], origin.port));
        assert_eq!(connect_any([closed, open]).await.unwrap().peer_addr().unwrap(), open);
        let error = connect_any([closed]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_refused_address_is_never_connected() {
        let (origin, accepted) = server(false).await;
        let guarded = GuardedResolver::new(Arc::new(EgressPolicy::default()), Arc::new(SystemLookup));
        let pool = ConnectionPool::new(Arc::new(guarded));
        let error = exchange(&pool, &origin).await.unwrap_err();
        assert!(matches!(error, TransportError::Refused(Refusal::Address { .. })), "{error}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    /// An HTTPS server on 127.0.0.1 with a certificate of its own for `localhost`, answering
    /// `ok` over hyper; returns its port and its certificate.
    async fn tls_server() -> (u16, rustls::pki_types::CertificateDer<'static>) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certificate = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let answer = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
                });
            }
        });
        (port, certificate)
    }

    #[tokio::test]
    async fn https_goes_over_tls_to_a_peer_only_a_trusted_root_vouches_for() {
        let (port, certificate) = tls_server().await;
        let origin = Origin { https: true, host: "localhost".into(), port };
        let resolver = Arc::new(GuardedResolver::new(Arc::new(EgressPolicy::allow_private()), Arc::new(SystemLookup)));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).unwrap();
        let trusting = ConnectionPool::with_roots(resolver, roots);
        assert_eq!(exchange(&trusting, &origin).await.unwrap(), "ok");
        // No root in Mozilla's list signed the server's certificate.
        let error = exchange(&pool(), &origin).await.unwrap_err();
        assert!(matches!(error, TransportError::Tls(_)), "{error}");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    }
}
