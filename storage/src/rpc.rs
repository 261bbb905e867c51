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
pub struct Transport {}

pub type Stream = BufWriter<BufReader<TcpStream>>;

impl Transport {
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
        let (body, data) = handler.handle(frame.body, frame.data).await;
        if let Err(error) = write_frame(&mut stream, FrameKind::Response, frame.header.request_id, &body, &data).await {
            tracing::debug!(%peer, %error, "closing connection after a failed reply");
            break;
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
    /// A pooled connection that turns out dead (the peer restarted) is
    /// replaced by a fresh one once.
    pub async fn call(&self, body: &[u8], data: &[u8]) -> FsResult<Frame> {
        let pooled = self.idle.lock().await.pop();
        if let Some(stream) = pooled {
            match self.exchange(stream, body, data).await {
                Err(FsError::Unavailable(_)) => {}
                done => return done,
            }
        }
        let stream = self.transport.connect(&self.addr).await?;
        self.exchange(stream, body, data).await
    }

    async fn exchange(&self, mut stream: Stream, body: &[u8], data: &[u8]) -> FsResult<Frame> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exchange = async {
            write_frame(&mut stream, FrameKind::Request, id, body, data).await?;
            read_frame(&mut stream).await
        };
        let frame = match tokio::time::timeout(self.call_timeout, exchange).await {
            Err(_) => return Err(FsError::Unavailable(format!("{}: no answer in time", self.addr))),
            Ok(Err(e)) => return Err(FsError::Unavailable(format!("{}: {e}", self.addr))),
            Ok(Ok(None)) => return Err(FsError::Unavailable(format!("{}: connection closed", self.addr))),
            Ok(Ok(Some(frame))) => frame,
        };
        if frame.header.kind != FrameKind::Response || frame.header.request_id != id {
            return Err(FsError::Protocol(format!(
                "{}: answer does not match the request",
                self.addr
            )));
        }
        let mut idle = self.idle.lock().await;
        if idle.len() < POOL_IDLE_MAX {
            idle.push(stream);
        }
        Ok(frame)
    }
}
