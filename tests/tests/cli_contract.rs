//! Parts of the CLI contract that need no running cluster.

use std::process::Command;
use std::time::Duration;

use sohofs_e2e::mounts::{force_unmount, is_fuse_mounted};
use sohofs_e2e::process::{kill_tagged, pids_with_tag, run_bounded, RunTag};
use sohofs_e2e::sohofs_bin;

/// `up` must refuse before it starts anything.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn up_refuses_more_shards_than_nodes() {
    let scratch = tempfile::tempdir().expect("create a scratch directory");
    let data_dir = scratch.path().join("data");
    let mount_dir = scratch.path().join("mnt");
    std::fs::create_dir(&mount_dir).expect("create the mount point");
    let tag = RunTag::new();

    let mut up = Command::new(sohofs_bin());
    up.args(["up", "--nodes", "3", "--k", "4", "--m", "2", "--dir"])
        .arg(&data_dir)
        .arg("--mount")
        .arg(&mount_dir);
    let output = run_bounded(up, &tag, REFUSAL_TIMEOUT);

    // Clean up whatever a wrong implementation may have started before
    // asserting, so that a failure leaves nothing behind.
    let mounted = is_fuse_mounted(&mount_dir);
    let left_running = pids_with_tag(&tag);
    kill_tagged(&tag, Duration::from_secs(10));
    if mounted {
        force_unmount(&mount_dir);
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = format!("{stderr}{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        !output.status.success(),
        "`up --nodes 3 --k 4 --m 2` exited 0:\n{message}"
    );
    assert!(
        !mounted,
        "`up --nodes 3 --k 4 --m 2` mounted the volume before refusing"
    );
    assert!(
        left_running.is_empty(),
        "`up` refused but left processes running: {left_running:?}"
    );
    assert!(
        stderr.to_lowercase().contains("node"),
        "the refusal on stderr does not say it is about nodes: {stderr:?}"
    );
}

/// The tryout of 2026-12-04: `up` on a volume whose `volume.key` was gone
/// made a new key, so every old file read as EIO and the files written
/// next were lost again when the old key came back. It must refuse, say
/// why, and make no key.
#[test]
fn up_refuses_to_make_a_new_key_for_an_existing_volume() {
    for left_behind in ["meta/CURRENT", "sohofs.toml"] {
        let scratch = tempfile::tempdir().expect("create a scratch directory");
        let data_dir = scratch.path().join("data");
        let mount_dir = scratch.path().join("mnt");
        std::fs::create_dir(&mount_dir).expect("create the mount point");
        let existing = data_dir.join(left_behind);
        std::fs::create_dir_all(existing.parent().unwrap()).expect("create the volume's folders");
        std::fs::write(&existing, b"a volume was here\n").expect("write a file of the old volume");
        let tag = RunTag::new();

        let mut up = Command::new(sohofs_bin());
        up.args(["up", "--nodes", "3", "--k", "2", "--m", "1", "--dir"])
            .arg(&data_dir)
            .arg("--mount")
            .arg(&mount_dir);
        let output = run_bounded(up, &tag, REFUSAL_TIMEOUT);
        let mounted = is_fuse_mounted(&mount_dir);
        let left_running = pids_with_tag(&tag);
        kill_tagged(&tag, Duration::from_secs(10));
        if mounted {
            force_unmount(&mount_dir);
        }

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "with {left_behind} and no key, `up` exited 0:\n{stderr}"
        );
        assert!(!mounted, "with {left_behind} and no key, `up` mounted the volume");
        assert!(
            left_running.is_empty(),
            "`up` refused but left processes: {left_running:?}"
        );
        assert!(
            stderr.contains("volume.key") && stderr.contains("missing"),
            "the refusal does not say the key is missing: {stderr:?}"
        );
        assert!(
            !data_dir.join("volume.key").exists(),
            "with {left_behind} and no key, `up` made a new key"
        );
    }
}
