//! `sohofs keyring init` and `sohofs keyring check` as a script would run
//! them: exit codes, stdout, `--json`, against a real slapd.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use sohofs_e2e::process::{run_bounded, RunTag};
use sohofs_e2e::slapd::{Slapd, TEST_CLUSTER_GROUP};
use sohofs_e2e::sohofs_bin;

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn sohofs(args: &[&str]) -> Output {
    let mut command = Command::new(sohofs_bin());
    command.args(args);
    run_bounded(command, &RunTag::new(), CLI_TIMEOUT)
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sohofs failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn init_makes_one_private_identity_and_prints_its_recipient_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.age");
    let path_arg = path.to_str().unwrap();

    let first = stdout_of(&sohofs(&["keyring", "init", "--identity", path_arg]));
    let recipient = first.trim();
    assert!(recipient.starts_with("age1") && !recipient.contains(' '), "{first}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let identity_text = std::fs::read_to_string(&path).unwrap();

    let again: Value = serde_json::from_str(&stdout_of(&sohofs(&[
        "keyring",
        "init",
        "--identity",
        path_arg,
        "--json",
    ])))
    .unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["kind"], "age-x25519");
    assert_eq!(again["recipient"], recipient);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), identity_text, "left as it was");

    // The age CLI agrees on the public half.
    let keygen = Command::new("age-keygen").arg("-y").arg(&path).output().unwrap();
    assert_eq!(String::from_utf8(keygen.stdout).unwrap().trim(), recipient);

    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "not a key\n").unwrap();
    let refused = sohofs(&["keyring", "init", "--identity", other.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no age identity"));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "not a key\n");
}

fn write_config(dir: &std::path::Path, slapd: &Slapd, password: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("ldap.secret"), format!("{password}\n")).unwrap();
    let config = format!(
        r#"meta = ["127.0.0.1:1"]
data_key_file = "volume.key"

[volume]
k = 2
m = 1
write_quorum = 3
chunk_bytes = 4194304
inline_bytes_max = 4096

{ldap}"#,
        ldap = slapd.config_table(),
    );
    let path = dir.join("sohofs.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn check_lists_the_machines_ldap_approves() {
    let slapd = Slapd::start_test_directory();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &slapd, slapd.admin_password());
    let config_arg = config.to_str().unwrap();

    let report: Value = serde_json::from_str(&stdout_of(&sohofs(&[
        "keyring", "check", "--config", config_arg, "--json",
    ])))
    .unwrap();
    assert_eq!(report["group"], TEST_CLUSTER_GROUP);
    let approved: Vec<&str> = report["approved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|machine| machine["name"].as_str().unwrap())
        .collect();
    assert_eq!(approved, ["ws-alpha", "ws-beta", "ws-gamma"]);
    assert_eq!(report["approved"][1]["recipients"][0]["kind"], "ssh-ed25519");
    let unusable: Vec<&str> = report["unusable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|machine| machine["name"].as_str().unwrap())
        .collect();
    assert_eq!(unusable, ["ws-delta", "ws-epsilon"]);

    let table = stdout_of(&sohofs(&["keyring", "check", "--config", config_arg]));
    assert!(table.starts_with("3 machines approved by"), "{table}");
    assert!(table.contains("2 members that get no key"), "{table}");

    // Whether a given machine is approved, by its identity.
    let gamma = sohofs_e2e::slapd::test_key("ws-gamma.age");
    let outsider = sohofs_e2e::slapd::test_key("ws-outsider.age");
    let as_gamma: Value = serde_json::from_str(&stdout_of(&sohofs(&[
        "keyring",
        "check",
        "--config",
        config_arg,
        "--identity",
        gamma.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(as_gamma["this_machine"]["approved_as"], "ws-gamma");
    let as_outsider = stdout_of(&sohofs(&[
        "keyring",
        "check",
        "--config",
        config_arg,
        "--identity",
        outsider.to_str().unwrap(),
    ]));
    assert!(as_outsider.contains("this machine is not approved"), "{as_outsider}");

    let bad = write_config(dir.path(), &slapd, "wrong-password");
    let refused = sohofs(&["keyring", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused the bind"), "{stderr}");
}
