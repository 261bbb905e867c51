//! The check of an ONC RPC call record (RFC 5531) before the NFS library
//! decodes it.
//!
//! `zerofs_nfsserve` trusts the lengths on the wire: it sizes every
//! variable-length XDR item (credential body, machine name, group list, file
//! handle, name, path, WRITE data) by the length in the bytes before reading
//! them, so a 40-byte record that claims a 4 GiB credential makes it allocate
//! 4 GiB. [`check_call`] decodes exactly what the library decodes, in its
//! order — the call header and credential always, the arguments of NFSv3 and
//! MOUNT procedures that carry variable-length items — and says whether every
//! length fits in the record and in its protocol bound. What it passes, the
//! library may still reject (GARBAGE_ARGS, BADHANDLE). The NFS gateway's
//! relay (`sohofs-nfs`, `rpc_guard`) calls it on every record; it lives here,
//! with the other decoders of outside bytes, so that it is fuzzed.

/// The most bytes the NFS gateway reads or writes in one READ or WRITE.
pub const NFS_TRANSFER_BYTES_MAX: u32 = 1024 * 1024;
/// The largest call record accepted: a full WRITE plus room for its header.
pub const RPC_RECORD_BYTES_MAX: usize = NFS_TRANSFER_BYTES_MAX as usize + 64 * 1024;
/// RFC 5531: an opaque_auth body holds at most 400 bytes.
const AUTH_BODY_BYTES_MAX: usize = 400;
/// RFC 5531 AUTH_SYS: machine name at most 255 bytes, at most 16 groups.
const MACHINE_NAME_BYTES_MAX: usize = 255;
const AUTH_SYS_GROUPS_MAX: usize = 16;
/// RFC 1813 NFS3_FHSIZE.
const FILE_HANDLE_BYTES_MAX: usize = 64;
/// RFC 1813 MNTPATHLEN (also the bound we put on names and symlink paths).
const PATH_BYTES_MAX: usize = 1024;

const MSG_CALL: u32 = 0;
const AUTH_UNIX: u32 = 1;
const NFS_PROGRAM: u32 = 100_003;
const NFS_VERSION: u32 = 3;
const MOUNT_PROGRAM: u32 = 100_005;
const MOUNTPROC_MNT: u32 = 1;
const MOUNTPROC_UMNT: u32 = 3;

/// Why a record is not relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("record ends inside {0}")]
    Truncated(&'static str),
    #[error("{what} of {bytes} bytes exceeds {max}")]
    TooLong {
        what: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("not a call (message type {0})")]
    NotACall(u32),
}

/// A reader over one record that refuses to go past its end.
struct Xdr<'a> {
    bytes: &'a [u8],
}

impl<'a> Xdr<'a> {
    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let (word, rest) = self.bytes.split_first_chunk::<4>().ok_or(Malformed::Truncated(what))?;
        self.bytes = rest;
        Ok(u32::from_be_bytes(*word))
    }

    fn skip(&mut self, len: usize, what: &'static str) -> Result<(), Malformed> {
        self.bytes = self.bytes.get(len..).ok_or(Malformed::Truncated(what))?;
        Ok(())
    }

    /// A variable-length opaque (or string) of at most `max` bytes.
    fn opaque(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(Malformed::TooLong { what, bytes: len, max });
        }
        let padded = len.div_ceil(4) * 4;
        let body = self.bytes.get(..len).ok_or(Malformed::Truncated(what))?;
        self.skip(padded, what)?;
        Ok(body)
    }

    fn file_handle(&mut self) -> Result<(), Malformed> {
        self.opaque(FILE_HANDLE_BYTES_MAX, "file handle").map(|_| ())
    }

    fn name(&mut self) -> Result<(), Malformed> {
        self.opaque(PATH_BYTES_MAX, "name").map(|_| ())
    }

    /// An optional value: a bool (the library takes any non-zero as true),
    /// then `len` bytes when present.
    fn optional(&mut self, len: usize, what: &'static str) -> Result<(), Malformed> {
        if self.u32(what)? != 0 {
            self.skip(len, what)?;
        }
        Ok(())
    }

    fn sattr3(&mut self) -> Result<(), Malformed> {
        self.optional(4, "mode")?;
        self.optional(4, "uid")?;
        self.optional(4, "gid")?;
        self.optional(8, "size")?;
        for what in ["atime", "mtime"] {
            // DONT_CHANGE, SET_TO_SERVER_TIME, SET_TO_CLIENT_TIME(nfstime3).
            if self.u32(what)? == 2 {
                self.skip(8, what)?;
            }
        }
        Ok(())
    }

    fn auth(&mut self, what: &'static str) -> Result<(), Malformed> {
        let flavor = self.u32(what)?;
        let body = self.opaque(AUTH_BODY_BYTES_MAX, what)?;
        if flavor == AUTH_UNIX {
            let mut body = Xdr { bytes: body };
            body.u32("AUTH_SYS stamp")?;
            body.opaque(MACHINE_NAME_BYTES_MAX, "AUTH_SYS machine name")?;
            body.skip(8, "AUTH_SYS uid and gid")?;
            let groups = body.u32("AUTH_SYS groups")? as usize;
            if groups > AUTH_SYS_GROUPS_MAX {
                return Err(Malformed::TooLong {
                    what: "AUTH_SYS group list",
                    bytes: groups,
                    max: AUTH_SYS_GROUPS_MAX,
                });
            }
            body.skip(groups * 4, "AUTH_SYS groups")?;
        }
        Ok(())
    }
}

/// Whether the library can decode `record` (one whole RPC record) without
/// sizing anything by a length that the record cannot hold.
pub fn check_call(record: &[u8]) -> Result<(), Malformed> {
    let mut xdr = Xdr { bytes: record };
    xdr.u32("xid")?;
    let message_type = xdr.u32("message type")?;
    if message_type != MSG_CALL {
        return Err(Malformed::NotACall(message_type));
    }
    xdr.u32("RPC version")?;
    let program = xdr.u32("program")?;
    let version = xdr.u32("version")?;
    let procedure = xdr.u32("procedure")?;
    xdr.auth("credential")?;
    xdr.auth("verifier")?;
    match (program, version) {
        (NFS_PROGRAM, NFS_VERSION) => check_nfs_arguments(&mut xdr, procedure),
        // The library does not look at the MOUNT version.
        (MOUNT_PROGRAM, _) if procedure == MOUNTPROC_MNT || procedure == MOUNTPROC_UMNT => {
            xdr.opaque(PATH_BYTES_MAX, "mount path").map(|_| ())
        }
        // Fixed-size arguments, or none, or answered without decoding them.
        _ => Ok(()),
    }
}

/// The variable-length items of each NFSv3 procedure's arguments (RFC 1813);
/// fixed-size fields after the last of them need no check.
fn check_nfs_arguments(xdr: &mut Xdr<'_>, procedure: u32) -> Result<(), Malformed> {
    match procedure {
        // NULL, and procedures the library does not know (PROC_UNAVAIL).
        0 | 22.. => Ok(()),
        // GETATTR, ACCESS, READLINK, READ, READDIR, READDIRPLUS, FSSTAT,
        // FSINFO, PATHCONF, COMMIT: a handle, then fixed-size fields.
        1 | 4 | 5 | 6 | 16 | 17 | 18 | 19 | 20 | 21 => xdr.file_handle(),
        // SETATTR: handle, sattr3, guard.
        2 => {
            xdr.file_handle()?;
            xdr.sattr3()?;
            xdr.optional(8, "guard")
        }
        // LOOKUP, REMOVE, RMDIR.
        3 | 12 | 13 => {
            xdr.file_handle()?;
            xdr.name()
        }
        // WRITE: handle, offset, count, stable, data.
        7 => {
            xdr.file_handle()?;
            xdr.skip(16, "WRITE offset, count and stability")?;
            xdr.opaque(NFS_TRANSFER_BYTES_MAX as usize, "WRITE data").map(|_| ())
        }
        // CREATE: where, how (UNCHECKED or GUARDED with sattr3, EXCLUSIVE with a verifier).
        8 => {
            xdr.file_handle()?;
            xdr.name()?;
            match xdr.u32("create mode")? {
                2 => xdr.skip(8, "create verifier"),
                _ => xdr.sattr3(),
            }
        }
        // MKDIR.
        9 => {
            xdr.file_handle()?;
            xdr.name()?;
            xdr.sattr3()
        }
        // SYMLINK: where, sattr3, target path.
        10 => {
            xdr.file_handle()?;
            xdr.name()?;
            xdr.sattr3()?;
            xdr.opaque(PATH_BYTES_MAX, "symlink target").map(|_| ())
        }
        // MKNOD: where, type, then per type.
        11 => {
            xdr.file_handle()?;
            xdr.name()?;
            match xdr.u32("node type")? {
                // NF3BLK, NF3CHR: sattr3 and specdata3.
                3 | 4 => {
                    xdr.sattr3()?;
                    xdr.skip(8, "device numbers")
                }
                // NF3SOCK, NF3FIFO.
                6 | 7 => xdr.sattr3(),
                _ => Ok(()),
            }
        }
        // RENAME: from (handle, name), to (handle, name).
        14 => {
            xdr.file_handle()?;
            xdr.name()?;
            xdr.file_handle()?;
            xdr.name()
        }
        // LINK: file handle, link (handle, name).
        15 => {
            xdr.file_handle()?;
            xdr.file_handle()?;
            xdr.name()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|word| word.to_be_bytes()).collect()
    }

    /// A call header with AUTH_NULL credential and verifier.
    fn call(program: u32, version: u32, procedure: u32) -> Vec<u8> {
        words(&[1, MSG_CALL, 2, program, version, procedure, 0, 0, 0, 0])
    }

    fn with(mut head: Vec<u8>, tail: &[u32]) -> Vec<u8> {
        head.extend(words(tail));
        head
    }

    #[test]
    fn a_well_formed_getattr_and_write_pass() {
        let getattr = with(call(NFS_PROGRAM, 3, 1), &[8, 0xdead, 0xbeef]);
        assert_eq!(check_call(&getattr), Ok(()));
        let mut write = with(call(NFS_PROGRAM, 3, 7), &[4, 7, 0, 0, 3, 2, 3]);
        write.extend_from_slice(b"abc\0");
        assert_eq!(check_call(&write), Ok(()));
    }

    #[test]
    fn a_credential_longer_than_the_record_is_refused_before_anything_is_sized() {
        // The record that made the library allocate 4 GiB and abort.
        let record = words(&[8, MSG_CALL, 2, NFS_PROGRAM, 3, 1, AUTH_UNIX, 0xffff_fff0, 0, 0]);
        assert!(matches!(
            check_call(&record),
            Err(Malformed::TooLong { what: "credential", .. })
        ));
    }

    #[test]
    fn auth_sys_bodies_are_checked_inside() {
        let groups = words(&[
            1,
            MSG_CALL,
            2,
            NFS_PROGRAM,
            3,
            0,
            AUTH_UNIX,
            20,
            0,
            0,
            0,
            0,
            0x4000_0000,
        ]);
        assert!(matches!(
            check_call(&groups),
            Err(Malformed::TooLong {
                what: "AUTH_SYS group list",
                ..
            })
        ));
        let name = words(&[1, MSG_CALL, 2, NFS_PROGRAM, 3, 0, AUTH_UNIX, 8, 0, 0xffff_0000]);
        assert!(matches!(
            check_call(&name),
            Err(Malformed::TooLong {
                what: "AUTH_SYS machine name",
                ..
            })
        ));
        let ok = words(&[
            1,
            MSG_CALL,
            2,
            NFS_PROGRAM,
            3,
            0,
            AUTH_UNIX,
            28,
            1,
            4,
            0x6869_7374,
            1000,
            1000,
            1,
            1000,
            0,
            0,
        ]);
        assert_eq!(check_call(&ok), Ok(()));
    }

    #[test]
    fn arguments_that_claim_more_than_the_record_are_refused() {
        let handle = with(call(NFS_PROGRAM, 3, 1), &[0xffff_fff0]);
        assert!(matches!(check_call(&handle), Err(Malformed::TooLong { .. })));
        let name = with(call(NFS_PROGRAM, 3, 3), &[0, 900]);
        assert_eq!(check_call(&name), Err(Malformed::Truncated("name")));
        let path = with(call(MOUNT_PROGRAM, 3, MOUNTPROC_MNT), &[0x7fff_ffff]);
        assert!(matches!(check_call(&path), Err(Malformed::TooLong { .. })));
        let symlink_target = with(call(NFS_PROGRAM, 3, 10), &[0, 4, 0x6162_6364, 0, 0, 0, 0, 0, 0, 5000]);
        assert!(matches!(
            check_call(&symlink_target),
            Err(Malformed::TooLong {
                what: "symlink target",
                ..
            })
        ));
    }

    #[test]
    fn truncated_headers_and_replies_are_refused_and_other_programs_pass() {
        assert_eq!(check_call(&[0, 0, 0]), Err(Malformed::Truncated("xid")));
        assert_eq!(check_call(&words(&[1, 1])), Err(Malformed::NotACall(1)));
        assert_eq!(check_call(&call(0x2000_0001, 1, 0)), Ok(()));
        assert_eq!(check_call(&call(NFS_PROGRAM, 2, 1)), Ok(()));
    }

    #[test]
    fn the_fuzz_seeds_are_well_formed_calls() {
        // They seed fuzz/fuzz_targets/rpc_call.rs: each must reach the end of
        // its procedure's arguments, or the fuzzer starts from nothing.
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rpc_call");
        let mut checked = 0;
        for entry in std::fs::read_dir(&seeds).expect("fuzz/seeds/rpc_call") {
            let path = entry.expect("a seed").path();
            let record = std::fs::read(&path).expect("read a seed");
            assert_eq!(check_call(&record), Ok(()), "{}", path.display());
            assert!(
                check_call(&record[..record.len() - 1]).is_err(),
                "{} cut short",
                path.display()
            );
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} seeds");
    }
}
