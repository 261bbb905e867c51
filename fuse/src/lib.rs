//! sohofs-fuse adapts the client volume API of `sohofs-storage` to the Linux
//! kernel's FUSE protocol with `fuser`. It owns nothing but the translation:
//! attributes, errno values and the handing of each request to the tokio
//! runtime so that requests are served concurrently. Permission checks are
//! the kernel's (`default_permissions`).

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use sohofs_storage::volume::{Attr, FileKind, SetAttr, TimeSet, Volume};
use sohofs_storage::FsError;
use tokio::runtime::Handle;

/// How long the kernel may cache entries, and attributes of all but files.
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// Regular files' attributes are not cached: close-to-open consistency needs
/// an open on one client to see the size another client left at its close.
pub const FILE_ATTR_TTL: Duration = Duration::ZERO;

fn attr_ttl(attr: &Attr) -> &'static Duration {
    if attr.kind == FileKind::File {
        &FILE_ATTR_TTL
    } else {
        &ATTR_TTL
    }
}
/// Largest write request the kernel sends.
pub const MAX_WRITE_BYTES: u32 = 1024 * 1024;
pub const MAX_READAHEAD_BYTES: u32 = 1024 * 1024;
/// Entries fetched from meta per readdir page.
const READDIR_PAGE_ENTRIES: u32 = 512;
const BLOCK_BYTES: u64 = 4096;
/// `system.posix_acl_access` and `system.posix_acl_default`.
const POSIX_ACL_PREFIX: &[u8] = b"system.posix_acl_";

/// The errno for each kind of volume error. No `_` arm: a new kind must be
/// mapped here before this crate builds.
pub fn errno(error: &FsError) -> Errno {
    let code = match error {
        FsError::NotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::Invalid(_) => libc::EINVAL,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::NoSpace(_) => libc::ENOSPC,
        FsError::Io(_) => libc::EIO,
        FsError::Corrupt(_) => libc::EIO,
        FsError::Stale => libc::ESTALE,
        FsError::Permission => libc::EPERM,
        FsError::NoXattr => libc::ENODATA,
        FsError::Range => libc::ERANGE,
        FsError::Unavailable(_) => libc::EIO,
        FsError::CrossDevice => libc::EXDEV,
        FsError::Protocol(_) => libc::EIO,
        FsError::TooBig => libc::EFBIG,
        FsError::Access => libc::EACCES,
    };
    Errno::from_i32(code)
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_ns(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLOCK_BYTES as u32,
        flags: 0,
    }
}

fn time_set(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(at) => TimeSet::At(time_ns(at)),
    }
}

/// The FUSE file system over a [`Volume`].
pub struct SohoFs {
    volume: Volume,
    runtime: Handle,
    next_handle: AtomicU64,
}

impl SohoFs {
    pub fn new(volume: Volume, runtime: Handle) -> Self {
        SohoFs {
            volume,
            runtime,
            next_handle: AtomicU64::new(1),
        }
    }

    /// Runs `work` on the runtime; the FUSE thread goes on to the next request.
    fn spawn<F>(&self, work: impl FnOnce(Volume) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.volume.clone()));
    }

    fn handle(&self) -> FileHandle {
        FileHandle(self.next_handle.fetch_add(1, Ordering::Relaxed))
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<Attr, FsError>) {
    match result {
        Ok(attr) => reply.entry_with_ttls(
            attr_ttl(&attr),
            &ATTR_TTL,
            &file_attr(&attr),
            Generation(attr.generation),
        ),
        Err(error) => reply.error(errno(&error)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), FsError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(errno(&error)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, FsError>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(value) => reply.data(&value),
        Err(error) => reply.error(errno(&error)),
    }
}

impl Filesystem for SohoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setter answers with the nearest value the kernel allows when it
        // refuses ours; that value is then in force, which is what we want.
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.set_max_readahead(MAX_READAHEAD_BYTES);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.spawn(|v| async move { reply_entry(reply, v.lookup(parent.0, &name).await) });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(|v| async move {
            match v.getattr(ino.0).await {
                Ok(attr) => reply.attr(attr_ttl(&attr), &file_attr(&attr)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        self.spawn(|v| async move {
            match v.setattr(ino.0, attr).await {
                Ok(attr) => reply.attr(attr_ttl(&attr), &file_attr(&attr)),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(|v| async move {
            match v.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let Some(kind) = FileKind::from_mode(mode) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let perm = (mode & !umask & 0o7777) as u16;
        let (uid, gid, name) = (req.uid(), req.gid(), name.as_bytes().to_vec());
        self.spawn(|v| async move { reply_entry(reply, v.mknod(parent.0, &name, kind, perm, uid, gid, rdev).await) });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let perm = (mode & !umask & 0o7777) as u16;
        let (uid, gid, name) = (req.uid(), req.gid(), name.as_bytes().to_vec());
        self.spawn(|v| async move { reply_entry(reply, v.mkdir(parent.0, &name, perm, uid, gid).await) });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(|v| async move { reply_empty(reply, v.unlink(parent.0, &name).await) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(|v| async move { reply_empty(reply, v.rmdir(parent.0, &name).await) });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (uid, gid) = (req.uid(), req.gid());
        let (name, target) = (link_name.as_bytes().to_vec(), target.as_os_str().as_bytes().to_vec());
        self.spawn(|v| async move { reply_entry(reply, v.symlink(parent.0, &name, &target, uid, gid).await) });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let flags = flags.bits();
        self.spawn(
            |v| async move { reply_empty(reply, v.rename(parent.0, &name, newparent.0, &new_name, flags).await) },
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let name = newname.as_bytes().to_vec();
        self.spawn(|v| async move { reply_entry(reply, v.link(ino.0, newparent.0, &name).await) });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.handle();
        self.spawn(|v| async move {
            match v.open(ino.0).await {
                Ok(()) => reply.opened(fh, FopenFlags::empty()),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|v| async move {
            match v.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The request buffer belongs to fuser's reader thread: one copy here.
        let data = data.to_vec();
        let append = flags.0 & libc::O_APPEND != 0;
        self.spawn(|v| async move {
            // O_APPEND: the end of the file is ours to find, not the kernel's,
            // whose size may predate another client's last close.
            let written = if append {
                v.append(ino.0, &data).await.map(|_| data.len())
            } else {
                v.write(ino.0, offset, &data).await
            };
            match written {
                Ok(written) => reply.written(written as u32),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(|v| async move { reply_empty(reply, v.flush(ino.0).await) });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|v| async move { reply_empty(reply, v.release(ino.0).await) });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|v| async move { reply_empty(reply, v.fsync(ino.0).await) });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(|v| async move {
            let dir = match v.getattr(ino.0).await {
                Ok(dir) => dir,
                Err(error) => return reply.error(errno(&error)),
            };
            // Offsets 1 and 2 are "." and ".."; entries use their sequence number.
            if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            if offset < 2 && reply.add(INodeNo(dir.parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            let mut after = offset.max(2);
            loop {
                let entries = match v.readdir(ino.0, after, READDIR_PAGE_ENTRIES).await {
                    Ok(entries) => entries,
                    Err(error) => return reply.error(errno(&error)),
                };
                if entries.is_empty() {
                    return reply.ok();
                }
                for entry in entries {
                    let name = OsStr::from_bytes(&entry.name);
                    if reply.add(INodeNo(entry.ino), entry.seq, file_type(entry.kind), name) {
                        return reply.ok();
                    }
                    after = entry.seq;
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // A protected directory this machine is not approved for is refused
        // here, so that `ls` fails at opendir with EACCES.
        self.spawn(|v| async move {
            match v.open_dir(ino.0).await {
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|v| async move { reply_empty(reply, v.fsync_dir().await) });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|v| async move {
            match v.statfs().await {
                Ok(stat) => {
                    let blocks = stat.capacity_bytes / BLOCK_BYTES;
                    let free = stat.free_bytes / BLOCK_BYTES;
                    let files_free = u32::MAX as u64;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        stat.files + files_free,
                        files_free,
                        BLOCK_BYTES as u32,
                        255,
                        BLOCK_BYTES as u32,
                    )
                }
                Err(error) => reply.error(errno(&error)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name.as_bytes().starts_with(POSIX_ACL_PREFIX) {
            // Not supported: storing an ACL as a plain xattr would leave the mode
            // bits unchanged, and tools such as `cp -a` rely on it to set them.
            // With EOPNOTSUPP they fall back to chmod.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        let flags = flags as u32;
        self.spawn(|v| async move {
            match v.set_xattr(ino.0, &name, &value, flags).await {
                // setxattr(2) says E2BIG for a value over the file system's limit.
                Err(FsError::TooBig) => reply.error(Errno::from_i32(libc::E2BIG)),
                result => reply_empty(reply, result),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        self.spawn(|v| async move { reply_xattr(reply, size, v.get_xattr(ino.0, &name).await) });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(|v| async move {
            let joined = v.list_xattr(ino.0).await.map(|names| {
                let mut out = Vec::new();
                for name in names {
                    out.extend_from_slice(&name);
                    out.push(0);
                }
                out
            });
            reply_xattr(reply, size, joined)
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.spawn(|v| async move { reply_empty(reply, v.remove_xattr(ino.0, &name).await) });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctls; ENOTTY is what isatty() and friends expect to hear.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked already.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let (uid, gid, name) = (req.uid(), req.gid(), name.as_bytes().to_vec());
        let fh = self.handle();
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(|v| async move {
            let created = match v.create(parent.0, &name, perm, uid, gid).await {
                // Another client made it since the kernel's lookup: without
                // O_EXCL, open what is there, as a local file system would.
                Err(FsError::Exists) if !exclusive => match v.lookup(parent.0, &name).await {
                    Ok(attr) if attr.kind == FileKind::File => v.open(attr.ino).await.map(|()| attr),
                    Ok(attr) if attr.kind == FileKind::Dir => Err(FsError::IsDir),
                    Ok(_) => Err(FsError::Exists),
                    Err(error) => Err(error),
                },
                other => other,
            };
            match created {
                Ok(attr) => reply.created(
                    attr_ttl(&attr),
                    &file_attr(&attr),
                    Generation(attr.generation),
                    fh,
                    FopenFlags::empty(),
                ),
                Err(error) => reply.error(errno(&error)),
            }
        });
    }
}

/// Mounts `volume` at `mountpoint` and serves it on background threads until
/// the returned session is unmounted or dropped.
pub fn mount(volume: Volume, runtime: Handle, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("sohofs".into()),
        MountOption::Subtype("sohofs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    if nix::unistd::Uid::effective().is_root() {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(2);
    fuser::spawn_mount(SohoFs::new(volume, runtime), mountpoint, &config)
}
