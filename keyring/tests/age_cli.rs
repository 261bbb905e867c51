//! Envelopes cross-checked with the `age` command-line tool (Debian package
//! `age`, installed by scripts/install-deps.sh): what sohofs wraps, `age -d`
//! opens; what `age -r` wraps for sohofs's recipients, sohofs opens.

use std::io::Write;
use std::process::{Command, Stdio};

use sohofs_e2e::slapd::test_key;
use sohofs_keyring::{unwrap_key, wrap_key, DataKey, MachineIdentity, UnwrapError, DATA_KEY_BYTES};

fn identity(name: &str) -> MachineIdentity {
    MachineIdentity::load(&test_key(name)).unwrap()
}

/// Runs `age` with `args`, feeding `input`; returns stdout, or panics with
/// stderr.
fn age_cli(args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("age")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the age CLI (scripts/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn an_envelope_sohofs_wrote_opens_with_the_age_cli_for_each_recipient() {
    let key = DataKey::generate();
    let sealed = wrap_key(
        &key,
        &[
            identity("ws-alpha.age").recipient(),
            identity("ws-beta_ed25519").recipient(),
        ],
    )
    .unwrap();
    for name in ["ws-alpha.age", "ws-beta_ed25519"] {
        let path = test_key(name);
        let opened = age_cli(&["-d", "-i", path.to_str().unwrap()], &sealed).unwrap();
        assert_eq!(opened, key.expose_bytes(), "{name}");
    }
    let outsider = test_key("ws-outsider.age");
    let refused = age_cli(&["-d", "-i", outsider.to_str().unwrap()], &sealed).unwrap_err();
    assert!(refused.contains("no identity matched"), "{refused}");
}

#[test]
fn an_envelope_the_age_cli_wrote_for_our_recipients_opens_in_sohofs() {
    let key = [0x5Au8; DATA_KEY_BYTES];
    let alpha = identity("ws-alpha.age").recipient().to_string();
    let beta = identity("ws-beta_ed25519").recipient().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("envelope.age");
    age_cli(&["-r", &alpha, "-r", &beta, "-o", out.to_str().unwrap()], &key).unwrap();
    let sealed = std::fs::read(&out).unwrap();
    for name in ["ws-alpha.age", "ws-beta_ed25519"] {
        assert_eq!(
            unwrap_key(&sealed, &identity(name)).unwrap(),
            DataKey::from_bytes(key),
            "{name}"
        );
    }
    assert_eq!(
        unwrap_key(&sealed, &identity("ws-outsider.age")),
        Err(UnwrapError::NotRecipient)
    );
}

#[test]
fn an_armored_file_from_the_age_cli_is_refused_as_corrupt() {
    let alpha = identity("ws-alpha.age");
    let armored = age_cli(&["-a", "-r", &alpha.recipient().to_string()], &[1u8; DATA_KEY_BYTES]).unwrap();
    assert!(armored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    assert!(unwrap_key(&armored, &alpha).unwrap_err().is_corruption());
}
