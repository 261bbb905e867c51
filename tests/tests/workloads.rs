//! What desktop users put in their home directories, run on the mount the way
//! they run on a local disk: git repositories (commit, clone, gc, fsck),
//! SQLite in WAL mode with readers beside a writer, tar and rsync round trips
//! that keep modes, times, owners, hard links, symlinks and xattrs, a C build
//! with make, two clients with close-to-open consistency, and flock and fcntl
//! locks between processes. Each test runs the real tools on a real mount.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg};
use sohofs_e2e::diff::line_diff;
use sohofs_e2e::manifest::manifest;
use sohofs_e2e::process::{run_bounded, run_ok, RunTag};
use sohofs_e2e::{Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };
/// One workload script; generous for a debug build on a shared 2-core machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn bash(dir: &Path, script: &str, tag: &RunTag) -> Output {
    let mut command = Command::new("bash");
    command
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .env("TZ", "UTC");
    run_ok(command, tag, SCRIPT_TIMEOUT)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Builds a repository of 25 commits with fixed authors and dates, so that
/// the same script gives the same commit ids on any file system.
const GIT_HISTORY: &str = r#"
export GIT_AUTHOR_NAME=Ann GIT_AUTHOR_EMAIL=ann@example.org
export GIT_COMMITTER_NAME=Ann GIT_COMMITTER_EMAIL=ann@example.org
export GIT_CONFIG_NOSYSTEM=1 HOME=$PWD
git init -q -b main repo
cd repo
for i in $(seq 1 25); do
    export GIT_AUTHOR_DATE="2026-01-01T00:00:$(printf %02d $i)Z" GIT_COMMITTER_DATE="2026-01-01T00:00:$(printf %02d $i)Z"
    mkdir -p "dir$((i % 4))"
    seq 1 $((i * 300)) > "dir$((i % 4))/file$i.txt"
    head -c $((i * 4096)) /dev/zero | tr '\0' "$(printf \\$(printf %o $((65 + i))))" > "blob$((i % 3)).bin"
    if [ $((i % 5)) -eq 0 ]; then git rm -q "dir$(((i + 1) % 4))/file$((i - 4)).txt" 2>/dev/null || true; fi
    git add -A
    git commit -q -m "commit $i"
done
git rev-parse HEAD
"#;

#[test]
fn git_repository_on_the_mount() {
    let cluster = Cluster::start(OPTIONS);
    let tag = RunTag::new();
    let local = cluster.scratch_dir("git-local");
    let on_mount = cluster.mount_dir().join("git");
    fs::create_dir(&on_mount).unwrap();

    let expected_head = stdout(&bash(&local, GIT_HISTORY, &tag));
    let head = stdout(&bash(&on_mount, GIT_HISTORY, &tag));
    assert_eq!(head, expected_head, "the same history gives the same commit id");

    let checks = bash(
        &on_mount,
        r#"
        export HOME=$PWD GIT_CONFIG_NOSYSTEM=1
        git clone -q repo clone-local            # hard links objects on the same file system
        git clone -q --no-local repo clone-copy  # packs and copies
        git -C repo gc -q --aggressive --prune=now
        git -C repo fsck --full --strict
        git -C clone-local fsck --full --strict
        git -C clone-copy fsck --full --strict
        echo "commits $(git -C clone-copy rev-list --count HEAD)"
        echo "heads $(git -C repo rev-parse HEAD) $(git -C clone-local rev-parse HEAD) $(git -C clone-copy rev-parse HEAD)"
        echo "packs $(ls repo/.git/objects/pack/*.pack | wc -l) loose $(find repo/.git/objects -type f -path '*/[0-9a-f][0-9a-f]/*' | wc -l)"
        git -C clone-copy status --porcelain | wc -l
        "#,
        &tag,
    );
    let text = stdout(&checks);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "commits 25", "{text}");
    assert_eq!(
        lines[1],
        format!("heads {expected_head} {expected_head} {expected_head}"),
        "{text}"
    );
    assert_eq!(lines[2], "packs 1 loose 0", "gc packed every object: {text}");
    assert_eq!(lines[3], "0", "a fresh clone has a clean work tree: {text}");

    // The checked-out tree is the same as the local one's.
    let files = "find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum";
    let local_tree = stdout(&bash(&local.join("repo"), files, &tag));
    let mount_tree = stdout(&bash(&on_mount.join("clone-copy"), files, &tag));
    assert_eq!(mount_tree, local_tree, "{}", line_diff(&local_tree, &mount_tree));
}

#[test]
fn sqlite_wal_readers_beside_a_writer() {
    let cluster = Cluster::start(OPTIONS);
    let tag = RunTag::new();
    let dir = cluster.mount_dir().join("sqlite");
    fs::create_dir(&dir).unwrap();
    const TRANSACTIONS: u32 = 300;

    bash(
        &dir,
        "sqlite3 app.db 'PRAGMA journal_mode=WAL; CREATE TABLE t(v INTEGER NOT NULL);' >/dev/null",
        &tag,
    );
    // Each reader checks, in every snapshot it sees, that the rows are 1..n
    // (count and sum agree: no torn transaction) and that n never goes back.
    let reader = r#"
        last=0; reads=0
        while :; do
            row=$(sqlite3 -cmd '.timeout 20000' app.db 'SELECT count(*), coalesce(sum(v),0) FROM t')
            n=${row%%|*}; sum=${row##*|}
            [ "$sum" -eq $((n * (n + 1) / 2)) ] || { echo "torn snapshot: $row"; exit 1; }
            [ "$n" -ge "$last" ] || { echo "went back from $last to $n"; exit 1; }
            last=$n; reads=$((reads + 1))
            [ -e writer.done ] && break
        done
        echo "$reads $last"
    "#;
    let spawn_reader = || {
        let mut command = Command::new("bash");
        command.arg("-c").arg(reader).current_dir(&dir);
        let tag = tag.clone();
        std::thread::spawn(move || run_bounded(command, &tag, SCRIPT_TIMEOUT))
    };
    let readers = [spawn_reader(), spawn_reader()];
    let writer = bash(
        &dir,
        &format!(
            r#"
            for i in $(seq 1 {TRANSACTIONS}); do
                echo "BEGIN; INSERT INTO t(v) VALUES ($i); COMMIT;"
            done | sqlite3 -cmd '.timeout 20000' app.db
            touch writer.done
            sqlite3 -cmd '.timeout 20000' app.db 'PRAGMA journal_mode; PRAGMA integrity_check; SELECT count(*), sum(v) FROM t'
            "#
        ),
        &tag,
    );
    let expected_sum = TRANSACTIONS * (TRANSACTIONS + 1) / 2;
    assert_eq!(
        stdout(&writer),
        format!("wal\nok\n{TRANSACTIONS}|{expected_sum}"),
        "the writer's view"
    );
    for reader in readers {
        let output = reader.join().expect("reader thread");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "a reader failed: {text}");
        let mut fields = text.split_whitespace();
        let reads: u32 = fields.next().and_then(|f| f.parse().ok()).expect("read count");
        let last: u32 = fields.next().and_then(|f| f.parse().ok()).expect("last count");
        assert!(reads >= 1, "{text}");
        assert!(last <= TRANSACTIONS, "{text}");
    }
    // A checkpoint folds the WAL into the database; a fresh process reads it.
    let after = bash(
        &dir,
        "sqlite3 app.db 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null; sqlite3 app.db 'SELECT count(*), sum(v) FROM t'",
        &tag,
    );
    assert_eq!(stdout(&after), format!("{TRANSACTIONS}|{expected_sum}"));
}

/// A tree with what copies must keep: modes (setgid dir, 0600, 0755), owners
/// other than root, fixed mtimes with nanoseconds, hard links, relative and
/// dangling symlinks, user xattrs, an empty directory, a fifo, and a file
/// larger than one 4 MiB chunk.
const MAKE_TREE: &str = r#"
mkdir -p src/docs/deep src/empty src/shared
printf 'hello\n' > src/docs/readme.txt
seq 1 50000 > src/docs/deep/numbers.txt
head -c 6000000 /dev/urandom > src/big.bin
head -c 3000 /dev/urandom > src/small.bin
printf '#!/bin/sh\necho hi\n' > src/run.sh
chmod 0755 src/run.sh; chmod 0600 src/small.bin; chmod 2775 src/shared; chmod 0700 src/docs/deep
ln src/docs/readme.txt src/shared/readme-hardlink
ln src/docs/readme.txt src/readme-second-link
ln -s docs/readme.txt src/readme-symlink
ln -s ../nowhere src/docs/dangling
mkfifo src/pipe
chown 1000:1000 src/docs/readme.txt src/shared
chown -h 1001:1002 src/readme-symlink
setfattr -n user.comment -v 'kept by copies' src/docs/readme.txt
setfattr -n user.origin -v tar+rsync src/big.bin
setfattr -n user.dir -v 'a directory' src/docs
find src -depth ! -type l -exec touch -m -d '2025-06-01 12:34:56.123456789' {} +
touch -m -d '2024-02-29 01:02:03.5' src/big.bin
"#;

#[test]
fn tar_and_rsync_round_trips_keep_everything() {
    let cluster = Cluster::start(OPTIONS);
    let tag = RunTag::new();
    let local = cluster.scratch_dir("copies");
    let mount = cluster.mount_dir();
    bash(&local, MAKE_TREE, &tag);
    let expected = manifest(&local.join("src")).unwrap();
    for line in [
        "links=docs/readme.txt",
        "xattr:user.comment=kept by copies",
        "mode=2775",
        "type=fifo",
    ] {
        assert!(expected.contains(line), "the source tree has {line}:\n{expected}");
    }
    let compare = |copy: &Path, what: &str| {
        let actual = manifest(copy).unwrap();
        assert_eq!(actual, expected, "{what}:\n{}", line_diff(&expected, &actual));
    };

    // tar (POSIX format: nanosecond times and xattrs) into the mount and back.
    bash(
        &local,
        &format!(
            "mkdir {m}/tar back-tar
             tar --format=posix --xattrs --xattrs-include='user.*' -cpf - -C src . | tar --xattrs --xattrs-include='user.*' -xpf - -C {m}/tar
             tar --format=posix --xattrs --xattrs-include='user.*' -cpf - -C {m}/tar . | tar --xattrs --xattrs-include='user.*' -xpf - -C back-tar",
            m = mount.display()
        ),
        &tag,
    );
    compare(&mount.join("tar"), "tar into the mount");
    compare(&local.join("back-tar"), "tar back out of the mount");

    // rsync -aHAX into the mount, again onto the same copy (nothing to send),
    // and back. -A: the mount has no ACLs, and rsync must get by without them.
    bash(
        &local,
        &format!(
            "rsync -aHX src/ {m}/rsync/
             rsync -aHX --itemize-changes src/ {m}/rsync/ > second-pass.txt
             rsync -aHX {m}/rsync/ back-rsync/",
            m = mount.display()
        ),
        &tag,
    );
    compare(&mount.join("rsync"), "rsync into the mount");
    compare(&local.join("back-rsync"), "rsync back out of the mount");
    let second = fs::read_to_string(local.join("second-pass.txt")).unwrap();
    assert_eq!(second.trim(), "", "a second rsync finds nothing to change");

    // -A asks for ACLs; on a mount without them rsync says so and copies the rest.
    let mut command = Command::new("rsync");
    command
        .arg("-aHAX")
        .arg(local.join("src").as_os_str().to_string_lossy().to_string() + "/")
        .arg(mount.join("rsync-acl"));
    let output = run_bounded(command, &tag, SCRIPT_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        compare(&mount.join("rsync-acl"), "rsync -aHAX into the mount");
    } else {
        assert!(
            stderr.contains("ACL") || stderr.contains("Operation not supported"),
            "rsync -aHAX fails only for want of ACLs: {stderr}"
        );
    }
}

const C_PROJECT: &str = r#"
mkdir -p proj/src proj/include
cat > proj/include/shapes.h <<'EOF'
#define SIDES 4
int area(int w, int h);
int perimeter(int w, int h);
EOF
cat > proj/src/area.c <<'EOF'
#include "shapes.h"
int area(int w, int h) { return w * h; }
EOF
cat > proj/src/perimeter.c <<'EOF'
#include "shapes.h"
int perimeter(int w, int h) { return 2 * (w + h) * SIDES / 4; }
EOF
cat > proj/src/main.c <<'EOF'
#include <stdio.h>
#include "shapes.h"
int main(void) { printf("area=%d perimeter=%d\n", area(6, 7), perimeter(6, 7)); return 0; }
EOF
cat > proj/Makefile <<'EOF'
CFLAGS = -O1 -Wall -Werror -Iinclude
OBJS = build/area.o build/perimeter.o build/main.o
shapes: $(OBJS)
	$(CC) -o $@ $(OBJS)
build/%.o: src/%.c include/shapes.h | build
	$(CC) $(CFLAGS) -c -o $@ $<
build:
	mkdir -p build
clean:
	rm -rf build shapes
EOF
"#;

#[test]
fn c_project_builds_with_make() {
    let cluster = Cluster::start(OPTIONS);
    let tag = RunTag::new();
    let mount = cluster.mount_dir();
    bash(mount, C_PROJECT, &tag);
    let proj = mount.join("proj");
    let built = bash(&proj, "make -j2 >/dev/null && ./shapes", &tag);
    assert_eq!(stdout(&built), "area=42 perimeter=26");

    // make trusts mtimes: nothing to do, then only what a change touches.
    let again = bash(&proj, "make", &tag);
    assert_eq!(stdout(&again), "make: 'shapes' is up to date.");
    let rebuilt = bash(
        &proj,
        "sleep 1.1; sed -i 's/w \\* h/w * h + 1/' src/area.c; make | grep -c '^cc .*-c' ; ./shapes",
        &tag,
    );
    assert_eq!(stdout(&rebuilt), "1\narea=43 perimeter=26", "one object rebuilt");
    let header = bash(
        &proj,
        "sleep 1.1; touch include/shapes.h; make | grep -c '^cc .*-c'",
        &tag,
    );
    assert_eq!(stdout(&header), "3", "a header change rebuilds every object");
    bash(&proj, "make clean", &tag);
    assert!(!proj.join("build").exists() && !proj.join("shapes").exists());
}

#[test]
fn two_clients_close_to_open() {
    let cluster = Cluster::start(OPTIONS);
    let other = cluster.mount_client();
    let first = cluster.mount_dir().join("shared");
    let second = other.mount_dir().join("shared");
    fs::create_dir(&first).unwrap();

    // Each round rewrites the file with a different size and content; the
    // other client, opening after the close, reads exactly that.
    let sizes = [10usize, 5 << 20, 100, 0, 9 << 20, 4096];
    for (round, size) in sizes.into_iter().enumerate() {
        let (writer, reader) = if round % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let content: Vec<u8> = (0..size).map(|i| ((i * 7 + round) % 253) as u8).collect();
        fs::write(writer.join("doc.bin"), &content).unwrap();
        let seen = fs::read(reader.join("doc.bin")).unwrap();
        assert_eq!(
            seen.len(),
            content.len(),
            "round {round}: size seen by the other client"
        );
        assert!(seen == content, "round {round}: bytes seen by the other client");
    }

    // Namespace changes are synchronous at meta: a rename and an unlink on one
    // client show on the other at once (the other never looked these names up).
    fs::write(first.join("draft.txt"), b"v1").unwrap();
    fs::rename(first.join("draft.txt"), first.join("final.txt")).unwrap();
    assert_eq!(fs::read(second.join("final.txt")).unwrap(), b"v1");
    assert!(!second.join("draft.txt").exists());

    // An append on the first client shows on the second at its next open.
    let mut appender = OpenOptions::new().append(true).open(first.join("final.txt")).unwrap();
    appender.write_all(b"+v2").unwrap();
    drop(appender);
    assert_eq!(fs::read(second.join("final.txt")).unwrap(), b"v1+v2");
    other.stop();
}

#[test]
fn flock_and_fcntl_locks_between_processes() {
    let cluster = Cluster::start(OPTIONS);
    let tag = RunTag::new();
    let dir = cluster.mount_dir().join("locks");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("lockfile");
    fs::write(&path, b"0123456789").unwrap();

    // flock(2): one process holds it, another is refused, then gets it.
    let held = bash(
        &dir,
        r#"
        flock -x lockfile -c 'touch held; while [ ! -e release ]; do sleep 0.05; done' &
        holder=$!
        while [ ! -e held ]; do sleep 0.05; done
        if flock -n -x lockfile true; then echo "second got it"; else echo "second refused"; fi
        if flock -n -s lockfile true; then echo "shared got it"; else echo "shared refused"; fi
        touch release; wait $holder
        if flock -n -x lockfile true; then echo "after release got it"; else echo "after release refused"; fi
        "#,
        &tag,
    );
    assert_eq!(stdout(&held), "second refused\nshared refused\nafter release got it");

    // fcntl(F_SETLK) byte-range locks: this process write-locks bytes 0..5;
    // another process (perl, as Debian always has it) cannot lock them, can
    // lock 5..10, and gets 0..5 once this process unlocks.
    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let lock = |kind: i16, start: i64, len: i64| libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    let set = |request: libc::flock| {
        fcntl(file.as_raw_fd(), FcntlArg::F_SETLK(&request)).expect("fcntl F_SETLK");
    };
    set(lock(libc::F_WRLCK as i16, 0, 5));
    let try_lock = |start: i64, len: i64| {
        let script = format!(
            r#"use Fcntl; open(my $f, "+<", "lockfile") or die "open: $!";
               my $l = pack("s s x4 q q l x4", F_WRLCK, SEEK_SET, {start}, {len}, 0);
               print(fcntl($f, F_SETLK, $l) ? "locked" : ($!{{EAGAIN}} || $!{{EACCES}} ? "refused" : "error $!"));"#
        );
        let mut command = Command::new("perl");
        command.arg("-e").arg(script).current_dir(&dir);
        stdout(&run_ok(command, &tag, SCRIPT_TIMEOUT))
    };
    assert_eq!(try_lock(0, 5), "refused", "the range this process holds");
    assert_eq!(try_lock(2, 1), "refused", "a byte inside it");
    assert_eq!(try_lock(5, 5), "locked", "the range next to it");
    set(lock(libc::F_UNLCK as i16, 0, 5));
    assert_eq!(try_lock(0, 5), "locked", "after this process unlocked");
}
