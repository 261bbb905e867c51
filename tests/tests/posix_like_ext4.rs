//! POSIX behaviour as people see it through coreutils: one shell transcript
//! (rename, link, symlink, chmod, chown, touch, truncate, append, overwrite,
//! rm, and the errors they give) run on the local disk and on the mount must
//! read the same, once the details that legitimately differ between file
//! systems are masked: block counts, directory sizes, and the current time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sohofs_e2e::diff::line_diff;
use sohofs_e2e::process::{run_ok, RunTag};
use sohofs_e2e::{Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };
const TRANSCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Slack around a run's start and end within which an mtime counts as "now".
const NOW_SLACK_SECS: u64 = 5;

/// Runs in an empty working directory under bash with `LC_ALL=C TZ=UTC`. Each
/// step prints its command, its output (stderr too) and its exit code.
/// `ls` prints times as `T`; `st` prints the fields of `stat` that must match.
const TRANSCRIPT: &str = r#"
exec 2>&1
umask 022
st() { stat -c '%n size=%s mode=%a uid=%u gid=%g nlink=%h type=%F mtime=%Y' "$@"; }
step() { printf '\n$ %s\n' "$1"; eval "$1"; printf '[exit %d]\n' "$?"; }

step 'mkdir -p src/sub/deeper dst other'
step 'echo hello > src/a.txt && printf abc > src/b.txt && seq 1 20000 > src/seq.txt'
step 'echo deep > src/sub/deeper/leaf && echo one > src/sub/one'
step 'ls -ln --time-style=+T . src src/sub'
step 'st src src/a.txt src/b.txt src/seq.txt src/sub src/sub/deeper'

# rename: across directories, over an existing file, within a directory
step 'mv src/a.txt dst/ && cat dst/a.txt'
step 'mv src/b.txt dst/a.txt && cat dst/a.txt && echo'
step 'mv dst/a.txt dst/renamed.txt && ls -ln --time-style=+T src dst'
step 'mv src/sub other/ && st other other/sub other/sub/deeper other/sub/deeper/leaf src'
step 'mv src/missing dst/'
step 'mkdir other/full dst/empty && touch other/full/x && mv -T dst/empty other/full'
step 'mv -T other/full dst/empty && ls -ln --time-style=+T dst dst/empty other'
step 'mv other other/sub/deeper/inside'

# hard links
step 'ln dst/renamed.txt src/hard && ln dst/renamed.txt other/hard2'
step 'st dst/renamed.txt src/hard other/hard2'
step 'echo more >> src/hard && cat dst/renamed.txt'
step 'rm other/hard2 && st dst/renamed.txt src/hard'
step 'ln dst/renamed.txt src/hard'
step 'ln src dst/dir-link'

# symbolic links
step 'ln -s ../dst/renamed.txt src/soft && ln -s nowhere src/dangling'
step 'readlink src/soft src/dangling'
step 'cat src/soft; cat src/dangling'
step 'st src/soft src/dangling && stat -L -c "%n size=%s type=%F" src/soft'
step 'ls -ln --time-style=+T src'

# permissions and owners
step 'chmod 640 dst/renamed.txt && chmod 1777 other && chmod u+x,g-r src/seq.txt && chmod 2750 other/sub'
step 'st dst/renamed.txt src/hard other src/seq.txt other/sub'
step 'if [ "$(id -u)" = 0 ]; then chown 1234:5678 dst/renamed.txt && chown -h 1234:5678 src/soft && chown :5678 other/sub; else echo "not root: chown skipped"; fi'
step 'st dst/renamed.txt src/hard src/soft other/sub && st -L src/soft'

# times
step "touch -d '2001-02-03 04:05:06' dst/renamed.txt other/sub new-file"
step 'st dst/renamed.txt new-file other/sub'
step 'mv dst/renamed.txt dst/moved.txt && chmod 600 dst/moved.txt && st dst/moved.txt src/hard'
step 'touch -m -d @1000000000 new-file && st new-file'

# sizes: truncate to grow and to shrink; appends; overwrites
step 'truncate -s 1M src/seq.txt && st src/seq.txt && cksum src/seq.txt'
step 'truncate -s 10 src/seq.txt && st src/seq.txt && od -c src/seq.txt'
step 'truncate -s 5000 src/seq.txt && cksum src/seq.txt && od -An -tx1 -j 8 -N 8 src/seq.txt'
step 'printf one > app && printf two >> app && echo three >> app && cat app && st app'
step 'seq 1 3000 >> app && wc -c app && tail -n 2 app'
step 'printf XYZ | dd of=app bs=1 seek=3 conv=notrunc status=none && head -c 12 app && echo && st app'
step 'seq 1 1000 > big && echo small > big && cat big && st big'

# removal and errors
step 'rm -r other/sub && ls -ln --time-style=+T other'
step 'rmdir dst'
step 'rm src'
step 'rm missing'
step 'mkdir new-file'
step 'cat new-file/x'
step 'rm -r dst src/soft && ls -A . src'

# the final state
step 'find . | sort'
step 'ls -lnR --time-style=+T .'
step 'st $(find . -mindepth 1 | sort)'
"#;

/// Lines the local reference run must contain, so that a broken script or a
/// local file system that is itself odd is caught, not silently compared.
const REFERENCE_LINES: &[&str] = &[
    "mv: cannot move 'dst/empty' to 'other/full': Directory not empty",
    "abcmore",
    "4119253180 5000 src/seq.txt",
    "oneXYZthree",
    "new-file size=0 mode=644 uid=0 gid=0 nlink=1 type=regular empty file mtime=1000000000",
    "rm: cannot remove 'src': Is a directory",
];
/// And, when run as root, the result of chown, chmod, touch -d and a rename.
const REFERENCE_LINES_AS_ROOT: &[&str] =
    &["dst/moved.txt size=8 mode=600 uid=1234 gid=5678 nlink=2 type=regular file mtime=981173106"];

#[test]
fn posix_like_ext4() {
    let cluster = Cluster::start(OPTIONS);

    let local_work = cluster.scratch_dir("posix-local");
    let local_fs = file_system_name(&local_work, cluster.tag());
    let reference = run_transcript(&local_work, cluster.tag());
    let as_root = nix::unistd::geteuid().is_root();
    for line in REFERENCE_LINES
        .iter()
        .chain(if as_root { REFERENCE_LINES_AS_ROOT } else { &[] })
    {
        assert!(
            reference.lines().any(|seen| seen == *line),
            "the reference run on the local {local_fs} lacks the line {line:?}:\n{reference}"
        );
    }
    assert!(
        !reference.contains("command not found"),
        "a tool is missing:\n{reference}"
    );

    let mount_work = cluster.mount_dir().join("posix");
    std::fs::create_dir(&mount_work).expect("create the working directory on the mount");
    let on_mount = run_transcript(&mount_work, cluster.tag());

    let diff = line_diff(&reference, &on_mount);
    assert!(
        diff.is_empty(),
        "the transcript on the mount differs from the one on the local {local_fs} \
         (- local, + sohofs; block counts, directory sizes and current times masked):\n{diff}"
    );
}

/// Runs the transcript in `work_dir` and returns it normalised.
fn run_transcript(work_dir: &Path, tag: &RunTag) -> String {
    let mut bash = Command::new("bash");
    bash.args(["--noprofile", "--norc", "-c", TRANSCRIPT])
        .current_dir(work_dir)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env_remove("BASH_ENV");
    let started = unix_now();
    let output = run_ok(bash, tag, TRANSCRIPT_TIMEOUT);
    let now = started.saturating_sub(NOW_SLACK_SECS)..=unix_now() + NOW_SLACK_SECS;
    normalise(&String::from_utf8_lossy(&output.stdout), &now)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `stat -f` type name of the file system holding `path`, for messages.
fn file_system_name(path: &Path, tag: &RunTag) -> String {
    let mut stat = Command::new("stat");
    stat.args(["-f", "-c", "%T"]).arg(path);
    String::from_utf8_lossy(&run_ok(stat, tag, Duration::from_secs(10)).stdout)
        .trim()
        .to_owned()
}

/// Masks what legitimately differs between file systems and runs: `ls`
/// block totals, directory sizes (in `ls -l` and `st` lines), mtimes within
/// the run's own time span, and column padding.
fn normalise(transcript: &str, now: &std::ops::RangeInclusive<u64>) -> String {
    let mut out = String::new();
    for line in transcript.lines() {
        let mut fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if fields.len() == 2 && fields[0] == "total" {
            fields[1] = "<blocks>".to_owned();
        }
        if is_ls_long_line(&fields) && fields[0].starts_with('d') {
            fields[4] = "<dirsize>".to_owned();
        }
        let is_stat_of_dir = line.contains(" type=directory mtime=");
        for field in &mut fields {
            if is_stat_of_dir && field.starts_with("size=") {
                *field = "size=<dirsize>".to_owned();
            }
            if let Some(seconds) = field.strip_prefix("mtime=").and_then(|value| value.parse::<u64>().ok()) {
                if now.contains(&seconds) {
                    *field = "mtime=<now>".to_owned();
                }
            }
        }
        out.push_str(&fields.join(" "));
        out.push('\n');
    }
    out
}

/// `drwxr-xr-x 2 0 0 4096 T name`: a mode string, then links, owner, group
/// and size.
fn is_ls_long_line(fields: &[String]) -> bool {
    let Some(mode) = fields.first() else {
        return false;
    };
    let mode = mode.trim_end_matches(['.', '+']);
    fields.len() >= 6
        && mode.len() == 10
        && "-dlcbps".contains(&mode[..1])
        && mode[1..].chars().all(|c| "rwxsStT-".contains(c))
}

#[test]
fn normalise_masks_blocks_dir_sizes_and_now() {
    let now = 1_700_000_000..=1_700_000_010;
    let raw = "total 112\n\
               drwxr-xr-x 2 0 0   4096 T dst\n\
               -rw-r--r-- 1 0 0 108894 T seq.txt\n\
               src size=4096 mode=755 uid=0 gid=0 nlink=3 type=directory mtime=1700000003\n\
               f size=4096 mode=644 uid=0 gid=0 nlink=1 type=regular file mtime=981173106\n";
    assert_eq!(
        normalise(raw, &now),
        "total <blocks>\n\
         drwxr-xr-x 2 0 0 <dirsize> T dst\n\
         -rw-r--r-- 1 0 0 108894 T seq.txt\n\
         src size=<dirsize> mode=755 uid=0 gid=0 nlink=3 type=directory mtime=<now>\n\
         f size=4096 mode=644 uid=0 gid=0 nlink=1 type=regular file mtime=981173106\n"
    );
}
