//! The guard between clients and the library's RPC listener.
//!
//! `zerofs_nfsserve` trusts the lengths on the wire: it grows its buffer to
//! whatever a record header announces (up to 2 GiB per fragment, fragments
//! without end), and it sizes every variable-length XDR item (credential
//! body, machine name, group list, file handle, name, path, WRITE data) by
//! the length in the bytes before reading them — so a 40-byte record that
//! claims a 4 GiB credential makes it allocate 4 GiB, and the process
//! aborts when that fails. Its wire layer is private, so the gateway does
//! not let clients reach it: it accepts connections itself, reassembles
//! each record within [`RECORD_BYTES_MAX`], checks with [`check_call`]
//! (in `sohofs-format`, where it is fuzzed) that every length the library
//! will read fits in the record and in its protocol bound, and relays the record to the library over loopback. A
//! record that fails is not relayed: the connection is closed, which is an
//! answer RFC 5531 allows for a broken record stream. Replies are copied
//! back unchanged.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use sohofs_format::rpc_call::{check_call, Malformed, RPC_RECORD_BYTES_MAX as RECORD_BYTES_MAX};

const LAST_FRAGMENT: u32 = 1 << 31;

/// Relays one client connection to the library at `backend` until either
/// side closes or the client sends a record that fails [`check_call`].
pub async fn relay(client: TcpStream, backend: SocketAddr) {
    let peer = client.peer_addr().ok();
    let library = match TcpStream::connect(backend).await {
        Ok(library) => library,
        Err(error) => {
            tracing::warn!(?peer, %error, "connect to the NFS library listener");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = library.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut library_read, mut library_write) = library.into_split();
    let calls = async {
        let mut record = Vec::new();
        loop {
            match read_record(&mut client_read, &mut record).await {
                Ok(Some(())) => {}
                Ok(None) => return,
                Err(error) => {
                    tracing::info!(?peer, %error, "closing an NFS connection: bad record");
                    return;
                }
            }
            if let Err(malformed) = check_call(&record) {
                tracing::info!(?peer, %malformed, "closing an NFS connection: malformed call");
                return;
            }
            let header = (LAST_FRAGMENT | record.len() as u32).to_be_bytes();
            if library_write.write_all(&header).await.is_err() || library_write.write_all(&record).await.is_err() {
                return;
            }
        }
    };
    let replies = async {
        let _ = tokio::io::copy(&mut library_read, &mut client_write).await;
    };
    // Whichever side ends first ends the connection (both halves drop).
    tokio::select! {
        () = calls => {}
        () = replies => {}
    }
}

/// Reads one whole record (all its fragments) of at most
/// [`RECORD_BYTES_MAX`]; `None` at a clean end of stream between records.
async fn read_record(client: &mut (impl AsyncRead + Unpin), record: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    record.clear();
    loop {
        let mut header = [0u8; 4];
        match client.read_exact(&mut header).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => return Ok(None),
            Err(error) => return Err(error),
        }
        let header = u32::from_be_bytes(header);
        let len = (header & !LAST_FRAGMENT) as usize;
        if record.len() + len > RECORD_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record of more than {RECORD_BYTES_MAX} bytes"),
            ));
        }
        let start = record.len();
        record.resize(start + len, 0);
        client.read_exact(&mut record[start..]).await?;
        if header & LAST_FRAGMENT != 0 {
            return Ok(Some(()));
        }
    }
}
