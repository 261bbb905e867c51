//! What a copy of a tree must preserve, as one comparable value: for every
//! path its type, mode, owner, mtime (nanoseconds), content hash or link
//! target, xattrs, and which other paths are hard links to it. Used by the
//! tar and rsync round trips; inode numbers and times other than mtime are
//! left out, since they legitimately differ between file systems.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use crate::tree::hash_file;

/// One line per path, sorted by path, in a form that diffs well.
pub fn manifest(root: &Path) -> io::Result<String> {
    let mut entries = BTreeMap::new();
    walk(root, root, &mut entries)?;
    // Hard links: every path sharing an inode names the first of them.
    let mut first_of_inode: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = String::new();
    for (relative, (metadata, detail)) in &entries {
        let kind = metadata.file_type();
        let mut link_group = String::new();
        if !kind.is_dir() && metadata.nlink() > 1 {
            let first = first_of_inode
                .entry((metadata.dev(), metadata.ino()))
                .or_insert_with(|| relative.clone());
            link_group = format!(" links={first}");
        }
        let mtime = if kind.is_symlink() {
            // Whether a symlink keeps its mtime depends on the copying tool's
            // flags, not on the file system; compare it for files and dirs.
            String::from("-")
        } else {
            format!("{}.{:09}", metadata.mtime(), metadata.mtime_nsec())
        };
        let _ = writeln!(
            out,
            "{relative} type={} mode={:o} uid={} gid={} mtime={mtime}{link_group} {detail}",
            type_name(&kind),
            metadata.mode() & 0o7777,
            metadata.uid(),
            metadata.gid(),
        );
    }
    Ok(out)
}

fn type_name(kind: &fs::FileType) -> &'static str {
    if kind.is_file() {
        "file"
    } else if kind.is_dir() {
        "dir"
    } else if kind.is_symlink() {
        "symlink"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else {
        "device"
    }
}

fn walk(root: &Path, path: &Path, entries: &mut BTreeMap<String, (fs::Metadata, String)>) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(path)?.collect::<io::Result<Vec<_>>>()?;
    names.sort_by_key(|entry| entry.file_name());
    for entry in names {
        let child = entry.path();
        let metadata = fs::symlink_metadata(&child)?;
        let relative = child
            .strip_prefix(root)
            .expect("walked paths lie under the root")
            .to_string_lossy()
            .into_owned();
        let kind = metadata.file_type();
        let mut detail = if kind.is_file() {
            format!("size={} blake3={}", metadata.len(), hash_file(&child)?)
        } else if kind.is_symlink() {
            format!("target={}", fs::read_link(&child)?.display())
        } else {
            String::new()
        };
        for (name, value) in xattrs(&child)? {
            let _ = write!(detail, " xattr:{name}={}", String::from_utf8_lossy(&value));
        }
        entries.insert(relative, (metadata, detail));
        if kind.is_dir() {
            walk(root, &child, entries)?;
        }
    }
    Ok(())
}

/// The `user.` xattrs of `path` (not following a symlink), sorted by name,
/// as `getfattr` (package attr) reads them.
pub fn xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let output = Command::new("getfattr")
        .args([
            "--no-dereference",
            "--dump",
            "--match=^user\\.",
            "--encoding=hex",
            "--absolute-names",
        ])
        .arg(path)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "getfattr {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // `# file: PATH` headers and blank lines separate files.
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let hex = value.strip_prefix("0x").unwrap_or(value);
        let bytes = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(io::Error::other)?;
        out.push((name.to_owned(), bytes));
    }
    out.sort();
    Ok(out)
}
