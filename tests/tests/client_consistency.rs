//! What a first user found broken, kept as tests: metadata changes must not
//! hide buffered data, O_APPEND appends at the true end across clients
//! (close-to-open), and creating a file another client just made opens it.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use sohofs_e2e::{Cluster, ClusterOptions};

const OPTIONS: ClusterOptions = ClusterOptions { nodes: 3, k: 2, m: 1 };

#[test]
fn client_consistency() {
    let cluster = Cluster::start(OPTIONS);
    let mount = cluster.mount_dir().to_path_buf();

    // chmod while 8 MiB are still buffered: size and bytes stay, and an
    // append lands after them.
    let path = mount.join("buffered.bin");
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(&payload).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            payload.len() as u64,
            "size after chmod"
        );
    }
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"TRAILER")
        .unwrap();
    let mut expected = payload.clone();
    expected.extend_from_slice(b"TRAILER");
    assert_eq!(fs::read(&path).unwrap(), expected, "content after chmod and append");

    // Alternating appends from two clients, each closed before the next.
    let other = cluster.mount_client();
    let log_a = mount.join("shared.log");
    let log_b = other.mount_dir().join("shared.log");
    let mut lines = String::new();
    for round in 0..10 {
        for (path, who) in [(&log_a, "one"), (&log_b, "two")] {
            let line = format!("{who}-{round}\n");
            let mut file = OpenOptions::new().create(true).append(true).open(path).unwrap();
            file.write_all(line.as_bytes()).unwrap();
            lines.push_str(&line);
        }
    }
    let mut seen = String::new();
    fs::File::open(&log_a).unwrap().read_to_string(&mut seen).unwrap();
    assert_eq!(seen, lines, "appends from two clients, read on the first");
    let mut seen_other = String::new();
    fs::File::open(&log_b).unwrap().read_to_string(&mut seen_other).unwrap();
    assert_eq!(seen_other, lines, "appends from two clients, read on the second");

    // A file made on one client since the other's lookup: open(O_CREAT)
    // without O_EXCL on the other opens it.
    for round in 0..5 {
        let name = format!("race-{round}");
        let _ = fs::metadata(other.mount_dir().join(&name));
        fs::write(mount.join(&name), b"first").unwrap();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(other.mount_dir().join(&name))
            .expect("O_CREAT without O_EXCL opens an existing file");
        file.write_all(b"+second").unwrap();
        drop(file);
        assert_eq!(fs::read(mount.join(&name)).unwrap(), b"first+second");
    }
    other.stop();
}
