//! sohofs-nfs adapts the client volume API of `sohofs-storage` to NFSv3 with
//! `zerofs_nfsserve`, which owns the RPC, XDR, MOUNT and portmap wire. This
//! crate owns the translation: file handles (volume id, inode, generation;
//! see `sohofs_format::nfs_handle`), attributes, directory cookies (each
//! entry's directory sequence number), `nfsstat3` values, the AUTH_SYS
//! permission checks (`access`), and the files it holds open in the volume
//! on behalf of clients (`open_files`), and the guard that checks every
//! RPC record before the library decodes it (`rpc_guard`). It uses nothing
//! of storage but `volume` and `FsError`.
//!
//! Every WRITE is durable before its reply: the library answers FILE_SYNC,
//! so the adapter writes and fsyncs, which commits the request's bytes as one
//! small extent of its chunk (folded into the chunk later by the volume).

pub mod access;
pub mod open_files;
pub mod rpc_guard;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};
use sohofs_format::NfsHandle;
use sohofs_storage::volume::{Attr, FileKind, Ino, SetAttr, TimeNs, TimeSet, Volume, ROOT_INO};
use sohofs_storage::FsError;
use tokio_util::sync::CancellationToken;
use zerofs_nfsserve::nfs::{
    fattr3, fileid3, filename3, fsinfo3, fsstat3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3,
    set_atime, set_gid3, set_mode3, set_mtime, set_size3, set_uid3, specdata3, writeverf3, FSF_CANSETTIME,
    FSF_HOMOGENEOUS, FSF_LINK, FSF_SYMLINK,
};
use zerofs_nfsserve::tcp::{NFSTcp, NFSTcpListener};
use zerofs_nfsserve::vfs::{AuthContext, DirEntry as NfsDirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

use crate::access::{Caller, Object, MAY_EXEC, MAY_READ, MAY_WRITE};
use crate::open_files::OpenFiles;

/// Largest READ and WRITE the gateway offers (FSINFO rtmax/wtmax).
pub const TRANSFER_BYTES_MAX: u32 = sohofs_format::rpc_call::NFS_TRANSFER_BYTES_MAX;
/// Entries fetched from meta per READDIR(PLUS) request, whatever the client asks.
pub const READDIR_ENTRIES_MAX: usize = 1024;
/// Attribute fetches in flight for one READDIRPLUS page.
const READDIR_ATTR_FETCHES_IN_FLIGHT: usize = 16;
/// Inode generations remembered to build and check handles.
pub const GENERATIONS_CACHED_MAX: usize = 1 << 17;
/// The generation meta gives every inode today (numbers are never reused).
const FIRST_GENERATION: u64 = 1;
/// Cookies 1 and 2 are "." and ".."; entries use their sequence numbers,
/// which start above them (as FUSE offsets do).
const DOT_COOKIE: u64 = 1;
const DOT_DOT_COOKIE: u64 = 2;
const BLOCK_BYTES: u64 = 4096;
const DEFAULT_FILE_PERM: u16 = 0o644;
const DEFAULT_DIR_PERM: u16 = 0o755;
const SETGID: u16 = 0o2000;

/// The `nfsstat3` for each kind of volume error. No `_` arm: a new kind must
/// be mapped here before this crate builds.
pub fn nfsstat(error: &FsError) -> nfsstat3 {
    match error {
        FsError::NotFound => nfsstat3::NFS3ERR_NOENT,
        FsError::Exists => nfsstat3::NFS3ERR_EXIST,
        FsError::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        FsError::IsDir => nfsstat3::NFS3ERR_ISDIR,
        FsError::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        FsError::Invalid(_) => nfsstat3::NFS3ERR_INVAL,
        FsError::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        FsError::NoSpace(_) => nfsstat3::NFS3ERR_NOSPC,
        FsError::Io(_) => nfsstat3::NFS3ERR_IO,
        FsError::Corrupt(_) => nfsstat3::NFS3ERR_IO,
        FsError::Stale => nfsstat3::NFS3ERR_STALE,
        // EPERM, as FUSE maps it; the gateway's own mode-bit refusals are ACCES.
        FsError::Permission => nfsstat3::NFS3ERR_PERM,
        // NFSv3 has no extended attributes; the volume says this only to xattr calls.
        FsError::NoXattr => nfsstat3::NFS3ERR_NOTSUPP,
        FsError::Range => nfsstat3::NFS3ERR_INVAL,
        // EIO, as FUSE maps it: past m hosts down, reads fail rather than hang.
        FsError::Unavailable(_) => nfsstat3::NFS3ERR_IO,
        FsError::CrossDevice => nfsstat3::NFS3ERR_XDEV,
        FsError::Protocol(_) => nfsstat3::NFS3ERR_SERVERFAULT,
        FsError::TooBig => nfsstat3::NFS3ERR_FBIG,
        FsError::Access => nfsstat3::NFS3ERR_ACCES,
    }
}

fn stat(error: FsError) -> nfsstat3 {
    nfsstat(&error)
}

/// For an inode named by a handle, "not found" means the handle is stale.
fn stat_of_handle(error: FsError) -> nfsstat3 {
    match error {
        FsError::NotFound => nfsstat3::NFS3ERR_STALE,
        other => nfsstat(&other),
    }
}

fn nfs_time(ns: TimeNs) -> nfstime3 {
    let ns = ns.max(0);
    let seconds = (ns / 1_000_000_000).min(u32::MAX as i64) as u32;
    nfstime3 {
        seconds,
        nseconds: (ns % 1_000_000_000) as u32,
    }
}

fn time_ns(time: nfstime3) -> TimeNs {
    time.seconds as i64 * 1_000_000_000 + time.nseconds as i64
}

fn ftype(kind: FileKind) -> ftype3 {
    match kind {
        FileKind::File => ftype3::NF3REG,
        FileKind::Dir => ftype3::NF3DIR,
        FileKind::Symlink => ftype3::NF3LNK,
        FileKind::Fifo => ftype3::NF3FIFO,
        FileKind::Socket => ftype3::NF3SOCK,
        FileKind::CharDevice => ftype3::NF3CHR,
        FileKind::BlockDevice => ftype3::NF3BLK,
    }
}

/// Linux's `dev_t` encoding (major 12 bits, minor 20 bits) of a device number.
fn specdata(rdev: u32) -> specdata3 {
    specdata3 {
        specdata1: (rdev >> 8) & 0xfff,
        specdata2: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    }
}

fn rdev(spec: &specdata3) -> u32 {
    let (major, minor) = (spec.specdata1, spec.specdata2);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn object(attr: &Attr) -> Object {
    Object {
        uid: attr.uid,
        gid: attr.gid,
        perm: attr.perm,
        is_dir: attr.kind == FileKind::Dir,
    }
}

fn deny_unless(allowed: bool, status: nfsstat3) -> Result<(), nfsstat3> {
    if allowed {
        Ok(())
    } else {
        Err(status)
    }
}

/// How the gateway serves the volume.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub listen: SocketAddr,
    /// The directory of the volume that clients mount as `/`, e.g. `/` or `/home`.
    pub export: String,
    /// Map uid 0 (and root's gid 0) to 65534.
    pub root_squash: bool,
    /// Client addresses that may connect; others are closed at accept.
    pub allowed_clients: Vec<ipnet::IpNet>,
}

/// The clients a gateway admits unless told otherwise: loopback and the
/// private ranges an office LAN uses (RFC 1918, IPv6 unique-local and
/// link-local), never the open internet.
pub fn default_allowed_clients() -> Vec<ipnet::IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|net| net.parse().expect("a valid built-in network"))
    .collect()
}

/// Whether `peer` lies in one of `allowed` (an IPv4 client seen on an IPv6
/// socket as `::ffff:a.b.c.d` counts as its IPv4 address).
pub fn client_allowed(allowed: &[ipnet::IpNet], peer: std::net::IpAddr) -> bool {
    let peer = peer.to_canonical();
    allowed.iter().any(|net| net.contains(&peer))
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("export {path}: {source}")]
    Export { path: String, source: FsError },
    #[error("export {0} is not a directory")]
    ExportNotDir(String),
    #[error("listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The NFS file system over a [`Volume`].
pub struct SohoNfs {
    volume: Volume,
    volume_id: u128,
    fsid: u64,
    /// The inode clients mount as `/`.
    export_root: Ino,
    root_squash: bool,
    write_verifier: writeverf3,
    /// The last generation seen of each inode: `id_to_fh` is synchronous and
    /// gets only an inode number, so it must know the generation already.
    generations: StdMutex<lru::LruCache<Ino, u64>>,
    open_files: Arc<OpenFiles>,
}

impl SohoNfs {
    /// The file system serving the directory `export_root` of `volume`.
    pub fn new(volume: Volume, export_root: &Attr, root_squash: bool) -> SohoNfs {
        let volume_id = volume.record().volume_id;
        // NFSv3 replies to changes promise stable storage (RFC 1813).
        volume.set_sync_every_change(true);
        let open_files = OpenFiles::start(volume.clone());
        let nfs = SohoNfs {
            fsid: (volume_id as u64) ^ ((volume_id >> 64) as u64),
            volume_id,
            volume,
            export_root: export_root.ino,
            root_squash,
            // New at every start, so that clients resend writes they only
            // hold as UNSTABLE (the library answers FILE_SYNC, but a client
            // may still compare verifiers).
            write_verifier: rand::random(),
            generations: StdMutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(GENERATIONS_CACHED_MAX).expect("non-zero cache size"),
            )),
            open_files,
        };
        nfs.learn(export_root);
        nfs
    }

    pub fn open_files(&self) -> Arc<OpenFiles> {
        self.open_files.clone()
    }

    fn caller(&self, auth: &AuthContext) -> Caller {
        Caller::from_auth_sys(auth.uid, auth.gid, &auth.gids, self.root_squash)
    }

    fn learn(&self, attr: &Attr) {
        self.generations
            .lock()
            .expect("generation cache lock")
            .put(attr.ino, attr.generation);
    }

    fn fattr(&self, attr: &Attr) -> fattr3 {
        self.learn(attr);
        fattr3 {
            ftype: ftype(attr.kind),
            mode: (attr.perm & 0o7777) as u32,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            size: attr.size,
            used: attr.size.div_ceil(BLOCK_BYTES).saturating_mul(BLOCK_BYTES),
            rdev: specdata(attr.rdev),
            fsid: self.fsid,
            fileid: attr.ino,
            atime: nfs_time(attr.atime),
            mtime: nfs_time(attr.mtime),
            ctime: nfs_time(attr.ctime),
        }
    }

    /// The attributes of an inode a handle names.
    async fn attr_of(&self, ino: Ino) -> Result<Attr, nfsstat3> {
        self.volume.getattr(ino).await.map_err(stat_of_handle)
    }

    /// The directory a handle names, checked for `want` access.
    async fn dir_for(&self, caller: &Caller, dir: Ino, want: u8) -> Result<Attr, nfsstat3> {
        let attr = self.attr_of(dir).await?;
        if attr.kind != FileKind::Dir {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        deny_unless(access::may(caller, &object(&attr), want), nfsstat3::NFS3ERR_ACCES)?;
        Ok(attr)
    }

    /// The gid a new entry of `dir` gets, and whether it inherits setgid
    /// (a new directory in a setgid directory does, as on Linux).
    fn new_group(caller: &Caller, dir: &Attr) -> (u32, bool) {
        if dir.perm & SETGID != 0 {
            (dir.gid, true)
        } else {
            (caller.gid, false)
        }
    }

    fn requested_perm(mode: &set_mode3, default: u16) -> u16 {
        match mode {
            set_mode3::mode(mode) => (*mode & 0o7777) as u16,
            set_mode3::Void => default,
        }
    }

    /// Checks and applies a SETATTR to `attr`'s inode.
    async fn apply_setattr(&self, caller: &Caller, attr: &Attr, request: &sattr3) -> Result<Attr, nfsstat3> {
        let target = object(attr);
        let mut change = SetAttr::default();
        if let set_mode3::mode(mode) = request.mode {
            deny_unless(access::may_change_owner_fields(caller, &target), nfsstat3::NFS3ERR_PERM)?;
            let mut perm = (mode & 0o7777) as u16;
            // As Linux: setgid survives a chmod only for members of the group.
            if !caller.is_root() && !caller.in_group(attr.gid) && attr.kind != FileKind::Dir {
                perm &= !SETGID;
            }
            change.perm = Some(perm);
        }
        let new_uid = match request.uid {
            set_uid3::uid(uid) => Some(uid),
            set_uid3::Void => None,
        };
        let new_gid = match request.gid {
            set_gid3::gid(gid) => Some(gid),
            set_gid3::Void => None,
        };
        deny_unless(
            access::may_chown(caller, &target, new_uid, new_gid),
            nfsstat3::NFS3ERR_PERM,
        )?;
        change.uid = new_uid;
        change.gid = new_gid;
        if let set_size3::size(size) = request.size {
            if attr.kind == FileKind::Dir {
                return Err(nfsstat3::NFS3ERR_ISDIR);
            }
            if attr.kind != FileKind::File {
                return Err(nfsstat3::NFS3ERR_INVAL);
            }
            deny_unless(self.may_write_file(caller, attr), nfsstat3::NFS3ERR_ACCES)?;
            change.size = Some(size);
        }
        let owner_or_writer =
            access::may_change_owner_fields(caller, &target) || access::may(caller, &target, MAY_WRITE);
        change.atime = match request.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => {
                deny_unless(owner_or_writer, nfsstat3::NFS3ERR_ACCES)?;
                Some(TimeSet::Now)
            }
            set_atime::SET_TO_CLIENT_TIME(time) => {
                deny_unless(access::may_change_owner_fields(caller, &target), nfsstat3::NFS3ERR_PERM)?;
                Some(TimeSet::At(time_ns(time)))
            }
        };
        change.mtime = match request.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => {
                deny_unless(owner_or_writer, nfsstat3::NFS3ERR_ACCES)?;
                Some(TimeSet::Now)
            }
            set_mtime::SET_TO_CLIENT_TIME(time) => {
                deny_unless(access::may_change_owner_fields(caller, &target), nfsstat3::NFS3ERR_PERM)?;
                Some(TimeSet::At(time_ns(time)))
            }
        };
        if change == SetAttr::default() {
            return Ok(attr.clone());
        }
        self.volume.setattr(attr.ino, change).await.map_err(stat_of_handle)
    }

    /// The owner may always write (and read) a file it has made, whatever its
    /// mode: NFS has no OPEN, so a client that created a 0444 file and still
    /// holds it open sends its WRITEs after the mode is set. Linux's knfsd
    /// grants the same owner override.
    fn may_write_file(&self, caller: &Caller, attr: &Attr) -> bool {
        caller.owns(&object(attr)) || access::may(caller, &object(attr), MAY_WRITE)
    }

    /// READ is also how clients fetch a program to execute it, so execute
    /// permission suffices, as on knfsd; and the owner override applies.
    fn may_read_file(&self, caller: &Caller, attr: &Attr) -> bool {
        let target = object(attr);
        caller.owns(&target) || access::may(caller, &target, MAY_READ) || access::may(caller, &target, MAY_EXEC)
    }

    /// Looks up `name` in `dir` (already checked for search), with "." and
    /// ".." resolved here; ".." of the export root is the root itself.
    async fn lookup_in(&self, dir: &Attr, name: &[u8]) -> Result<Attr, nfsstat3> {
        match name {
            b"." => Ok(dir.clone()),
            b".." if dir.ino == self.export_root => Ok(dir.clone()),
            b".." => self.attr_of(dir.parent).await,
            _ => self.volume.lookup(dir.ino, name).await.map_err(stat),
        }
    }

    /// Whether `caller` may remove the entry `name` of `dir`; returns it.
    async fn removable(&self, caller: &Caller, dir: &Attr, name: &[u8]) -> Result<Attr, nfsstat3> {
        if name == b"." || name == b".." {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let victim = self.volume.lookup(dir.ino, name).await.map_err(stat)?;
        deny_unless(
            access::may_unlink_from_sticky(caller, &object(dir), &object(&victim)),
            nfsstat3::NFS3ERR_ACCES,
        )?;
        Ok(victim)
    }

    async fn make_node(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        name: &filename3,
        kind: FileKind,
        perm: u16,
        rdev: u32,
    ) -> Result<Attr, nfsstat3> {
        let caller = self.caller(auth);
        let dir = self.dir_for(&caller, dirid, MAY_WRITE | MAY_EXEC).await?;
        let (gid, inherit_setgid) = Self::new_group(&caller, &dir);
        let perm = if inherit_setgid && kind == FileKind::Dir {
            perm | SETGID
        } else {
            perm
        };
        let attr = self
            .volume
            .mknod(dirid, name.as_ref(), kind, perm, caller.uid, gid, rdev)
            .await
            .map_err(stat)?;
        self.learn(&attr);
        Ok(attr)
    }

    /// The attributes of a READDIRPLUS entry; `None` when the entry went away
    /// since the listing (it is then left out, as if listed a moment later).
    async fn entry_attr(&self, ino: Ino) -> Result<Option<Attr>, nfsstat3> {
        match self.volume.getattr(ino).await {
            Ok(attr) => Ok(Some(attr)),
            Err(FsError::NotFound) => Ok(None),
            Err(error) => Err(stat(error)),
        }
    }
}

#[async_trait]
impl NFSFileSystem for SohoNfs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadWrite
    }

    fn root_dir(&self) -> fileid3 {
        self.export_root
    }

    async fn lookup(&self, auth: &AuthContext, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let caller = self.caller(auth);
        let dir = self.dir_for(&caller, dirid, MAY_EXEC).await?;
        let attr = self.lookup_in(&dir, filename.as_ref()).await?;
        self.learn(&attr);
        Ok(attr.ino)
    }

    async fn getattr(&self, _auth: &AuthContext, id: fileid3) -> Result<fattr3, nfsstat3> {
        let attr = self.attr_of(id).await?;
        Ok(self.fattr(&attr))
    }

    async fn setattr(&self, auth: &AuthContext, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let caller = self.caller(auth);
        let attr = self.attr_of(id).await?;
        let attr = self.apply_setattr(&caller, &attr, &setattr).await?;
        Ok(self.fattr(&attr))
    }

    async fn read(
        &self,
        auth: &AuthContext,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let caller = self.caller(auth);
        let attr = self.attr_of(id).await?;
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(nfsstat3::NFS3ERR_ISDIR),
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        }
        deny_unless(self.may_read_file(&caller, &attr), nfsstat3::NFS3ERR_ACCES)?;
        let count = count.min(TRANSFER_BYTES_MAX);
        let data = self.volume.read(id, offset, count).await.map_err(stat_of_handle)?;
        let eof = offset.saturating_add(data.len() as u64) >= attr.size;
        Ok((data, eof))
    }

    async fn write(&self, auth: &AuthContext, id: fileid3, offset: u64, data: &[u8]) -> Result<fattr3, nfsstat3> {
        let caller = self.caller(auth);
        let attr = self.attr_of(id).await?;
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(nfsstat3::NFS3ERR_ISDIR),
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        }
        deny_unless(self.may_write_file(&caller, &attr), nfsstat3::NFS3ERR_ACCES)?;
        let open = self.open_files.acquire(id).await.map_err(stat_of_handle)?;
        // The reply says FILE_SYNC: the bytes are committed before it is sent.
        self.volume.write(id, offset, data).await.map_err(stat_of_handle)?;
        self.volume.fsync(id).await.map_err(stat_of_handle)?;
        drop(open);
        let attr = self.attr_of(id).await?;
        Ok(self.fattr(&attr))
    }

    async fn create(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        filename: &filename3,
        attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let perm = Self::requested_perm(&attr.mode, DEFAULT_FILE_PERM);
        let created = match self.make_node(auth, dirid, filename, FileKind::File, perm, 0).await {
            Ok(created) => created,
            // UNCHECKED (the library sends GUARDED's existing names away
            // before this): an existing file is opened, and the rest of the
            // attributes (typically size 0) applied to it.
            Err(nfsstat3::NFS3ERR_EXIST) => {
                let existing = self.volume.lookup(dirid, filename.as_ref()).await.map_err(stat)?;
                if existing.kind != FileKind::File {
                    return Err(nfsstat3::NFS3ERR_EXIST);
                }
                let rest = sattr3 {
                    mode: set_mode3::Void,
                    ..attr
                };
                let updated = self.apply_setattr(&self.caller(auth), &existing, &rest).await?;
                return Ok((updated.ino, self.fattr(&updated)));
            }
            Err(other) => return Err(other),
        };
        // The mode went with the create; owner, size and times are applied
        // as a SETATTR would be, by the new owner.
        let rest = sattr3 {
            mode: set_mode3::Void,
            ..attr
        };
        let updated = self.apply_setattr(&self.caller(auth), &created, &rest).await?;
        Ok((updated.ino, self.fattr(&updated)))
    }

    async fn create_exclusive(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        // The library does not pass the client's verifier, so a retransmitted
        // exclusive CREATE gets EXIST; the client then looks the file up.
        let attr = self
            .make_node(auth, dirid, filename, FileKind::File, DEFAULT_FILE_PERM, 0)
            .await?;
        Ok(attr.ino)
    }

    async fn mkdir(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        dirname: &filename3,
        attrs: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let perm = Self::requested_perm(&attrs.mode, DEFAULT_DIR_PERM);
        let attr = self.make_node(auth, dirid, dirname, FileKind::Dir, perm, 0).await?;
        Ok((attr.ino, self.fattr(&attr)))
    }

    async fn remove(&self, auth: &AuthContext, dirid: fileid3, filename: &filename3) -> Result<(), nfsstat3> {
        let caller = self.caller(auth);
        let dir = self.dir_for(&caller, dirid, MAY_WRITE | MAY_EXEC).await?;
        let victim = self.removable(&caller, &dir, filename.as_ref()).await?;
        if victim.kind == FileKind::Dir {
            self.volume.rmdir(dirid, filename.as_ref()).await.map_err(stat)?;
        } else {
            self.volume.unlink(dirid, filename.as_ref()).await.map_err(stat)?;
            if victim.nlink <= 1 {
                // Let the volume drop the orphan now rather than at idle time.
                self.open_files.forget(victim.ino).await;
            }
        }
        Ok(())
    }

    async fn rename(
        &self,
        auth: &AuthContext,
        from_dirid: fileid3,
        from_filename: &filename3,
        to_dirid: fileid3,
        to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        let caller = self.caller(auth);
        let from_dir = self.dir_for(&caller, from_dirid, MAY_WRITE | MAY_EXEC).await?;
        let to_dir = self.dir_for(&caller, to_dirid, MAY_WRITE | MAY_EXEC).await?;
        let moved = self.removable(&caller, &from_dir, from_filename.as_ref()).await?;
        if to_filename.as_ref() == b"." || to_filename.as_ref() == b".." {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        match self.volume.lookup(to_dirid, to_filename.as_ref()).await {
            Ok(replaced) => deny_unless(
                access::may_unlink_from_sticky(&caller, &object(&to_dir), &object(&replaced)),
                nfsstat3::NFS3ERR_ACCES,
            )?,
            Err(FsError::NotFound) => {}
            Err(error) => return Err(stat(error)),
        }
        // A directory moved to another parent has its ".." rewritten.
        if moved.kind == FileKind::Dir && from_dirid != to_dirid {
            deny_unless(
                access::may(&caller, &object(&moved), MAY_WRITE),
                nfsstat3::NFS3ERR_ACCES,
            )?;
        }
        self.volume
            .rename(from_dirid, from_filename.as_ref(), to_dirid, to_filename.as_ref(), 0)
            .await
            .map_err(stat)
    }

    async fn readdir(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        // `start_after` is the cookie of the last entry the client has: a
        // sequence number, never a fileid (hard links share fileids).
        let cookie = start_after;
        let caller = self.caller(auth);
        let dir = self.dir_for(&caller, dirid, MAY_READ).await?;
        let wanted = max_entries.clamp(1, READDIR_ENTRIES_MAX);
        let mut entries = Vec::with_capacity(wanted);
        if cookie < DOT_COOKIE {
            entries.push(NfsDirEntry {
                fileid: dir.ino,
                name: b".".as_slice().into(),
                attr: self.fattr(&dir),
                cookie: DOT_COOKIE,
            });
        }
        if cookie < DOT_DOT_COOKIE && entries.len() < wanted {
            let parent = self.lookup_in(&dir, b"..").await?;
            entries.push(NfsDirEntry {
                fileid: parent.ino,
                name: b"..".as_slice().into(),
                attr: self.fattr(&parent),
                cookie: DOT_DOT_COOKIE,
            });
        }
        let room = wanted - entries.len();
        if room == 0 {
            return Ok(ReadDirResult { entries, end: false });
        }
        let listed = self
            .volume
            .readdir(dirid, cookie.max(DOT_DOT_COOKIE), room as u32)
            .await
            .map_err(stat_of_handle)?;
        let end = listed.len() < room;
        let with_attrs: Vec<_> = stream::iter(listed)
            .map(|entry| async move { self.entry_attr(entry.ino).await.map(|attr| (entry, attr)) })
            .buffered(READDIR_ATTR_FETCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        for (entry, attr) in with_attrs {
            let Some(attr) = attr else { continue };
            entries.push(NfsDirEntry {
                fileid: entry.ino,
                name: entry.name.into(),
                attr: self.fattr(&attr),
                cookie: entry.seq,
            });
        }
        Ok(ReadDirResult { entries, end })
    }

    async fn symlink(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        linkname: &filename3,
        symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let caller = self.caller(auth);
        let dir = self.dir_for(&caller, dirid, MAY_WRITE | MAY_EXEC).await?;
        let (gid, _) = Self::new_group(&caller, &dir);
        let attr = self
            .volume
            .symlink(dirid, linkname.as_ref(), symlink.as_ref(), caller.uid, gid)
            .await
            .map_err(stat)?;
        Ok((attr.ino, self.fattr(&attr)))
    }

    async fn readlink(&self, _auth: &AuthContext, id: fileid3) -> Result<nfspath3, nfsstat3> {
        let attr = self.attr_of(id).await?;
        if attr.kind != FileKind::Symlink {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        Ok(attr.symlink.into())
    }

    async fn mknod(
        &self,
        auth: &AuthContext,
        dirid: fileid3,
        filename: &filename3,
        ftype: ftype3,
        attr: &sattr3,
        spec: Option<&specdata3>,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let kind = match ftype {
            ftype3::NF3FIFO => FileKind::Fifo,
            ftype3::NF3SOCK => FileKind::Socket,
            ftype3::NF3CHR => FileKind::CharDevice,
            ftype3::NF3BLK => FileKind::BlockDevice,
            // RFC 1813: regular files, directories and symlinks have their own procedures.
            ftype3::NF3REG | ftype3::NF3DIR | ftype3::NF3LNK => return Err(nfsstat3::NFS3ERR_BADTYPE),
        };
        let is_device = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice);
        // As mknod(2): only root makes device nodes.
        deny_unless(!is_device || self.caller(auth).is_root(), nfsstat3::NFS3ERR_PERM)?;
        let rdev = match (is_device, spec) {
            (true, Some(spec)) => rdev(spec),
            _ => 0,
        };
        let perm = Self::requested_perm(&attr.mode, DEFAULT_FILE_PERM);
        let made = self.make_node(auth, dirid, filename, kind, perm, rdev).await?;
        Ok((made.ino, self.fattr(&made)))
    }

    async fn link(
        &self,
        auth: &AuthContext,
        fileid: fileid3,
        linkdirid: fileid3,
        linkname: &filename3,
    ) -> Result<(), nfsstat3> {
        let caller = self.caller(auth);
        let target = self.attr_of(fileid).await?;
        if target.kind == FileKind::Dir {
            return Err(nfsstat3::NFS3ERR_ISDIR);
        }
        self.dir_for(&caller, linkdirid, MAY_WRITE | MAY_EXEC).await?;
        let attr = self
            .volume
            .link(fileid, linkdirid, linkname.as_ref())
            .await
            .map_err(stat)?;
        self.learn(&attr);
        Ok(())
    }

    async fn commit(
        &self,
        _auth: &AuthContext,
        fileid: fileid3,
        _offset: u64,
        _count: u32,
    ) -> Result<writeverf3, nfsstat3> {
        self.attr_of(fileid).await?;
        // Every WRITE was durable before its reply; this flushes nothing
        // unless that promise is ever relaxed.
        self.volume.fsync(fileid).await.map_err(stat_of_handle)?;
        Ok(self.write_verifier)
    }

    fn get_write_verf(&self) -> writeverf3 {
        self.write_verifier
    }

    /// The library puts this in WRITE replies as the write verifier.
    fn serverid(&self) -> [u8; 8] {
        self.write_verifier
    }

    async fn fsinfo(&self, auth: &AuthContext, root_fileid: fileid3) -> Result<fsinfo3, nfsstat3> {
        let attr = self.getattr(auth, root_fileid).await?;
        Ok(fsinfo3 {
            obj_attributes: post_op_attr::attributes(attr),
            rtmax: TRANSFER_BYTES_MAX,
            rtpref: TRANSFER_BYTES_MAX,
            rtmult: BLOCK_BYTES as u32,
            wtmax: TRANSFER_BYTES_MAX,
            wtpref: TRANSFER_BYTES_MAX,
            wtmult: BLOCK_BYTES as u32,
            dtpref: 64 * 1024,
            maxfilesize: i64::MAX as u64,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF_LINK | FSF_SYMLINK | FSF_HOMOGENEOUS | FSF_CANSETTIME,
        })
    }

    async fn fsstat(&self, auth: &AuthContext, fileid: fileid3) -> Result<fsstat3, nfsstat3> {
        let attr = self.getattr(auth, fileid).await?;
        let stat = self.volume.statfs().await.map_err(stat)?;
        let files_free = u32::MAX as u64;
        Ok(fsstat3 {
            obj_attributes: post_op_attr::attributes(attr),
            tbytes: stat.capacity_bytes,
            fbytes: stat.free_bytes,
            abytes: stat.free_bytes,
            tfiles: stat.files + files_free,
            ffiles: files_free,
            afiles: files_free,
            invarsec: 0,
        })
    }

    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        let known = self
            .generations
            .lock()
            .expect("generation cache lock")
            .get(&id)
            .copied();
        // Every path that hands out a handle fetched the inode just before,
        // so it is known unless evicted in between.
        let generation = known.unwrap_or_else(|| {
            tracing::debug!(ino = id, "handle for an inode of unknown generation");
            FIRST_GENERATION
        });
        let handle = NfsHandle {
            volume_id: self.volume_id,
            ino: id,
            generation,
        };
        nfs_fh3 {
            data: handle.encode().to_vec(),
        }
    }

    fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        let handle = NfsHandle::decode(&fh.data).map_err(|_| nfsstat3::NFS3ERR_BADHANDLE)?;
        if handle.volume_id != self.volume_id {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        let known = self
            .generations
            .lock()
            .expect("generation cache lock")
            .get(&handle.ino)
            .copied();
        // An inode number that now has another generation was reused: the
        // client's file is gone. (An inode that no longer exists at all is
        // found when the procedure fetches it.)
        if known.is_some_and(|generation| generation != handle.generation) {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(handle.ino)
    }
}

/// A bound NFS gateway, ready to serve: clients connect to `listener`,
/// whose connections are relayed, record by checked record, to the
/// library's own listener on a loopback port (see `rpc_guard`).
pub struct Gateway {
    listener: tokio::net::TcpListener,
    library: NFSTcpListener<SohoNfs>,
    open_files: Arc<OpenFiles>,
    export: String,
    allowed_clients: Arc<[ipnet::IpNet]>,
}

/// After an accept error (e.g. out of file descriptors), wait this long
/// before accepting again rather than stopping the gateway.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Resolves the export path to a directory of the volume.
async fn resolve_export(volume: &Volume, export: &str) -> Result<Attr, GatewayError> {
    let failed = |source| GatewayError::Export {
        path: export.to_owned(),
        source,
    };
    let mut attr = volume.getattr(ROOT_INO).await.map_err(failed)?;
    for component in export.split('/').filter(|c| !c.is_empty() && *c != ".") {
        attr = volume.lookup(attr.ino, component.as_bytes()).await.map_err(failed)?;
    }
    if attr.kind != FileKind::Dir {
        return Err(GatewayError::ExportNotDir(export.to_owned()));
    }
    Ok(attr)
}

impl Gateway {
    /// Resolves the export and binds the listening socket (MOUNT, NFS and
    /// portmap all on this one port).
    pub async fn bind(volume: Volume, options: &GatewayOptions) -> Result<Gateway, GatewayError> {
        let root = resolve_export(&volume, &options.export).await?;
        let fs = SohoNfs::new(volume, &root, options.root_squash);
        let open_files = fs.open_files();
        let bind_failed = |addr, source| GatewayError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| bind_failed(options.listen, source))?;
        let library_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut library = NFSTcpListener::bind(library_addr, fs)
            .await
            .map_err(|source| bind_failed(library_addr, source))?;
        // Clients mount the export by its path in the volume.
        library.with_export_name(&options.export);
        Ok(Gateway {
            listener,
            library,
            open_files,
            export: format!("/{}", options.export.trim_matches('/')),
            allowed_clients: options.allowed_clients.clone().into(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The path clients pass to MOUNT.
    pub fn export_path(&self) -> &str {
        &self.export
    }

    /// Serves until `shutdown` is cancelled, then releases every file it
    /// held open in the volume.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let backend = SocketAddr::new(self.library.get_listen_ip(), self.library.get_listen_port());
        let library = self.library;
        let library_shutdown = shutdown.clone();
        let library_task = tokio::spawn(async move { library.handle_with_shutdown(library_shutdown).await });
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        if !client_allowed(&self.allowed_clients, peer.ip()) {
                            tracing::warn!(%peer, "refused an NFS connection: client address not allowed (--allow)");
                            continue;
                        }
                        let connection_shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = connection_shutdown.cancelled() => {}
                                () = rpc_guard::relay(client, backend) => {}
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept an NFS connection");
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    }
                },
            }
        }
        let served = match library_task.await {
            Ok(served) => served,
            Err(join) => Err(std::io::Error::other(format!("NFS library task: {join}"))),
        };
        self.open_files.close_all().await;
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_admitted_by_network_including_ipv4_on_ipv6_sockets() {
        let allowed: Vec<ipnet::IpNet> = vec!["192.168.1.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        assert!(client_allowed(&allowed, ip("192.168.1.77")));
        assert!(client_allowed(&allowed, ip("::ffff:192.168.1.77")));
        assert!(client_allowed(&allowed, ip("::1")));
        assert!(!client_allowed(&allowed, ip("192.168.2.1")));
        assert!(!client_allowed(&allowed, ip("127.0.0.1")));
        let defaults = default_allowed_clients();
        assert!(client_allowed(&defaults, ip("127.0.0.1")));
        assert!(client_allowed(&defaults, ip("10.1.2.3")));
        assert!(client_allowed(&defaults, ip("172.31.0.9")));
        assert!(!client_allowed(&defaults, ip("172.32.0.9")));
        assert!(!client_allowed(&defaults, ip("8.8.8.8")));
        assert!(!client_allowed(&defaults, ip("2001:db8::1")));
    }

    #[test]
    fn device_numbers_round_trip_through_specdata() {
        for (major, minor) in [(1u32, 3u32), (8, 17), (259, 0x12345), (0xfff, 0xfffff)] {
            let spec = specdata3 {
                specdata1: major,
                specdata2: minor,
            };
            let back = specdata(rdev(&spec));
            assert_eq!((back.specdata1, back.specdata2), (major, minor));
        }
    }

    #[test]
    fn times_convert_both_ways_and_clamp_before_the_epoch() {
        let time = nfs_time(1_700_000_000_123_456_789);
        assert_eq!((time.seconds, time.nseconds), (1_700_000_000, 123_456_789));
        assert_eq!(time_ns(time), 1_700_000_000_123_456_789);
        let before = nfs_time(-5);
        assert_eq!((before.seconds, before.nseconds), (0, 0));
    }

    #[test]
    fn not_found_on_a_handle_is_stale_and_in_a_directory_is_noent() {
        assert!(matches!(stat_of_handle(FsError::NotFound), nfsstat3::NFS3ERR_STALE));
        assert!(matches!(nfsstat(&FsError::NotFound), nfsstat3::NFS3ERR_NOENT));
        assert!(matches!(stat_of_handle(FsError::Exists), nfsstat3::NFS3ERR_EXIST));
    }
}
