//! Who the caller is (AUTH_SYS, after root squash) and what the mode bits
//! let them do: pure functions, tested here, used by every NFS procedure.
//!
//! The rules are POSIX's: the owner class if the caller owns the file, else
//! the group class if the caller is in its group, else other. Root (only
//! when root squash is off) may read and write anything, and may execute a
//! regular file only when some execute bit is set; it may always search a
//! directory.

/// The uid and gid root is mapped to under root squash (`nobody`/`nogroup`).
pub const SQUASHED_ID: u32 = 65534;
const ROOT_ID: u32 = 0;

pub const MAY_READ: u8 = 4;
pub const MAY_WRITE: u8 = 2;
/// Execute a file, or search (look up names in) a directory.
pub const MAY_EXEC: u8 = 1;

/// The caller of one request, as the permission checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    /// The caller an AUTH_SYS credential names. With `root_squash`, uid 0
    /// becomes [`SQUASHED_ID`] and so do gid 0 and group 0 in the list, as
    /// Linux's knfsd does: a squashed root must not keep root's group.
    pub fn from_auth_sys(uid: u32, gid: u32, groups: &[u32], root_squash: bool) -> Caller {
        let squash = |id: u32| if root_squash && id == ROOT_ID { SQUASHED_ID } else { id };
        Caller {
            uid: squash(uid),
            gid: if root_squash && uid == ROOT_ID {
                squash(gid)
            } else {
                gid
            },
            groups: groups
                .iter()
                .map(|g| if root_squash && uid == ROOT_ID { squash(*g) } else { *g })
                .collect(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == ROOT_ID
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    pub fn owns(&self, object: &Object) -> bool {
        self.uid == object.uid
    }
}

/// What the checks need of a file: owner, group, permission bits, kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    pub uid: u32,
    pub gid: u32,
    /// The low 12 bits of the mode (permissions, setuid, setgid, sticky).
    pub perm: u16,
    pub is_dir: bool,
}

const STICKY: u16 = 0o1000;

/// Whether `caller` may do every access in `want` (a mask of `MAY_*`).
pub fn may(caller: &Caller, object: &Object, want: u8) -> bool {
    if caller.is_root() {
        let exec_ok = want & MAY_EXEC == 0 || object.is_dir || object.perm & 0o111 != 0;
        return exec_ok;
    }
    let class_bits = if caller.owns(object) {
        (object.perm >> 6) & 0o7
    } else if caller.in_group(object.gid) {
        (object.perm >> 3) & 0o7
    } else {
        object.perm & 0o7
    } as u8;
    class_bits & want == want
}

/// Whether `caller` may remove or rename away an entry naming `victim` from
/// `dir`. The caller must be able to write and search `dir` (checked apart);
/// in a sticky directory they must also own the entry or the directory.
pub fn may_unlink_from_sticky(caller: &Caller, dir: &Object, victim: &Object) -> bool {
    dir.perm & STICKY == 0 || caller.is_root() || caller.owns(dir) || caller.owns(victim)
}

/// Whether `caller` may change the mode, or set times to given values:
/// only the owner or root.
pub fn may_change_owner_fields(caller: &Caller, object: &Object) -> bool {
    caller.is_root() || caller.owns(object)
}

/// Whether `caller` may give `object` the owner `new_uid` and group
/// `new_gid` (`None`: unchanged). Only root changes the owner; the owner may
/// change the group to one of their own groups.
pub fn may_chown(caller: &Caller, object: &Object, new_uid: Option<u32>, new_gid: Option<u32>) -> bool {
    if caller.is_root() {
        return true;
    }
    // As Linux's chown_ok: even naming the current owner needs ownership.
    let uid_ok = new_uid.is_none_or(|uid| caller.owns(object) && uid == object.uid);
    let gid_ok = new_gid.is_none_or(|gid| caller.owns(object) && (gid == object.gid || caller.in_group(gid)));
    uid_ok && gid_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller::from_auth_sys(uid, gid, groups, true)
    }

    fn file(uid: u32, gid: u32, perm: u16) -> Object {
        Object {
            uid,
            gid,
            perm,
            is_dir: false,
        }
    }

    fn dir(uid: u32, gid: u32, perm: u16) -> Object {
        Object {
            uid,
            gid,
            perm,
            is_dir: true,
        }
    }

    #[test]
    fn the_first_matching_class_decides_even_when_a_later_one_grants_more() {
        // Owner class 0 denies the owner even though other may read.
        let object = file(1000, 100, 0o044);
        assert!(!may(&user(1000, 100, &[]), &object, MAY_READ));
        assert!(may(&user(1001, 100, &[]), &object, MAY_READ));
        assert!(may(&user(1002, 200, &[]), &object, MAY_READ));
        // Group class 0 denies a group member even though other may write.
        let object = file(1000, 100, 0o602);
        assert!(!may(&user(1001, 200, &[100]), &object, MAY_WRITE));
        assert!(may(&user(1002, 200, &[]), &object, MAY_WRITE));
    }

    #[test]
    fn every_wanted_bit_is_needed() {
        let object = file(1000, 100, 0o640);
        let owner = user(1000, 100, &[]);
        assert!(may(&owner, &object, MAY_READ | MAY_WRITE));
        assert!(!may(&owner, &object, MAY_READ | MAY_EXEC));
        let member = user(1001, 999, &[5, 100]);
        assert!(may(&member, &object, MAY_READ));
        assert!(!may(&member, &object, MAY_WRITE));
        assert!(!may(&user(1002, 999, &[]), &object, MAY_READ));
    }

    #[test]
    fn root_squash_maps_root_and_its_groups_to_nobody() {
        let squashed = Caller::from_auth_sys(0, 0, &[0, 10], true);
        assert_eq!(
            squashed,
            Caller {
                uid: SQUASHED_ID,
                gid: SQUASHED_ID,
                groups: vec![SQUASHED_ID, 10]
            }
        );
        assert!(!may(&squashed, &file(0, 0, 0o600), MAY_READ));
        assert!(may(&squashed, &file(0, 0, 0o604), MAY_READ));
        // A non-root caller in group 0 keeps it.
        assert_eq!(Caller::from_auth_sys(5, 0, &[0], true).groups, vec![0]);
        // Without squash, root stays root.
        assert!(Caller::from_auth_sys(0, 0, &[], false).is_root());
    }

    #[test]
    fn root_bypasses_read_and_write_but_not_exec_of_a_file() {
        let root = Caller::from_auth_sys(0, 0, &[], false);
        assert!(may(&root, &file(1000, 100, 0o000), MAY_READ | MAY_WRITE));
        assert!(!may(&root, &file(1000, 100, 0o644), MAY_EXEC));
        assert!(may(&root, &file(1000, 100, 0o010), MAY_EXEC));
        assert!(may(&root, &dir(1000, 100, 0o000), MAY_EXEC | MAY_WRITE));
    }

    #[test]
    fn sticky_directories_keep_others_entries() {
        let tmp = dir(0, 0, 0o1777);
        let alice = user(1000, 100, &[]);
        let bob = user(1001, 100, &[]);
        let alices_file = file(1000, 100, 0o666);
        assert!(may_unlink_from_sticky(&alice, &tmp, &alices_file));
        assert!(!may_unlink_from_sticky(&bob, &tmp, &alices_file));
        assert!(may_unlink_from_sticky(&bob, &dir(0, 0, 0o777), &alices_file));
        assert!(may_unlink_from_sticky(&bob, &dir(1001, 0, 0o1777), &alices_file));
    }

    #[test]
    fn only_root_gives_away_files_and_owners_pick_their_own_groups() {
        let object = file(1000, 100, 0o644);
        let owner = user(1000, 100, &[200]);
        let stranger = user(1001, 200, &[]);
        assert!(!may_chown(&owner, &object, Some(1001), None));
        assert!(may_chown(&owner, &object, Some(1000), Some(200)));
        assert!(!may_chown(&owner, &object, None, Some(300)));
        assert!(!may_chown(&stranger, &object, None, Some(200)));
        assert!(may_chown(&stranger, &object, None, None));
        assert!(may_chown(
            &Caller::from_auth_sys(0, 0, &[], false),
            &object,
            Some(5),
            Some(5)
        ));
        assert!(may_change_owner_fields(&owner, &object));
        assert!(!may_change_owner_fields(&stranger, &object));
    }
}
