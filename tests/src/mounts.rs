//! What is mounted where, read from `/proc/self/mountinfo`, and the last-resort
//! lazy unmount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One line of mountinfo: the mount point and the file system type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Every mount this process can see.
pub fn mount_table() -> Vec<MountEntry> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    mountinfo.lines().filter_map(parse_mountinfo_line).collect()
}

/// A mountinfo line is `id parent major:minor root mount_point options
/// [optional fields...] - fs_type source super_options`.
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let fs_type = after.split(' ').next()?;
    Some(MountEntry {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type: fs_type.to_owned(),
    })
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4);
        match escape {
            Some(digits) if bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                index += 4;
            }
            _ => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system type mounted exactly at `path` (the last mount there wins,
/// as in the kernel), or `None` when nothing is mounted there.
pub fn fs_type_at(path: &Path) -> Option<String> {
    mount_table()
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == path)
        .map(|entry| entry.fs_type)
}

/// True when a FUSE file system (`fuse`, `fuse.sohofs`, `fuseblk`...) is
/// mounted at `path`.
pub fn is_fuse_mounted(path: &Path) -> bool {
    fs_type_at(path).is_some_and(|fs_type| fs_type.starts_with("fuse"))
}

/// Mount points at or below `root`, deepest first so they can be unmounted in
/// that order.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mount_table()
        .into_iter()
        .map(|entry| entry.mount_point)
        .filter(|point| point.starts_with(root))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    points
}

/// Detaches whatever is mounted at `path`, even when its FUSE server is dead
/// or files are still open on it. Errors are reported, not raised: this runs
/// during cleanup, where a panic would hide the test's own failure.
pub fn force_unmount(path: &Path) {
    let lazy_fuse_unmount = Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .stdin(Stdio::null())
        .status();
    if matches!(lazy_fuse_unmount, Ok(status) if status.success()) && fs_type_at(path).is_none() {
        return;
    }
    // fusermount3 only unmounts FUSE; a plain lazy umount covers the rest.
    let lazy_umount = Command::new("umount").arg("-l").arg(path).stdin(Stdio::null()).status();
    if fs_type_at(path).is_some() {
        eprintln!(
            "e2e cleanup: could not unmount {} (fusermount3: {lazy_fuse_unmount:?}, umount: {lazy_umount:?})",
            path.display()
        );
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let line = "36 35 0:45 / /tmp/with\\040space rw,nosuid shared:1 master:2 - fuse.sohofs sohofs rw,user_id=0";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(MountEntry {
                mount_point: PathBuf::from("/tmp/with space"),
                fs_type: "fuse.sohofs".to_owned(),
            })
        );
    }

    #[test]
    fn unescapes_backslash_and_keeps_plain_backslashes() {
        assert_eq!(unescape_octal("a\\134b\\011c"), "a\\b\tc");
        assert_eq!(unescape_octal("a\\9b\\"), "a\\9b\\");
    }
}
