//! RPC transport: length-bounded frames over TCP with tokio.
//!
//! A connection carries one request at a time; a client keeps a small pool of
//! idle connections per peer so that concurrent callers each get their own.
//! Streams are produced by a [`Transport`], the one place where mutual TLS
//! will wrap the TCP stream; callers never see the difference.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sohofs_format::frame::{FrameKind, FRAME_HEADER_BYTES};
use sohofs_format::FrameHeader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::error::{FsError, FsResult};
use crate::fault::{self, TransportFaults};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
/// Idle connections kept per peer.
pub const POOL_IDLE_MAX: usize = 16;

/// One decoded frame: its header, message body and raw data tail.
pub struct Frame {
    pub header: FrameHeader,
    pub body: Vec<u8>,
    pub data: Bytes,
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
    match reader.read_exact(&mut header_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header =
        FrameHeader::decode(&header_bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    // The lengths are bounded by FrameHeader::decode, so these allocations are too.
    let mut body = vec![0u8; header.body_len as usize];
    reader.read_exact(&mut body).await?;
    let mut data = vec![0u8; header.data_len as usize];
    reader.read_exact(&mut data).await?;
    Ok(Some(Frame {
        header,
        body,
        data: Bytes::from(data),
    }))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameKind,
    request_id: u64,
    body: &[u8],
    data: &[u8],
) -> std::io::Result<()> {
    let header = FrameHeader {
        kind,
        request_id,
        body_len: u32::try_from(body.len()).map_err(|_| too_long("body"))?,
        data_len: u32::try_from(data.len()).map_err(|_| too_long("data"))?,
    };
    if header.body_len > sohofs_format::FRAME_BODY_BYTES_MAX {
        return Err(too_long("body"));
    }
    if header.data_len > sohofs_format::FRAME_DATA_BYTES_MAX {
        return Err(too_long("data"));
    }
    writer.write_all(&header.encode()).await?;
    writer.write_all(body).await?;
    writer.write_all(data).await?;
    writer.flush().await
}

fn too_long(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("frame {what} exceeds its bound"),
    )
}

/// Makes streams to peers. Plain TCP today; mutual TLS under the cluster CA
/// slots in here without changing any caller.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Client-side fault injection (tests and the fault benchmark only).
    faults: Option<Arc<TransportFaults>>,
}

pub type Stream = BufWriter<BufReader<TcpStream>>;

impl Transport {
    /// A transport whose clients obey `faults` before every call.
    pub fn with_faults(faults: Arc<TransportFaults>) -> Self {
        Transport { faults: Some(faults) }
    }

    pub async fn connect(&self, addr: &str) -> FsResult<Stream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| FsError::Unavailable(format!("connect to {addr}: timed out")))?
            .map_err(|e| FsError::Unavailable(format!("connect to {addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        Ok(wrap(stream))
    }

    pub async fn bind(&self, addr: &str) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }
}

fn wrap(stream: TcpStream) -> Stream {
    BufWriter::with_capacity(256 * 1024, BufReader::with_capacity(256 * 1024, stream))
}

/// A server-side request handler.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request: returns the response body and data tail.
    fn handle(&self, body: Vec<u8>, data: Bytes) -> impl std::future::Future<Output = (Vec<u8>, Bytes)> + Send;
}

/// Serves `handler` on `listener` until the future is dropped.
///
/// Connection tasks belong to the server: they live in a set that aborts them
/// when the future is dropped, so a stopped server (its task aborted) answers
/// nothing more, not even on connections it had accepted before. An abort
/// takes effect at the task's next poll; a connection that is being polled
/// at that moment sees that the server is gone before it takes another
/// request.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) {
    let alive = Arc::new(());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so that the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        connections.spawn(serve_connection(stream, peer, handler.clone(), Arc::downgrade(&alive)));
    }
}

/// Answers requests on one connection, one at a time, until it closes.
async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    handler: Arc<H>,
    server_alive: std::sync::Weak<()>,
) {
    let mut stream = wrap(stream);
    loop {
        let frame = match read_frame(&mut stream).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%peer, %error, "closing connection after a bad frame");
                break;
            }
        };
        if server_alive.strong_count() == 0 {
            break;
        }
        if frame.header.kind != FrameKind::Request {
            tracing::debug!(%peer, "closing connection: response frame sent to a server");
            break;
        }
        if let Err(error) = fault::failpoint_async(fault::RPC_SERVE).await {
            tracing::debug!(%peer, %error, "closing connection unanswered");
            break;
        }
        let (body, data) = handler.handle(frame.body, frame.data).await;
        if let Err(error) = write_frame(&mut stream, FrameKind::Response, frame.header.request_id, &body, &data).await {
            tracing::debug!(%peer, %error, "closing connection after a failed reply");
            break;
        }
    }
}

/// How one request/response exchange failed.
enum Exchange {
    /// The connection was closed or broken: worth one try on a fresh one.
    Broken(FsError),
    /// No answer within the call timeout; the peer may still act on it.
    TimedOut(FsError),
    /// The peer answered, wrongly.
    Answered(FsError),
}

impl Exchange {
    fn into_error(self) -> FsError {
        match self {
            Exchange::Broken(error) | Exchange::TimedOut(error) | Exchange::Answered(error) => error,
        }
    }
}

/// A pooled client for one peer address.
#[derive(Debug)]
pub struct RpcClient {
    addr: String,
    transport: Transport,
    idle: Mutex<Vec<Stream>>,
    next_id: std::sync::atomic::AtomicU64,
    call_timeout: Duration,
}

impl RpcClient {
    pub fn new(addr: impl Into<String>, transport: Transport) -> Self {
        RpcClient {
            addr: addr.into(),
            transport,
            idle: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            call_timeout: CALL_TIMEOUT_DEFAULT,
        }
    }

    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits for its response, within the call timeout.
    /// A pooled connection that turns out closed or broken (the peer
    /// restarted) is replaced by a fresh one once. A call that timed out is
    /// not sent again: the peer may still be carrying it out, and the caller
    /// would wait twice the timeout.
    pub async fn call(&self, body: &[u8], data: &[u8]) -> FsResult<Frame> {
        if let Some(faults) = &self.transport.faults {
            faults.before_call(&self.addr, self.call_timeout).await?;
        }
        let pooled = self.idle.lock().await.pop();
        if let Some(stream) = pooled {
            match self.exchange(stream, body, data).await {
                Err(Exchange::Broken(_)) => {}
                done => return done.map_err(Exchange::into_error),
            }
        }
        let stream = self.transport.connect(&self.addr).await?;
        self.exchange(stream, body, data).await.map_err(Exchange::into_error)
    }

    async fn exchange(&self, mut stream: Stream, body: &[u8], data: &[u8]) -> Result<Frame, Exchange> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exchange = async {
            write_frame(&mut stream, FrameKind::Request, id, body, data).await?;
            read_frame(&mut stream).await
        };
        let frame = match tokio::time::timeout(self.call_timeout, exchange).await {
            Err(_) => {
                return Err(Exchange::TimedOut(FsError::Unavailable(format!(
                    "{}: no answer in time",
                    self.addr
                ))))
            }
            Ok(Err(e)) => return Err(Exchange::Broken(FsError::Unavailable(format!("{}: {e}", self.addr)))),
            Ok(Ok(None)) => {
                return Err(Exchange::Broken(FsError::Unavailable(format!(
                    "{}: connection closed",
                    self.addr
                ))))
            }
            Ok(Ok(Some(frame))) => frame,
        };
        if frame.header.kind != FrameKind::Response || frame.header.request_id != id {
            return Err(Exchange::Answered(FsError::Protocol(format!(
                "{}: answer does not match the request",
                self.addr
            ))));
        }
        let mut idle = self.idle.lock().await;
        if idle.len() < POOL_IDLE_MAX {
            idle.push(stream);
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_call_that_times_out_is_not_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(AtomicUsize::new(0));
        // A peer that answers its first request and then falls silent,
        // keeping its connections open.
        let peer = {
            let received = received.clone();
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let received = received.clone();
                    connections.spawn(async move {
                        let mut stream = wrap(stream);
                        while let Ok(Some(frame)) = read_frame(&mut stream).await {
                            if received.fetch_add(1, Ordering::SeqCst) == 0 {
                                write_frame(&mut stream, FrameKind::Response, frame.header.request_id, b"ok", &[])
                                    .await
                                    .unwrap();
                            }
                        }
                    });
                }
            })
        };
        let timeout = Duration::from_millis(300);
        let client = RpcClient::new(addr, Transport::default()).with_call_timeout(timeout);
        assert_eq!(client.call(b"first", &[]).await.unwrap().body, b"ok");
        let started = Instant::now();
        let result = client.call(b"second", &[]).await;
        let waited = started.elapsed();
        assert!(
            matches!(result, Err(FsError::Unavailable(_))),
            "{:?}",
            result.map(|f| f.body)
        );
        assert!(waited < timeout * 2, "waited {waited:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            received.load(Ordering::SeqCst),
            2,
            "the timed-out request was sent again"
        );
        peer.abort();
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // A peer that answers one request per connection, then closes it.
        let peer = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = wrap(stream);
                if let Ok(Some(frame)) = read_frame(&mut stream).await {
                    write_frame(
                        &mut stream,
                        FrameKind::Response,
                        frame.header.request_id,
                        &frame.body,
                        &[],
                    )
                    .await
                    .unwrap();
                }
            }
        });
        let client = RpcClient::new(addr, Transport::default());
        for body in [&b"one"[..], b"two", b"three"] {
            assert_eq!(client.call(body, &[]).await.unwrap().body, body);
        }
        peer.abort();
    }
}
