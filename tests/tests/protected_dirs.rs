//! Protected directories against a real slapd, real mounts and real
//! processes (issue 3's acceptance):
//!
//! - machines A and B of the group read and write `/finance`; B taken out
//!   of the group and `keyring sync` run: B's mount gets EACCES, B's
//!   identity opens no chunk written after the sync, and once the rekey has
//!   ended it opens no chunk of `/finance` at all; A keeps everything;
//! - the sync is killed (SIGKILL) in the middle of its rekey, and the next
//!   sync finishes it with no chunk lost;
//! - a machine never approved gets EACCES and its mount stays up;
//! - no plaintext name, symlink target or content of a protected file is
//!   anywhere under the cluster's folder (nodes and meta);
//! - `home sync` makes one protected home per LDAP user, and a second run
//!   changes nothing;
//! - the NFS gateway serves /finance on an approved machine and answers
//!   NFS3ERR_ACCES on another, serving the rest.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sohofs_e2e::gateway::{free_port, Gateway};
use sohofs_e2e::slapd::{test_key, Slapd, TEST_FINANCE_GROUP};
use sohofs_e2e::{bounded, sohofs_bin, wait_until, Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 6, k: 4, m: 2 };
const VERB_TIMEOUT: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Clients follow key policies every second; allow for a loaded machine.
const POLICY_FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);
const BETA_DN: &str = "cn=ws-beta,ou=machines,dc=example,dc=org";
const STAFF_GROUP: &str = "cn=staff,ou=groups,dc=example,dc=org";

/// Appends the test directory's `[ldap]` table and an audit log to the
/// cluster's config (`up` keeps both when it rewrites the file).
fn add_ldap(cluster: &Cluster, slapd: &Slapd) {
    let folder = cluster.config_path().parent().unwrap().to_path_buf();
    fs::write(folder.join("ldap.secret"), format!("{}\n", slapd.admin_password())).unwrap();
    let table = format!(
        "identity = \"{identity}\"\naudit_log = \"audit.jsonl\"\n\n{ldap}",
        identity = test_key("ws-alpha.age").display(),
        ldap = slapd.config_table(),
    );
    // Top-level keys must come before the first table of the TOML file.
    let text = fs::read_to_string(cluster.config_path()).unwrap();
    let at = text.find("\n[").map(|i| i + 1).unwrap_or(text.len());
    let (head, tail) = text.split_at(at);
    let (top, ldap) = table.split_at(table.find("\n[").unwrap() + 1);
    fs::write(cluster.config_path(), format!("{head}{top}{tail}\n{ldap}")).unwrap();
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(output: Output, what: &str) -> Value {
    let text = ok(output, what);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {text}"))
}

/// The errno of an I/O result, or 0 when it succeeded.
fn errno<T>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(error) => error.raw_os_error().unwrap_or(-1),
    }
}

fn write_file(path: PathBuf, content: Vec<u8>) {
    bounded("write a file", IO_TIMEOUT, move || -> std::io::Result<()> {
        let mut file = fs::File::create(&path)?;
        file.write_all(&content)?;
        file.sync_all()
    })
    .unwrap_or_else(|e| panic!("write: {e}"));
}

fn read_file(path: PathBuf) -> std::io::Result<Vec<u8>> {
    bounded("read a file", IO_TIMEOUT, move || fs::read(path))
}

/// Pieces of a file as an identity can (not) open them.
fn pieces(cluster: &Cluster, identity: &Path, ino: u64) -> Vec<(u32, bool)> {
    let report = json(
        cluster.run_verb(
            &[
                "debug",
                "pieces",
                "--identity",
                identity.to_str().unwrap(),
                "--json",
                &format!("inode:{ino}"),
            ],
            VERB_TIMEOUT,
        ),
        "debug pieces",
    );
    report
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["epoch"].as_u64().unwrap() as u32, p["opened"].as_bool().unwrap()))
        .collect()
}

fn marked_content(marker: &str, bytes: usize) -> Vec<u8> {
    let line = format!("{marker} line of a protected file\n");
    line.bytes().cycle().take(bytes).collect()
}

/// Every file under `root` that holds one of `markers` (by path and marker).
fn files_holding(root: &Path, markers: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            for marker in markers {
                if name.contains(marker) {
                    found.push((path.clone(), format!("{marker} (in the file name)")));
                }
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let Ok(bytes) = fs::read(&path) else { continue };
                for marker in markers {
                    if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                        found.push((path.clone(), marker.to_string()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn finance_is_read_by_its_group_only_and_a_revoke_reaches_every_chunk() {
    let slapd = Slapd::start_test_directory();
    let mut cluster = Cluster::start(OPTIONS);
    add_ldap(&cluster, &slapd);
    let alpha = test_key("ws-alpha.age");
    let beta = test_key("ws-beta_ed25519");
    let outsider = test_key("ws-outsider.age");

    fs::create_dir(cluster.mount_dir().join("finance")).unwrap();
    let protect = cluster.run_verb(
        &["dir", "protect", "/finance", "--group", TEST_FINANCE_GROUP],
        VERB_TIMEOUT,
    );
    ok(protect, "dir protect");
    let again = cluster.run_verb(
        &["dir", "protect", "/finance", "--group", TEST_FINANCE_GROUP],
        VERB_TIMEOUT,
    );
    assert_eq!(again.status.code(), Some(1), "protecting twice is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("protected already"));

    let shown = json(
        cluster.run_verb(&["dir", "show", "/finance", "--json"], VERB_TIMEOUT),
        "dir show",
    );
    assert_eq!(shown["tier"], "protected");
    assert_eq!(shown["group"], TEST_FINANCE_GROUP);
    assert_eq!(shown["current_epoch"], 1);
    let machines: Vec<&str> = shown["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    assert_eq!(machines, ["cn=ws-alpha,ou=machines,dc=example,dc=org", BETA_DN]);
    let root_shown = json(
        cluster.run_verb(&["dir", "show", "/", "--json"], VERB_TIMEOUT),
        "dir show /",
    );
    assert_eq!(root_shown["tier"], "standard");

    let a = cluster.mount_client_with_args(&["--identity", alpha.to_str().unwrap()]);
    let b = cluster.mount_client_with_args(&["--identity", beta.to_str().unwrap()]);
    let c = cluster.mount_client_with_args(&["--identity", outsider.to_str().unwrap()]);
    let a_fin = a.mount_dir().join("finance");
    let b_fin = b.mount_dir().join("finance");
    let c_fin = c.mount_dir().join("finance");

    // Both members read and write; names, a subfolder and a symlink work.
    let marker_name = format!("Budget-MARKERNAME-{:08x}", rand::random::<u32>());
    let marker_data = format!("MARKERDATA-{:08x}", rand::random::<u32>());
    let marker_link = format!("MARKERLINK-{:08x}", rand::random::<u32>());
    let report = marked_content(&marker_data, 9 << 20);
    let tiny = marked_content(&marker_data, 300);
    fs::create_dir(a_fin.join(&marker_name)).unwrap();
    write_file(a_fin.join(&marker_name).join("report.txt"), report.clone());
    write_file(a_fin.join("tiny.txt"), tiny.clone());
    std::os::unix::fs::symlink(format!("{marker_link}/x"), a_fin.join("link")).unwrap();
    write_file(b_fin.join("from-b.txt"), b"written by beta\n".to_vec());
    // Extended attribute values are sealed too.
    let marker_xattr = format!("MARKERXATTR-{:08x}", rand::random::<u32>());
    let set = Command::new("setfattr")
        .args(["-n", "user.note", "-v", &marker_xattr])
        .arg(a_fin.join("tiny.txt"))
        .output()
        .unwrap();
    ok(set, "setfattr");
    let got = Command::new("getfattr")
        .args(["--only-values", "-n", "user.note"])
        .arg(b_fin.join("tiny.txt"))
        .output()
        .unwrap();
    assert_eq!(ok(got, "getfattr"), marker_xattr);
    assert_eq!(read_file(b_fin.join(&marker_name).join("report.txt")).unwrap(), report);
    assert_eq!(read_file(a_fin.join("from-b.txt")).unwrap(), b"written by beta\n");
    assert_eq!(
        fs::read_link(b_fin.join("link")).unwrap(),
        PathBuf::from(format!("{marker_link}/x"))
    );
    let mut listed: Vec<String> = fs::read_dir(&b_fin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    listed.sort();
    let mut want = vec![
        marker_name.clone(),
        "from-b.txt".into(),
        "link".into(),
        "tiny.txt".into(),
    ];
    want.sort();
    assert_eq!(listed, want);
    // 255 bytes is a name; 256 is too long, however the ciphertext goes.
    let longest = "n".repeat(255);
    write_file(a_fin.join(&longest), b"x".to_vec());
    assert!(a_fin.join(&longest).exists());
    let too_long = fs::File::create(a_fin.join("n".repeat(256)));
    assert_eq!(errno(too_long), libc::ENAMETOOLONG);
    // Moving a file out of the protected tree would leave it under the
    // wrong key: refused as across file systems (mv copies instead).
    let moved = fs::rename(a_fin.join("tiny.txt"), a.mount_dir().join("tiny.txt"));
    assert_eq!(errno(moved), libc::EXDEV);
    // The protected directory itself moves (and keeps its key): `mv` must
    // not turn it into a plain copy.
    fs::rename(&a_fin, a.mount_dir().join("ledgers")).unwrap();
    let moved = json(
        cluster.run_verb(&["dir", "show", "/ledgers", "--json"], VERB_TIMEOUT),
        "dir show",
    );
    assert_eq!(moved["tier"], "protected", "{moved}");
    assert_eq!(errno(fs::read_dir(c.mount_dir().join("ledgers"))), libc::EACCES);
    fs::rename(a.mount_dir().join("ledgers"), &a_fin).unwrap();
    assert_eq!(read_file(a_fin.join("tiny.txt")).unwrap(), tiny);

    // A machine never approved: EACCES on listing, opening and creating;
    // its mount serves the rest of the volume and stays up.
    assert_eq!(errno(fs::read_dir(&c_fin)), libc::EACCES);
    assert_eq!(errno(fs::read(c_fin.join("tiny.txt"))), libc::EACCES);
    assert_eq!(errno(fs::File::create(c_fin.join("new.txt"))), libc::EACCES);
    assert_eq!(errno(fs::read(c_fin.join("nothing-here"))), libc::EACCES);
    fs::write(c.mount_dir().join("outsider-was-here.txt"), b"plain tier\n").unwrap();
    assert_eq!(
        fs::read(a.mount_dir().join("outsider-was-here.txt")).unwrap(),
        b"plain tier\n"
    );
    // The main mount runs without an approved identity: denied too.
    assert_eq!(errno(fs::read_dir(cluster.mount_dir().join("finance"))), libc::EACCES);

    // No plaintext name, link target or content of /finance at rest.
    nix::unistd::sync();
    let leaks = files_holding(
        cluster.data_dir(),
        &[&marker_name, &marker_data, &marker_link, &marker_xattr],
    );
    assert!(leaks.is_empty(), "plaintext of /finance found at rest: {leaks:?}");
    let seen = files_holding(a.mount_dir(), &[&marker_name, &marker_data]);
    assert!(
        seen.len() >= 3,
        "the scan finds the markers through the mount: {seen:?}"
    );

    let report_path = a_fin.join(&marker_name).join("report.txt");
    let report_ino = fs::metadata(&report_path).unwrap().ino();
    let before = pieces(&cluster, &beta, report_ino);
    assert!(
        !before.is_empty() && before.iter().all(|(epoch, opened)| *epoch == 1 && *opened),
        "{before:?}"
    );

    // B leaves the group. The sync revokes it and starts the rekey, which
    // is killed (SIGKILL) after its first chunk.
    slapd.remove_member(TEST_FINANCE_GROUP, BETA_DN);
    let plan = json(
        cluster.run_verb(&["keyring", "sync", "--dry-run", "--json"], VERB_TIMEOUT),
        "sync --dry-run",
    );
    assert_eq!(plan[0]["revoked"], serde_json::json!([BETA_DN]), "{plan}");
    assert_eq!(plan[0]["epoch_after"], 2, "{plan}");
    assert_eq!(plan[0]["rekey_needed"], true, "{plan}");
    let status = json(
        cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
        "status",
    );
    assert_eq!(status[0]["current_epoch"], 1, "a dry run changes nothing: {status}");
    let mut sync = Command::new(sohofs_bin());
    sync.args(["keyring", "sync", "--json", "--config"])
        .arg(cluster.config_path())
        .env("SOHOFS_FAILPOINTS", "rekey.after_chunk=sleep(60000)")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cluster.tag().apply(&mut sync);
    let mut sync = sync.spawn().unwrap();
    wait_until("the sync has made epoch 2", VERB_TIMEOUT, || {
        let status = json(
            cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
            "status",
        );
        match status[0]["current_epoch"].as_u64() {
            Some(2) => Ok(()),
            other => Err(format!("epoch {other:?}")),
        }
    });
    // Let it re-seal one chunk and reach the failpoint, then kill it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        sync.try_wait().unwrap().is_none(),
        "the sync ended before it was killed"
    );
    sync.kill().unwrap();
    sync.wait().unwrap();
    let status = json(
        cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
        "status",
    );
    assert_eq!(
        status[0]["live_epochs"],
        serde_json::json!([1, 2]),
        "the rekey did not finish: {status}"
    );
    assert_eq!(status[0]["rekey_pending"], true);

    // B's mount loses /finance within a policy refresh; A keeps it.
    wait_until("B's mount is refused /finance", POLICY_FOLLOW_TIMEOUT, || {
        match errno(fs::read_dir(&b_fin)) {
            libc::EACCES => Ok(()),
            other => Err(format!("errno {other}")),
        }
    });
    assert_eq!(errno(fs::read(b_fin.join("from-b.txt"))), libc::EACCES);
    assert_eq!(errno(fs::File::create(b_fin.join("late.txt"))), libc::EACCES);
    let after_sync = marked_content("written after the sync", 5 << 20);
    write_file(a_fin.join("after-sync.bin"), after_sync.clone());
    let after_ino = fs::metadata(a_fin.join("after-sync.bin")).unwrap().ino();
    let new_pieces = pieces(&cluster, &beta, after_ino);
    assert!(
        !new_pieces.is_empty() && new_pieces.iter().all(|(epoch, opened)| *epoch == 2 && !opened),
        "B's identity opens a chunk written after the sync: {new_pieces:?}"
    );
    let new_for_a = pieces(&cluster, &alpha, after_ino);
    assert!(new_for_a.iter().all(|(_, opened)| *opened), "{new_for_a:?}");

    // The next sync finishes the rekey and destroys epoch 1.
    let done = json(
        cluster.run_verb(&["keyring", "sync", "--json"], VERB_TIMEOUT),
        "second sync",
    );
    assert_eq!(done[0]["rekey"]["epochs_destroyed"], 1, "{done}");
    let status = json(
        cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
        "status",
    );
    assert_eq!(status[0]["live_epochs"], serde_json::json!([2]));
    for ino in [
        report_ino,
        after_ino,
        fs::metadata(a_fin.join("tiny.txt")).unwrap().ino(),
    ] {
        let left = pieces(&cluster, &beta, ino);
        assert!(
            !left.is_empty() && left.iter().all(|(epoch, opened)| *epoch == 2 && !opened),
            "B's identity still opens a chunk of /finance after the rekey: {left:?}"
        );
    }

    // A lost nothing and nothing changed.
    assert_eq!(read_file(report_path.clone()).unwrap(), report);
    assert_eq!(read_file(a_fin.join("tiny.txt")).unwrap(), tiny);
    assert_eq!(read_file(a_fin.join("from-b.txt")).unwrap(), b"written by beta\n");
    assert_eq!(read_file(a_fin.join("after-sync.bin")).unwrap(), after_sync);
    assert_eq!(
        fs::read_link(a_fin.join("link")).unwrap(),
        PathBuf::from(format!("{marker_link}/x"))
    );

    // B back in the group: the next sync re-wraps the key for it, and B's
    // running mount (refused until now) reads /finance again.
    slapd.add_member(TEST_FINANCE_GROUP, BETA_DN);
    let regrant = json(
        cluster.run_verb(&["keyring", "sync", "--json"], VERB_TIMEOUT),
        "sync after re-adding B",
    );
    assert_eq!(regrant[0]["granted"], serde_json::json!([BETA_DN]), "{regrant}");
    assert_eq!(regrant[0]["epoch_after"], 2, "a grant makes no new epoch: {regrant}");
    wait_until(
        "B's running mount reads /finance again",
        POLICY_FOLLOW_TIMEOUT,
        || match read_file(b_fin.join("from-b.txt")) {
            Ok(bytes) if bytes == b"written by beta\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(read_file(b_fin.join("after-sync.bin")).unwrap(), after_sync);

    // A holds the report open while B is revoked again and the rekey runs
    // to its end: the open file's chunk records go stale (re-sealed, the old
    // key destroyed), and A must still read it, also through a new open.
    let mut held = fs::File::open(&report_path).unwrap();
    let mut first_read = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut first_read).unwrap();
    assert_eq!(first_read, report);
    slapd.remove_member(TEST_FINANCE_GROUP, BETA_DN);
    let revoked = json(
        cluster.run_verb(&["keyring", "sync", "--json"], VERB_TIMEOUT),
        "second revoke",
    );
    assert_eq!(revoked[0]["epoch_after"], 3, "{revoked}");
    assert_eq!(revoked[0]["rekey"]["epochs_destroyed"], 1, "{revoked}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_file(report_path.clone()).unwrap(),
        report,
        "A reads a file it holds open after a rekey"
    );
    drop(held);

    // The audit log has the story, as ECS lines.
    let audit = fs::read_to_string(cluster.data_dir().join("audit.jsonl")).unwrap();
    let actions: Vec<String> = audit
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["event"]["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for action in [
        "key-grant",
        "key-revoke",
        "key-unwrap",
        "rekey-start",
        "rekey-finish",
        "access-denied",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "no {action} in the audit log: {actions:?}"
        );
    }

    // Mounts denied access stayed up and end cleanly.
    c.stop();
    b.stop();
    a.stop();
    cluster.stop();
}

#[test]
fn home_sync_makes_one_private_home_per_user_once() {
    let slapd = Slapd::start_test_directory();
    let mut cluster = Cluster::start(OPTIONS);
    add_ldap(&cluster, &slapd);
    let args = [
        "home",
        "sync",
        "--group",
        STAFF_GROUP,
        "--machines-group",
        TEST_FINANCE_GROUP,
        "--json",
    ];
    let first = json(cluster.run_verb(&args, VERB_TIMEOUT), "home sync");
    assert_eq!(
        first["created"],
        serde_json::json!(["/home/alice", "/home/bob"]),
        "{first}"
    );
    let skipped = first["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|s| s.as_str().unwrap().contains("uid=dave")),
        "{first}"
    );
    for (user, id) in [("alice", 10001), ("bob", 10002)] {
        let meta = fs::metadata(cluster.mount_dir().join("home").join(user)).unwrap();
        assert!(meta.is_dir());
        assert_eq!((meta.uid(), meta.gid()), (id, id), "{user}");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{user}");
        let shown = json(
            cluster.run_verb(&["dir", "show", &format!("/home/{user}"), "--json"], VERB_TIMEOUT),
            "dir show",
        );
        assert_eq!(shown["tier"], "protected");
        assert_eq!(shown["group"], TEST_FINANCE_GROUP);
    }
    let second = json(cluster.run_verb(&args, VERB_TIMEOUT), "home sync again");
    assert_eq!(second["created"], serde_json::json!([]), "{second}");
    assert_eq!(
        second["unchanged"],
        serde_json::json!(["/home/alice", "/home/bob"]),
        "{second}"
    );
    assert_eq!(second["differing"], serde_json::json!([]), "{second}");
    let policies = json(
        cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
        "status",
    );
    assert_eq!(
        policies.as_array().unwrap().len(),
        2,
        "one key per home, none more: {policies}"
    );

    // Alice's machine (alpha, in the machines group) works in her home.
    let alpha = test_key("ws-alpha.age");
    let a = cluster.mount_client_with_args(&["--identity", alpha.to_str().unwrap()]);
    let home = a.mount_dir().join("home").join("alice");
    fs::write(home.join("notes.txt"), b"mine\n").unwrap();
    assert_eq!(fs::read(home.join("notes.txt")).unwrap(), b"mine\n");
    assert_eq!(
        errno(fs::read_dir(cluster.mount_dir().join("home/alice"))),
        libc::EACCES
    );
    a.stop();
    cluster.stop();
}

/// The output of an NFS client command (libnfs-utils), bounded in time.
fn nfs_client(cluster: &Cluster, program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    sohofs_e2e::process::run_bounded(command, cluster.tag(), VERB_TIMEOUT)
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_nfs_gateway_follows_its_machines_approval() {
    let slapd = Slapd::start_test_directory();
    let mut cluster = Cluster::start(OPTIONS);
    add_ldap(&cluster, &slapd);
    fs::create_dir(cluster.mount_dir().join("finance")).unwrap();
    ok(
        cluster.run_verb(
            &["dir", "protect", "/finance", "--group", TEST_FINANCE_GROUP],
            VERB_TIMEOUT,
        ),
        "dir protect",
    );
    let alpha = test_key("ws-alpha.age");
    let a = cluster.mount_client_with_args(&["--identity", alpha.to_str().unwrap()]);
    let content = marked_content("ledger", 100_000);
    write_file(a.mount_dir().join("finance/ledger.txt"), content.clone());

    // A gateway on an approved machine serves /finance with its names.
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let approved = Gateway::start_with_args(&cluster, listen, None, &["--identity", alpha.to_str().unwrap()]);
    let listed = nfs_client(&cluster, "nfs-ls", &[&approved.url("finance")]);
    assert!(listed.status.success(), "nfs-ls /finance: {}", said(&listed));
    assert!(said(&listed).contains("ledger.txt"), "{}", said(&listed));
    let copy = cluster.scratch_dir("nfs-copies").join("ledger.txt");
    let copied = nfs_client(
        &cluster,
        "nfs-cp",
        &[&approved.url("finance/ledger.txt"), copy.to_str().unwrap()],
    );
    assert!(copied.status.success(), "nfs-cp out of /finance: {}", said(&copied));
    assert_eq!(fs::read(&copy).unwrap(), content);
    approved.stop();

    // A gateway whose machine is not approved: NFS3ERR_ACCES, and it keeps
    // serving the rest of the volume.
    let outsider = test_key("ws-outsider.age");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut denied = Gateway::start_with_args(&cluster, listen, None, &["--identity", outsider.to_str().unwrap()]);
    let listed = nfs_client(&cluster, "nfs-ls", &[&denied.url("finance")]);
    assert!(
        !listed.status.success(),
        "an outsider's gateway listed /finance: {}",
        said(&listed)
    );
    assert!(said(&listed).contains("NFS3ERR_ACCES"), "{}", said(&listed));
    assert!(!said(&listed).contains("ledger"), "{}", said(&listed));
    let copy = cluster.scratch_dir("nfs-copies").join("refused.txt");
    let copied = nfs_client(
        &cluster,
        "nfs-cp",
        &[&denied.url("finance/ledger.txt"), copy.to_str().unwrap()],
    );
    assert!(!copied.status.success(), "an outsider's gateway read a protected file");
    assert!(said(&copied).contains("NFS3ERR_ACCES"), "{}", said(&copied));
    fs::write(cluster.mount_dir().join("plain.txt"), b"plain tier\n").unwrap();
    let root = nfs_client(&cluster, "nfs-ls", &[&denied.url("")]);
    assert!(
        root.status.success() && said(&root).contains("plain.txt"),
        "{}",
        said(&root)
    );
    assert!(denied.is_running(), "the gateway died after a denial");
    denied.stop();
    a.stop();
    cluster.stop();
}

#[test]
fn the_volume_key_reaches_the_cluster_groups_machines_only() {
    let slapd = Slapd::start_test_directory();
    let mut cluster = Cluster::start(OPTIONS);
    add_ldap(&cluster, &slapd);
    let content = marked_content("standard tier", 200_000);
    write_file(cluster.mount_dir().join("plain.bin"), content.clone());
    let ino = fs::metadata(cluster.mount_dir().join("plain.bin")).unwrap().ino();

    // A workstation's copy of the config, without the volume key file.
    let workstation = cluster.scratch_dir("workstation");
    fs::copy(cluster.config_path(), workstation.join("sohofs.toml")).unwrap();
    let config = workstation.join("sohofs.toml");
    let debug_pieces = |identity: &Path| {
        let mut command = Command::new(sohofs_bin());
        command
            .args(["debug", "pieces", "--json", "--identity"])
            .arg(identity)
            .arg("--config")
            .arg(&config)
            .arg(format!("inode:{ino}"));
        sohofs_e2e::process::run_bounded(command, cluster.tag(), VERB_TIMEOUT)
    };
    let alpha = test_key("ws-alpha.age");
    let before = debug_pieces(&alpha);
    assert!(
        !before.status.success(),
        "a machine without the key file opened the volume before any sync"
    );
    assert!(said(&before).contains("keyring sync"), "{}", said(&before));

    // The sync wraps the volume key to the cluster group (standard tier).
    let report = json(
        cluster.run_verb(&["keyring", "sync", "--json"], VERB_TIMEOUT),
        "keyring sync",
    );
    let standard = report.as_array().unwrap().last().unwrap();
    assert_eq!(standard["policy"], 0, "{report}");
    let mut granted: Vec<&str> = standard["granted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    granted.sort();
    assert_eq!(
        granted,
        [
            "cn=ws-alpha,ou=machines,dc=example,dc=org",
            BETA_DN,
            "cn=ws-gamma,ou=machines,dc=example,dc=org"
        ],
        "{report}"
    );
    let again = json(
        cluster.run_verb(&["keyring", "sync", "--json"], VERB_TIMEOUT),
        "keyring sync again",
    );
    let standard = again.as_array().unwrap().last().unwrap();
    assert_eq!(standard["granted"], serde_json::json!([]), "{again}");
    assert_eq!(standard["revoked"], serde_json::json!([]), "{again}");

    // Alpha, in the cluster group, opens every piece with its identity alone.
    let opened = debug_pieces(&alpha);
    assert!(opened.status.success(), "{}", said(&opened));
    let pieces: Value = serde_json::from_slice(&opened.stdout).unwrap();
    let pieces = pieces.as_array().unwrap();
    assert!(
        !pieces.is_empty() && pieces.iter().all(|p| p["opened"] == true),
        "{pieces:?}"
    );
    // The outsider is told it is not approved, and gets nothing.
    let refused = debug_pieces(&test_key("ws-outsider.age"));
    assert!(!refused.status.success(), "{}", said(&refused));
    assert!(
        said(&refused).contains("not approved for the volume"),
        "{}",
        said(&refused)
    );
    let status = json(
        cluster.run_verb(&["keyring", "status", "--json"], VERB_TIMEOUT),
        "status",
    );
    let standard = status.as_array().unwrap().last().unwrap();
    assert_eq!(standard["tier"], "standard", "{status}");
    assert_eq!(standard["machines"].as_array().unwrap().len(), 3, "{status}");
    cluster.stop();
}
