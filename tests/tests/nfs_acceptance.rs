//! The acceptance items of the NFS gateway that need a client speaking the
//! protocol itself (the `nfs3_client` crate, and raw ONC-RPC records for the
//! malformed ones), each against a real cluster and `sohofs nfs serve`:
//!
//! - handles survive a gateway restart on the same port: GETATTR, LOOKUP,
//!   READ and WRITE with handles from before it succeed, and the write
//!   verifier changes;
//! - a file removed through FUSE is NFS3ERR_STALE to a client holding its
//!   handle, also after a new file took its name;
//! - uid 1000 (and a squashed root) gets NFS3ERR_ACCES on a root-owned 0600
//!   file and a 0700 directory, and nothing on the mount changes;
//! - malformed RPC records (truncated, oversized lengths, garbage XDR) get an
//!   error reply or a closed connection, without the gateway growing its
//!   memory by what the record claims, and the gateway keeps serving;
//! - a directory of 20,000 entries, hard links among them, lists every name
//!   exactly once over READDIR and over READDIRPLUS, also while entries are
//!   added and removed between pages.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{
    cookieverf3, diropargs3, fattr3, nfs_fh3, nfsstat3, sattr3, stable_how, writeverf3, GETATTR3args, LOOKUP3args,
    Nfs3Option, Nfs3Result, READ3args, READDIR3args, READDIRPLUS3args, REMOVE3args, SETATTR3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Client, Nfs3ConnectionBuilder};
use rand::RngCore;
use sohofs_e2e::gateway::{free_port, Gateway};
use sohofs_e2e::process::run_ok;
use sohofs_e2e::{bounded, hash_tree, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };
/// One RPC, from sending it to its reply.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
const FUSE_TIMEOUT: Duration = Duration::from_secs(120);
const NFS_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a malformed record's sender waits for a reply or a close.
const MALFORMED_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// What a malformed record may make the gateway's peak resident memory grow
/// by; the records below claim 2 GiB and 4 GiB.
const MALFORMED_RSS_GROWTH_BYTES_MAX: u64 = 256 << 20;
/// The gateway's address space in the malformed-record test: far above what
/// it needs, below what the records claim, so that a gateway that believes
/// them fails alone instead of taking the shared machine's memory.
const MALFORMED_ADDRESS_SPACE_BYTES: u64 = 3 << 30;
/// An unprivileged client identity.
const USER_UID: u32 = 1000;
const USER_GID: u32 = 1000;
const ROOT_UID: u32 = 0;
/// READDIR and READDIRPLUS byte limits: small, so that a listing takes many
/// pages and every page resumes from a cookie.
const READDIR_COUNT_BYTES: u32 = 8 * 1024;
const READDIRPLUS_DIRCOUNT_BYTES: u32 = 8 * 1024;
const READDIRPLUS_MAXCOUNT_BYTES: u32 = 32 * 1024;
/// Pages of one listing, at most (20,000 entries need a few hundred).
const LISTING_PAGES_MAX: usize = 10_000;
const BIG_DIR_FILES: usize = 18_000;
const BIG_DIR_HARD_LINKS: usize = 2_000;
/// Building the 20,000 entries through FUSE.
const BIG_DIR_FILL_TIMEOUT: Duration = Duration::from_secs(900);
const READ_BYTES: u32 = 1 << 20;

const RPC_VERSION: u32 = 2;
const NFS_PROGRAM: u32 = 100_003;
const NFS_VERSION: u32 = 3;
const NFSPROC3_GETATTR: u32 = 1;
const AUTH_NULL: u32 = 0;
const AUTH_UNIX: u32 = 1;
const MSG_REPLY: u32 = 1;
const REPLY_ACCEPTED: u32 = 0;
const REPLY_DENIED: u32 = 1;
const ACCEPT_SUCCESS: u32 = 0;
const ACCEPT_PROG_UNAVAIL: u32 = 1;
const DENIED_RPC_MISMATCH: u32 = 0;
const NFS3ERR_BADHANDLE: u32 = 10_001;
const LAST_FRAGMENT: u32 = 1 << 31;

type Io = TokioIo<tokio::net::TcpStream>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs one RPC to its reply, bounded; a transport or RPC-level failure panics.
fn block<T, E: std::fmt::Debug>(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> T {
    match runtime.block_on(async { tokio::time::timeout(RPC_TIMEOUT, call).await }) {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => panic!("{what}: RPC failed: {error:?}"),
        Err(_) => panic!("{what}: no reply within {RPC_TIMEOUT:?}"),
    }
}

fn status<T, E>(result: Nfs3Result<T, E>) -> Result<T, nfsstat3> {
    match result {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((status, _)) => Err(status),
    }
}

fn credential(uid: u32, gid: u32) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"sohofs-e2e".to_vec()),
        uid,
        gid,
        gids: vec![gid],
    })
}

/// One client identity's NFSv3 session: the handles it holds outlive its
/// TCP connections, as a kernel client's do.
struct Session {
    runtime: tokio::runtime::Runtime,
    port: u16,
    credential: opaque_auth<'static>,
    nfs: Nfs3Client<Io>,
    root: nfs_fh3,
}

impl Session {
    /// MOUNT `/` and connect to NFS, as AUTH_SYS `uid`/`gid`.
    fn mount(port: u16, uid: u32, gid: u32) -> Session {
        let runtime = runtime();
        let credential = credential(uid, gid);
        let connection = block(
            &runtime,
            "MOUNT",
            Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/")
                .mount_port(port)
                .nfs3_port(port)
                .connect_from_privileged_port(false)
                .credential(credential.clone())
                .mount(),
        );
        let root = connection.root_nfs_fh3();
        Session {
            runtime,
            port,
            credential,
            nfs: connection.into_nfs3_client(),
            root,
        }
    }

    /// A new TCP connection to the gateway, keeping every handle (no MOUNT).
    fn reconnect(&mut self) {
        let stream = block(
            &self.runtime,
            "connect",
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
        );
        self.nfs = Nfs3Client::new_with_auth(TokioIo::new(stream), self.credential.clone(), opaque_auth::default());
    }

    fn lookup(&mut self, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3, nfsstat3> {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name.as_bytes().into(),
            },
        };
        status(block(&self.runtime, "LOOKUP", self.nfs.lookup(&args))).map(|ok| ok.object)
    }

    /// LOOKUP along a `/`-separated path from the root.
    fn walk(&mut self, path: &str) -> Result<nfs_fh3, nfsstat3> {
        let mut handle = self.root.clone();
        for name in path.split('/').filter(|name| !name.is_empty()) {
            handle = self.lookup(&handle, name)?;
        }
        Ok(handle)
    }

    fn getattr(&mut self, object: &nfs_fh3) -> Result<fattr3, nfsstat3> {
        let args = GETATTR3args { object: object.clone() };
        status(block(&self.runtime, "GETATTR", self.nfs.getattr(&args))).map(|ok| ok.obj_attributes)
    }

    /// The whole file, READ by READ.
    fn read_all(&mut self, file: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
        let mut bytes = Vec::new();
        loop {
            let args = READ3args {
                file: file.clone(),
                offset: bytes.len() as u64,
                count: READ_BYTES,
            };
            let ok = status(block(&self.runtime, "READ", self.nfs.read(&args)))?;
            bytes.extend_from_slice(&ok.data);
            if ok.eof || ok.data.is_empty() {
                return Ok(bytes);
            }
        }
    }

    /// A FILE_SYNC WRITE; returns the reply's stability and write verifier.
    fn write(&mut self, file: &nfs_fh3, offset: u64, data: &[u8]) -> Result<(stable_how, writeverf3), nfsstat3> {
        let args = WRITE3args {
            file: file.clone(),
            offset,
            count: data.len() as u32,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(data),
        };
        let ok = status(block(&self.runtime, "WRITE", self.nfs.write(&args)))?;
        assert_eq!(ok.count as usize, data.len(), "WRITE wrote a part of its data");
        Ok((ok.committed, ok.verf))
    }

    fn truncate(&mut self, object: &nfs_fh3, size: u64) -> Result<(), nfsstat3> {
        let args = SETATTR3args {
            object: object.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(size),
                ..sattr3::default()
            },
            guard: Nfs3Option::None,
        };
        status(block(&self.runtime, "SETATTR", self.nfs.setattr(&args))).map(|_| ())
    }

    fn remove(&mut self, dir: &nfs_fh3, name: &str) -> Result<(), nfsstat3> {
        let args = REMOVE3args {
            object: diropargs3 {
                dir: dir.clone(),
                name: name.as_bytes().into(),
            },
        };
        status(block(&self.runtime, "REMOVE", self.nfs.remove(&args))).map(|_| ())
    }

    /// One READDIR page after `cookie`: (name, cookie) of each entry, and eof.
    fn readdir_page(&mut self, dir: &nfs_fh3, cookie: u64, verifier: cookieverf3) -> Result<Page, nfsstat3> {
        let args = READDIR3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verifier,
            count: READDIR_COUNT_BYTES,
        };
        let ok = status(block(&self.runtime, "READDIR", self.nfs.readdir(&args)))?;
        Ok(Page {
            entries: ok
                .reply
                .entries
                .0
                .iter()
                .map(|entry| (String::from_utf8_lossy(&entry.name.0).into_owned(), entry.cookie))
                .collect(),
            eof: ok.reply.eof,
            verifier: ok.cookieverf,
        })
    }

    /// One READDIRPLUS page after `cookie`; every entry must carry a handle
    /// and attributes.
    fn readdirplus_page(&mut self, dir: &nfs_fh3, cookie: u64, verifier: cookieverf3) -> Result<Page, nfsstat3> {
        let args = READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verifier,
            dircount: READDIRPLUS_DIRCOUNT_BYTES,
            maxcount: READDIRPLUS_MAXCOUNT_BYTES,
        };
        let ok = status(block(&self.runtime, "READDIRPLUS", self.nfs.readdirplus(&args)))?;
        let mut entries = Vec::new();
        for entry in &ok.reply.entries.0 {
            let name = String::from_utf8_lossy(&entry.name.0).into_owned();
            if name != "." && name != ".." {
                assert!(
                    matches!(entry.name_handle, Nfs3Option::Some(_)),
                    "READDIRPLUS entry {name} has no handle"
                );
                assert!(
                    matches!(entry.name_attributes, Nfs3Option::Some(_)),
                    "READDIRPLUS entry {name} has no attributes"
                );
            }
            entries.push((name, entry.cookie));
        }
        Ok(Page {
            entries,
            eof: ok.reply.eof,
            verifier: ok.cookieverf,
        })
    }
}

struct Page {
    entries: Vec<(String, u64)>,
    eof: bool,
    verifier: cookieverf3,
}

#[derive(Clone, Copy, Debug)]
enum Listing {
    ReadDir,
    ReadDirPlus,
}

/// Lists `dir` page by page, each resumed from the last cookie; calls
/// `between_pages` after each page. Returns how often each name was listed
/// ("." and ".." left out).
fn list(
    session: &mut Session,
    dir: &nfs_fh3,
    listing: Listing,
    mut between_pages: impl FnMut(usize),
) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    let mut cookie = 0;
    let mut verifier = cookieverf3::default();
    for page_number in 0..LISTING_PAGES_MAX {
        let page = match listing {
            Listing::ReadDir => session.readdir_page(dir, cookie, verifier),
            Listing::ReadDirPlus => session.readdirplus_page(dir, cookie, verifier),
        }
        .unwrap_or_else(|status| panic!("{listing:?} page {page_number} after cookie {cookie}: {status:?}"));
        assert!(
            page.eof || !page.entries.is_empty(),
            "{listing:?} page {page_number} after cookie {cookie} is empty and not at the end"
        );
        for (name, entry_cookie) in &page.entries {
            if name != "." && name != ".." {
                *names.entry(name.clone()).or_insert(0) += 1;
            }
            cookie = *entry_cookie;
        }
        verifier = page.verifier;
        if page.eof {
            return names;
        }
        between_pages(page_number);
    }
    panic!("{listing:?} did not reach the end in {LISTING_PAGES_MAX} pages");
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

fn fuse<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(what, FUSE_TIMEOUT, work)
}

fn fuse_write(path: &Path, bytes: &[u8], mode: u32) {
    let (path, bytes) = (path.to_owned(), bytes.to_vec());
    fuse("write through FUSE", move || {
        fs::write(&path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    });
}

fn fuse_mkdir(path: &Path, mode: u32) {
    let path = path.to_owned();
    fuse("mkdir through FUSE", move || {
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    });
}

fn fuse_read(path: &Path) -> Vec<u8> {
    let path = path.to_owned();
    fuse("read through FUSE", move || {
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

#[test]
fn handles_survive_a_gateway_restart_and_the_write_verifier_changes() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    fuse_mkdir(&mount.join("shared"), 0o777);
    let content = random_bytes(300_000);
    fuse_write(&mount.join("shared/kept"), &content, 0o666);

    let port = free_port();
    let gateway = Gateway::start_on(&cluster, port, None);
    let mut session = Session::mount(port, USER_UID, USER_GID);
    let shared = session.walk("shared").expect("LOOKUP shared");
    let kept = session.lookup(&shared, "kept").expect("LOOKUP kept");
    assert_eq!(session.read_all(&kept).expect("READ before the restart"), content);
    let (committed, verifier_before) = session.write(&kept, 0, b"before").expect("WRITE before the restart");
    assert_eq!(committed, stable_how::FILE_SYNC);
    let attr_before = session.getattr(&kept).expect("GETATTR before the restart");

    gateway.stop();
    let gateway = Gateway::start_on(&cluster, port, None);
    session.reconnect();

    let attr_after = session
        .getattr(&kept)
        .unwrap_or_else(|status| panic!("GETATTR with a handle from before the restart: {status:?}"));
    assert_eq!(
        (attr_after.fileid, attr_after.size),
        (attr_before.fileid, attr_before.size)
    );
    let mut expected = content.clone();
    expected[..6].copy_from_slice(b"before");
    assert!(
        session
            .read_all(&kept)
            .expect("READ with a handle from before the restart")
            == expected,
        "READ after the restart returned other bytes"
    );
    let again = session
        .lookup(&shared, "kept")
        .unwrap_or_else(|status| panic!("LOOKUP in a directory handle from before the restart: {status:?}"));
    assert_eq!(
        again.data.as_ref(),
        kept.data.as_ref(),
        "the handle of a file changed across a restart"
    );
    let (committed, verifier_after) = session
        .write(&kept, 6, b"after")
        .unwrap_or_else(|status| panic!("WRITE with a handle from before the restart: {status:?}"));
    assert_eq!(committed, stable_how::FILE_SYNC);
    assert_ne!(
        verifier_before, verifier_after,
        "the write verifier did not change at the restart"
    );
    expected[6..11].copy_from_slice(b"after");
    assert!(
        fuse_read(&mount.join("shared/kept")) == expected,
        "FUSE does not see the writes made over NFS around the restart"
    );

    drop(session);
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}

#[test]
fn a_file_removed_through_fuse_is_stale_to_a_client_holding_its_handle() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    fuse_mkdir(&mount.join("shared"), 0o777);
    fuse_write(&mount.join("shared/doomed"), b"old content", 0o666);
    let gateway = Gateway::start(&cluster);
    let mut session = Session::mount(gateway.port(), USER_UID, USER_GID);
    let shared = session.walk("shared").expect("LOOKUP shared");
    let doomed = session.lookup(&shared, "doomed").expect("LOOKUP doomed");
    assert_eq!(session.read_all(&doomed).expect("READ"), b"old content");

    let path = mount.join("shared/doomed");
    fuse("rm through FUSE", move || fs::remove_file(&path).expect("rm doomed"));
    assert_eq!(session.getattr(&doomed).map(|_| ()), Err(nfsstat3::NFS3ERR_STALE));
    assert_eq!(session.read_all(&doomed).map(|_| ()), Err(nfsstat3::NFS3ERR_STALE));
    assert_eq!(
        session.write(&doomed, 0, b"x").map(|_| ()),
        Err(nfsstat3::NFS3ERR_STALE)
    );
    assert_eq!(
        session.lookup(&shared, "doomed").map(|_| ()),
        Err(nfsstat3::NFS3ERR_NOENT)
    );

    // A new file under the old name is another file: the old handle stays stale.
    fuse_write(&mount.join("shared/doomed"), b"new content", 0o666);
    assert_eq!(session.getattr(&doomed).map(|_| ()), Err(nfsstat3::NFS3ERR_STALE));
    assert_eq!(session.read_all(&doomed).map(|_| ()), Err(nfsstat3::NFS3ERR_STALE));
    let reborn = session.lookup(&shared, "doomed").expect("LOOKUP the new doomed");
    assert_ne!(
        reborn.data.as_ref(),
        doomed.data.as_ref(),
        "a new file got the handle of a removed one"
    );
    assert_eq!(session.read_all(&reborn).expect("READ the new file"), b"new content");

    // A removed directory, likewise.
    fuse_mkdir(&mount.join("shared/gone"), 0o777);
    let gone = session.lookup(&shared, "gone").expect("LOOKUP gone");
    let path = mount.join("shared/gone");
    fuse("rmdir through FUSE", move || fs::remove_dir(&path).expect("rmdir gone"));
    assert_eq!(session.getattr(&gone).map(|_| ()), Err(nfsstat3::NFS3ERR_STALE));
    assert_eq!(
        session.readdir_page(&gone, 0, cookieverf3::default()).map(|_| ()),
        Err(nfsstat3::NFS3ERR_STALE)
    );

    drop(session);
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}

#[test]
fn callers_without_permission_get_acces_and_nothing_changes() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    // Root-owned, as the FUSE mount's caller (the test) is root.
    fuse_mkdir(&mount.join("open"), 0o755);
    fuse_write(&mount.join("open/secret"), b"root's secret", 0o600);
    fuse_mkdir(&mount.join("private"), 0o700);
    fuse_write(&mount.join("private/inside"), b"inside", 0o644);
    let root_for_hash = mount.clone();
    let before = fuse("hash the mount", move || {
        hash_tree(&root_for_hash).expect("hash the mount")
    });
    let gateway = Gateway::start(&cluster);

    // uid 1000, and root squashed to 65534: neither may touch these.
    for uid in [USER_UID, ROOT_UID] {
        let gid = if uid == ROOT_UID { 0 } else { USER_GID };
        let mut session = Session::mount(gateway.port(), uid, gid);
        let open = session.walk("open").expect("LOOKUP open");
        let secret = session.lookup(&open, "secret").expect("LOOKUP secret (0755 directory)");
        let denied = Err(nfsstat3::NFS3ERR_ACCES);
        assert_eq!(session.read_all(&secret).map(|_| ()), denied, "uid {uid}: READ of 0600");
        assert_eq!(
            session.write(&secret, 0, b"mine").map(|_| ()),
            denied,
            "uid {uid}: WRITE of 0600"
        );
        assert_eq!(session.truncate(&secret, 0), denied, "uid {uid}: SETATTR size of 0600");
        assert_eq!(session.remove(&open, "secret"), denied, "uid {uid}: REMOVE from 0755");
        let private = session.walk("private").expect("LOOKUP private");
        assert_eq!(
            session.lookup(&private, "inside").map(|_| ()),
            denied,
            "uid {uid}: LOOKUP in 0700"
        );
        assert_eq!(
            session.readdir_page(&private, 0, cookieverf3::default()).map(|_| ()),
            denied,
            "uid {uid}: READDIR of 0700"
        );
        assert_eq!(
            session
                .readdirplus_page(&private, 0, cookieverf3::default())
                .map(|_| ()),
            denied,
            "uid {uid}: READDIRPLUS of 0700"
        );
        assert_eq!(
            session.remove(&private, "inside"),
            denied,
            "uid {uid}: REMOVE from 0700"
        );
        // The attributes stay visible, as on any NFS server.
        let attr = session.getattr(&secret).expect("GETATTR of 0600");
        assert_eq!((attr.mode & 0o7777, attr.uid, attr.size), (0o600, 0, 13));
    }

    let root_for_hash = mount.clone();
    let after = fuse("hash the mount", move || {
        hash_tree(&root_for_hash).expect("hash the mount")
    });
    assert_eq!(before, after, "refused calls changed the volume");
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}

/// What came back for a record sent on a fresh connection.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A reply record (its payload).
    Reply(Vec<u8>),
    /// The gateway closed (or reset) the connection.
    Closed,
    /// Nothing within [`MALFORMED_ANSWER_TIMEOUT`], connection still open.
    Silence,
}

fn xdr_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn xdr_opaque(out: &mut Vec<u8>, bytes: &[u8]) {
    xdr_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
    out.resize(out.len() + (4 - bytes.len() % 4) % 4, 0);
}

/// An RPC CALL header with AUTH_NULL credentials.
fn call_header(xid: u32, rpc_version: u32, program: u32, version: u32, procedure: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [xid, 0, rpc_version, program, version, procedure] {
        xdr_u32(&mut out, word);
    }
    for _ in 0..2 {
        xdr_u32(&mut out, AUTH_NULL);
        xdr_opaque(&mut out, &[]);
    }
    out
}

/// `payload` as one last-fragment record.
fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    xdr_u32(&mut out, LAST_FRAGMENT | payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

/// Sends `bytes` on a new connection (then half-closes it if `then_shutdown`)
/// and waits for a reply record or a close.
fn send_raw(port: u16, bytes: &[u8], then_shutdown: bool) -> Answer {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    send_on(stream, bytes, then_shutdown)
}

/// As [`send_raw`], from the local address `source` (any of 127/8).
fn send_from(source: Ipv4Addr, port: u16, bytes: &[u8]) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    let stream = runtime()
        .block_on(socket.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
        .expect("connect to the gateway")
        .into_std()
        .expect("a std stream");
    stream.set_nonblocking(false).expect("blocking mode");
    send_on(stream, bytes, false)
}

fn send_on(mut stream: TcpStream, bytes: &[u8], then_shutdown: bool) -> Answer {
    stream
        .set_read_timeout(Some(MALFORMED_ANSWER_TIMEOUT))
        .expect("read timeout");
    if stream.write_all(bytes).is_err() {
        return Answer::Closed;
    }
    if then_shutdown {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Answer::Silence
        }
        Err(_) => return Answer::Closed,
    }
    let length = (u32::from_be_bytes(header) & !LAST_FRAGMENT) as usize;
    assert!(length <= 1 << 20, "a reply record of {length} bytes");
    let mut payload = vec![0u8; length];
    match stream.read_exact(&mut payload) {
        Ok(()) => Answer::Reply(payload),
        Err(_) => Answer::Closed,
    }
}

fn reply_words(payload: &[u8]) -> Vec<u32> {
    payload
        .chunks_exact(4)
        .map(|word| u32::from_be_bytes(word.try_into().expect("4 bytes")))
        .collect()
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The gateway still answers a real client: a fresh session reads `probe`.
fn still_serves(port: u16, probe: &str, expected: &[u8]) -> Result<(), String> {
    let expected = expected.to_vec();
    let path = probe.to_owned();
    // A gateway that stopped answering fails this check (a panic in the
    // client thread, bounded by RPC_TIMEOUT) instead of failing the test.
    let read = std::thread::spawn(move || {
        let probe = path;
        let mut session = Session::mount(port, USER_UID, USER_GID);
        let handle = session
            .walk(&probe)
            .map_err(|status| format!("LOOKUP {probe}: {status:?}"))?;
        session
            .read_all(&handle)
            .map_err(|status| format!("READ {probe}: {status:?}"))
    })
    .join();
    match read {
        Ok(Ok(bytes)) if bytes == expected => Ok(()),
        Ok(Ok(bytes)) => Err(format!("READ {probe} returned {} other bytes", bytes.len())),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("a fresh client failed (see the panic above)".to_owned()),
    }
}

#[test]
fn only_allowed_client_addresses_are_served() {
    let cluster = Cluster::start(OPTIONS);
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let gateway = Gateway::start_with_args(&cluster, listen, None, &["--allow", "127.0.0.2/32"]);
    let null_call = record(&call_header(9, RPC_VERSION, NFS_PROGRAM, NFS_VERSION, 0));

    // The allowed address gets the NULL reply: same xid, a REPLY, accepted, SUCCESS.
    match send_from(Ipv4Addr::new(127, 0, 0, 2), gateway.port(), &null_call) {
        Answer::Reply(payload) => assert_eq!(
            reply_words(&payload),
            [9, MSG_REPLY, REPLY_ACCEPTED, AUTH_NULL, 0, ACCEPT_SUCCESS],
            "NULL reply"
        ),
        other => panic!("127.0.0.2 is allowed but got {other:?}\n{}", gateway.log_tail()),
    }
    // Another address is closed before anything is read.
    for source in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 3)] {
        let answer = send_from(source, gateway.port(), &null_call);
        assert_eq!(answer, Answer::Closed, "{source} is not allowed");
    }
    // libnfs from 127.0.0.1 cannot list the export either.
    let listing = Command::new("timeout")
        .args(["60", "nfs-ls"])
        .arg(gateway.url(""))
        .output()
        .expect("run nfs-ls");
    assert!(!listing.status.success(), "nfs-ls from a refused address succeeded");
    assert!(
        gateway.log_tail().contains("client address not allowed"),
        "no log line for the refusal\n{}",
        gateway.log_tail()
    );
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}

#[test]
fn malformed_rpc_records_are_refused_and_the_gateway_keeps_serving() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    fuse_mkdir(&mount.join("shared"), 0o777);
    fuse_write(&mount.join("shared/probe"), b"still here", 0o644);
    let mut gateway = Gateway::start_on(&cluster, free_port(), Some(MALFORMED_ADDRESS_SPACE_BYTES));
    let port = gateway.port();
    still_serves(port, "shared/probe", b"still here").expect("the gateway serves before the test");
    let rss_before = peak_rss_bytes(gateway.pid());

    let getattr = call_header(7, RPC_VERSION, NFS_PROGRAM, NFS_VERSION, NFSPROC3_GETATTR);
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    // A record that ends before its announced length, then EOF.
    let mut truncated = record(&[getattr.clone(), vec![0; 76]].concat());
    truncated.truncate(24);
    cases.push(("truncated record, then EOF", truncated, true));
    // A record announcing 2 GiB - 1 bytes, of which 8 come.
    let mut oversized = Vec::new();
    xdr_u32(&mut oversized, LAST_FRAGMENT | (LAST_FRAGMENT - 1));
    oversized.extend_from_slice(&getattr[..8]);
    cases.push(("record length 2^31 - 1", oversized, false));
    // Non-last fragments that add up past any sane record, 256 MiB each.
    let mut fragments = Vec::new();
    for _ in 0..2 {
        xdr_u32(&mut fragments, 256 << 20);
    }
    cases.push(("two 256 MiB non-last fragments announced", fragments, false));
    // Random bytes as a whole record.
    cases.push(("64 random bytes", record(&random_bytes(64)), false));
    // A call whose credential claims 4 GiB inside a 40-byte record.
    let mut huge_credential = Vec::new();
    for word in [
        8,
        0,
        RPC_VERSION,
        NFS_PROGRAM,
        NFS_VERSION,
        NFSPROC3_GETATTR,
        AUTH_UNIX,
        0xffff_fff0,
    ] {
        xdr_u32(&mut huge_credential, word);
    }
    huge_credential.extend_from_slice(&[0; 8]);
    cases.push(("credential length 2^32 - 16", record(&huge_credential), false));
    // A GETATTR whose handle claims 4 GiB.
    let mut huge_handle = call_header(9, RPC_VERSION, NFS_PROGRAM, NFS_VERSION, NFSPROC3_GETATTR);
    xdr_u32(&mut huge_handle, 0xffff_fff0);
    cases.push(("file handle length 2^32 - 16", record(&huge_handle), false));
    // A GETATTR with no arguments at all.
    cases.push(("GETATTR without arguments", record(&getattr), false));
    // A zero-length record.
    cases.push(("empty record", record(&[]), false));

    let mut failures = Vec::new();
    for (what, bytes, then_shutdown) in &cases {
        let answer = send_raw(port, bytes, *then_shutdown);
        if answer == Answer::Silence {
            failures.push(format!(
                "{what}: neither a reply nor a close within {MALFORMED_ANSWER_TIMEOUT:?}"
            ));
        }
        if !gateway.is_running() {
            failures.push(format!("{what}: the gateway died\n{}", gateway.log_tail()));
            break;
        }
        if let Err(error) = still_serves(port, "shared/probe", b"still here") {
            failures.push(format!("{what}: the gateway stopped serving: {error}"));
        }
    }

    if gateway.is_running() {
        // Well-formed calls the gateway must refuse with a proper reply.
        let mut bad_handle = call_header(11, RPC_VERSION, NFS_PROGRAM, NFS_VERSION, NFSPROC3_GETATTR);
        xdr_opaque(&mut bad_handle, b"abc");
        match send_raw(port, &record(&bad_handle), false) {
            // xid, REPLY, accepted, verifier (flavor, empty), SUCCESS, status.
            Answer::Reply(reply) => {
                let words = reply_words(&reply);
                if words.get(..4) != Some(&[11, MSG_REPLY, REPLY_ACCEPTED, AUTH_NULL])
                    || words.get(5..7) != Some(&[ACCEPT_SUCCESS, NFS3ERR_BADHANDLE])
                {
                    failures.push(format!("a 3-byte handle: reply {words:?}, not NFS3ERR_BADHANDLE"));
                }
            }
            other => failures.push(format!("a 3-byte handle: {other:?}, not NFS3ERR_BADHANDLE")),
        }
        match send_raw(port, &record(&call_header(12, 3, NFS_PROGRAM, NFS_VERSION, 0)), false) {
            Answer::Reply(reply) => {
                let words = reply_words(&reply);
                if words.get(..4) != Some(&[12, MSG_REPLY, REPLY_DENIED, DENIED_RPC_MISMATCH]) {
                    failures.push(format!("RPC version 3: reply {words:?}, not RPC_MISMATCH"));
                }
            }
            other => failures.push(format!("RPC version 3: {other:?}, not RPC_MISMATCH")),
        }
        match send_raw(port, &record(&call_header(13, RPC_VERSION, 0x2000_0001, 1, 0)), false) {
            Answer::Reply(reply) => {
                let words = reply_words(&reply);
                if words.get(..6) != Some(&[13, MSG_REPLY, REPLY_ACCEPTED, AUTH_NULL, 0, ACCEPT_PROG_UNAVAIL]) {
                    failures.push(format!("unknown program: reply {words:?}, not PROG_UNAVAIL"));
                }
            }
            other => failures.push(format!("unknown program: {other:?}, not PROG_UNAVAIL")),
        }

        let rss_after = peak_rss_bytes(gateway.pid());
        if rss_after > rss_before + MALFORMED_RSS_GROWTH_BYTES_MAX {
            failures.push(format!(
                "the gateway's peak resident memory grew from {} MiB to {} MiB",
                rss_before >> 20,
                rss_after >> 20
            ));
        }
        // Another client, libnfs this time, is served.
        let mut command = Command::new("nfs-ls");
        command.arg(gateway.url("shared"));
        let listing = run_ok(command, cluster.tag(), NFS_COMMAND_TIMEOUT);
        if !String::from_utf8_lossy(&listing.stdout).contains("probe") {
            failures.push(format!(
                "nfs-ls after the malformed records does not list probe:\n{}",
                String::from_utf8_lossy(&listing.stdout)
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} problem(s) with malformed records:\n{}",
        failures.len(),
        failures.join("\n")
    );
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}

fn big_dir_names() -> Vec<String> {
    let mut names: Vec<String> = (0..BIG_DIR_FILES).map(|i| format!("file-{i:05}")).collect();
    names.extend((0..BIG_DIR_HARD_LINKS).map(|i| format!("link-{i:05}")));
    names.sort();
    names
}

/// Every expected name exactly once, nothing else.
fn assert_listed_exactly(listing: Listing, names: &BTreeMap<String, usize>, expected: &[String]) {
    let twice: Vec<_> = names.iter().filter(|(_, count)| **count > 1).take(10).collect();
    assert!(
        twice.is_empty(),
        "{listing:?} listed more than once (first 10): {twice:?}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|name| !names.contains_key(*name))
        .take(10)
        .collect();
    let extra: Vec<_> = names
        .keys()
        .filter(|name| expected.binary_search(name).is_err())
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && names.len() == expected.len(),
        "{listing:?} of {} entries listed {}; missing (first 10) {missing:?}; extra (first 10) {extra:?}",
        expected.len(),
        names.len()
    );
}

#[test]
fn twenty_thousand_entries_with_hard_links_list_exactly_once() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_owned();
    let big: PathBuf = mount.join("big");
    let fill = big.clone();
    bounded("fill a directory through FUSE", BIG_DIR_FILL_TIMEOUT, move || {
        fs::create_dir(&fill).expect("mkdir big");
        fs::set_permissions(&fill, fs::Permissions::from_mode(0o777)).expect("chmod big");
        for i in 0..BIG_DIR_FILES {
            fs::File::create(fill.join(format!("file-{i:05}"))).expect("create a file");
        }
        for i in 0..BIG_DIR_HARD_LINKS {
            fs::hard_link(fill.join(format!("file-{i:05}")), fill.join(format!("link-{i:05}"))).expect("hard link");
        }
    });
    let expected = big_dir_names();
    let gateway = Gateway::start(&cluster);
    let mut session = Session::mount(gateway.port(), USER_UID, USER_GID);
    let dir = session.walk("big").expect("LOOKUP big");

    for listing in [Listing::ReadDir, Listing::ReadDirPlus] {
        let names = list(&mut session, &dir, listing, |_| {});
        assert_listed_exactly(listing, &names, &expected);
    }

    // Entries added and removed between pages: no name twice, and every
    // name that stayed throughout listed once (added or removed ones may or
    // may not show).
    for listing in [Listing::ReadDir, Listing::ReadDirPlus] {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        let names = list(&mut session, &dir, listing, |page| {
            // Remove from the end (not listed yet) and the start (listed).
            let victims = [
                format!("file-{:05}", BIG_DIR_FILES - 1 - page),
                format!("file-{:05}", BIG_DIR_HARD_LINKS + page),
            ];
            let newcomer = format!("added-{listing:?}-{page:05}");
            let dir = big.clone();
            let (to_remove, to_add) = (victims.clone(), newcomer.clone());
            fuse("change the directory through FUSE", move || {
                for name in &to_remove {
                    fs::remove_file(dir.join(name)).expect("rm");
                }
                fs::File::create(dir.join(&to_add)).expect("create");
            });
            removed.extend(victims);
            added.push(newcomer);
        });
        let twice: Vec<_> = names.iter().filter(|(_, count)| **count > 1).take(10).collect();
        assert!(
            twice.is_empty(),
            "{listing:?} while changing listed more than once: {twice:?}"
        );
        let stayed: Vec<&String> = expected.iter().filter(|name| !removed.contains(name)).collect();
        let missing: Vec<_> = stayed
            .iter()
            .filter(|name| !names.contains_key(**name))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{listing:?} while changing omitted entries that stayed (first 10): {missing:?}"
        );
        let unknown: Vec<_> = names
            .keys()
            .filter(|name| expected.binary_search(name).is_err() && !added.contains(name))
            .take(10)
            .collect();
        assert!(unknown.is_empty(), "{listing:?} listed names never made: {unknown:?}");
        // Restore the expected contents for the next pass.
        let dir = big.clone();
        fuse("restore the directory through FUSE", move || {
            for name in &removed {
                fs::File::create(dir.join(name)).expect("recreate");
            }
            for name in &added {
                fs::remove_file(dir.join(name)).expect("rm added");
            }
        });
    }

    drop(session);
    gateway.stop();
    let mut cluster = cluster;
    cluster.stop();
}
