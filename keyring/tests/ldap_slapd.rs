//! LDAP approval against a real slapd holding tests/ldap/directory.ldif.

use std::path::Path;

use sohofs_e2e::slapd::{test_key, Slapd, SlapdOptions, TEST_ADMIN_PASSWORD, TEST_CLUSTER_GROUP, TEST_FINANCE_GROUP};
use sohofs_keyring::{
    open_envelope, seal_envelope, Approval, DataKey, Directory, Grantee, LdapConfig, LdapError, MachineIdentity,
    PosixUser, PosixUsers, UnwrapError,
};

const BETA_DN: &str = "cn=ws-beta,ou=machines,dc=example,dc=org";
const OUTSIDER_DN: &str = "cn=ws-outsider,ou=machines,dc=example,dc=org";
const STAFF_GROUP: &str = "cn=staff,ou=groups,dc=example,dc=org";
const STAFF_POSIX_GROUP: &str = "cn=staff-posix,ou=groups,dc=example,dc=org";
const BOB_DN: &str = "uid=bob,ou=people,dc=example,dc=org";
const CAROL_DN: &str = "uid=carol,ou=people,dc=example,dc=org";
const DAVE_DN: &str = "uid=dave,ou=people,dc=example,dc=org";

fn config(slapd: &Slapd, password_file: &Path) -> LdapConfig {
    LdapConfig {
        url: slapd.url(),
        bind_dn: slapd.admin_dn().into(),
        bind_password_file: password_file.into(),
        base_dn: slapd.suffix().into(),
        machine_filter: "(objectClass=device)".into(),
        recipient_attribute: "sshPublicKey".into(),
        cluster_group: TEST_CLUSTER_GROUP.into(),
        starttls: false,
        ca_file: None,
    }
}

async fn connect(slapd: &Slapd) -> Directory {
    let password_file = slapd.password_file(slapd.admin_password());
    Directory::connect(&config(slapd, &password_file))
        .await
        .expect("bind as admin")
}

fn approved_names(approval: &Approval) -> Vec<&str> {
    approval.approved.iter().map(|machine| machine.name.as_str()).collect()
}

fn uids(users: &PosixUsers) -> Vec<&str> {
    users.users.iter().map(|user| user.uid.as_str()).collect()
}

fn person(uid: &str, id_number: u32) -> PosixUser {
    PosixUser {
        dn: format!("uid={uid},ou=people,dc=example,dc=org"),
        uid: uid.into(),
        uid_number: id_number,
        gid_number: id_number,
    }
}

fn recipient_of(name: &str) -> String {
    MachineIdentity::load(&test_key(name)).unwrap().recipient().to_string()
}

#[tokio::test]
async fn the_cluster_group_counts_member_and_member_of_and_reports_keyless_machines() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let approval = directory.cluster_machines().await.unwrap();
    // ws-alpha and ws-beta are listed in `member`; ws-gamma only has
    // `memberOf` (FreeIPA style); ws-outsider is in no group.
    assert_eq!(approved_names(&approval), ["ws-alpha", "ws-beta", "ws-gamma"]);
    let keys: Vec<String> = approval
        .approved
        .iter()
        .map(|machine| machine.recipients[0].to_string())
        .collect();
    assert_eq!(
        keys,
        [
            recipient_of("ws-alpha.age"),
            recipient_of("ws-beta_ed25519"),
            recipient_of("ws-gamma.age")
        ]
    );
    assert_eq!(approval.approved[1].dn, BETA_DN);
    let unusable: Vec<(&str, &str)> = approval
        .unusable
        .iter()
        .map(|machine| (machine.name.as_str(), machine.reason.as_str()))
        .collect();
    assert_eq!(unusable.len(), 2, "{unusable:?}");
    assert_eq!(unusable[0], ("ws-delta", "publishes no key"));
    assert_eq!(unusable[1].0, "ws-epsilon");
    assert!(unusable[1].1.contains("ssh-rsa"), "{}", unusable[1].1);
    directory.close().await;
}

#[tokio::test]
async fn a_member_taken_out_of_the_group_is_no_longer_approved_and_one_put_in_is() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let before = directory.approved_machines(TEST_FINANCE_GROUP).await.unwrap();
    assert_eq!(approved_names(&before), ["ws-alpha", "ws-beta"]);

    slapd.remove_member(TEST_FINANCE_GROUP, BETA_DN);
    slapd.add_member(TEST_FINANCE_GROUP, OUTSIDER_DN);
    // The same session sees the change: nothing is cached. ws-beta's own
    // memberOf no longer names the group either (the overlay followed), or
    // it would still count.
    let after = directory.approved_machines(TEST_FINANCE_GROUP).await.unwrap();
    assert_eq!(approved_names(&after), ["ws-alpha", "ws-outsider"]);
    // Its other membership is untouched.
    let cluster = directory.cluster_machines().await.unwrap();
    assert!(approved_names(&cluster).contains(&"ws-beta"));
    directory.close().await;
}

#[tokio::test]
async fn a_wrong_bind_password_is_a_clear_error() {
    let slapd = Slapd::start_test_directory();
    let wrong = slapd.password_file("not-the-password");
    let error = Directory::connect(&config(&slapd, &wrong))
        .await
        .err()
        .expect("bind must fail");
    assert!(matches!(error, LdapError::BindRejected { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "the directory refused the bind as cn=admin,dc=example,dc=org: wrong password or no such user"
    );
}

#[tokio::test]
async fn a_group_that_does_not_exist_is_an_error_not_an_empty_group() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let error = directory
        .approved_machines("cn=no-such-group,ou=groups,dc=example,dc=org")
        .await
        .unwrap_err();
    assert!(matches!(error, LdapError::GroupNotFound { .. }), "{error:?}");
    let error = directory
        .posix_users("cn=no-such-group,ou=groups,dc=example,dc=org")
        .await
        .unwrap_err();
    assert!(matches!(error, LdapError::GroupNotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn the_people_of_a_group_of_names_have_their_ids_and_root_is_refused() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let staff = directory.posix_users(STAFF_GROUP).await.unwrap();
    // alice and bob are in `member` and have the `memberOf` to match; dave
    // is listed too but is uidNumber 0.
    assert_eq!(staff.users, [person("alice", 10001), person("bob", 10002)]);
    assert_eq!(staff.unusable.len(), 1, "{:?}", staff.unusable);
    assert_eq!(staff.unusable[0].dn, DAVE_DN);
    assert_eq!(staff.unusable[0].reason, "uidNumber is 0 (root)");
    directory.close().await;
}

#[tokio::test]
async fn a_posix_group_names_its_people_by_uid() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let staff_posix = directory.posix_users(STAFF_POSIX_GROUP).await.unwrap();
    assert_eq!(staff_posix.users, [person("alice", 10001), person("carol", 10003)]);
    assert!(staff_posix.unusable.is_empty(), "{:?}", staff_posix.unusable);
    directory.close().await;
}

#[tokio::test]
async fn a_person_taken_out_of_the_group_is_no_longer_listed_and_one_put_in_is() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let before = directory.posix_users(STAFF_GROUP).await.unwrap();
    assert_eq!(uids(&before), ["alice", "bob"]);

    slapd.remove_member(STAFF_GROUP, BOB_DN);
    slapd.add_member(STAFF_GROUP, CAROL_DN);
    // The same session sees the change. bob's memberOf no longer names the group either (the overlay
    // followed), or he would still count.
    let staff = directory.posix_users(STAFF_GROUP).await.unwrap();
    assert_eq!(uids(&staff), ["alice", "carol"]);
    assert_eq!(staff.unusable.len(), 1, "{:?}", staff.unusable);
    assert_eq!(staff.unusable[0].dn, DAVE_DN);
    directory.close().await;
}

#[tokio::test]
async fn a_server_that_is_gone_is_a_transient_connect_error() {
    let scratch = tempfile::tempdir().unwrap();
    let password_file = scratch.path().join("ldap.secret");
    std::fs::write(&password_file, TEST_ADMIN_PASSWORD).unwrap();
    let slapd = Slapd::start_test_directory();
    let config = config(&slapd, &password_file);
    drop(slapd);
    let error = Directory::connect(&config).await.err().expect("nobody listens");
    assert!(matches!(error, LdapError::Connect { .. }), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn an_envelope_for_the_finance_group_opens_on_its_machines_only() {
    let slapd = Slapd::start_test_directory();
    let mut directory = connect(&slapd).await;
    let approval = directory.approved_machines(TEST_FINANCE_GROUP).await.unwrap();
    let grantees: Vec<Grantee> = approval
        .approved
        .iter()
        .map(|machine| Grantee {
            machine: machine.dn.clone(),
            recipient: machine.recipients[0].clone(),
        })
        .collect();
    let key = DataKey::generate();
    let envelope = seal_envelope(1, 1, &key, &grantees).unwrap();
    for name in ["ws-alpha.age", "ws-beta_ed25519"] {
        let identity = MachineIdentity::load(&test_key(name)).unwrap();
        assert_eq!(open_envelope(&envelope, &identity).unwrap(), key, "{name}");
    }
    for name in ["ws-gamma.age", "ws-outsider.age"] {
        let identity = MachineIdentity::load(&test_key(name)).unwrap();
        assert_eq!(
            open_envelope(&envelope, &identity),
            Err(UnwrapError::NotRecipient),
            "{name}"
        );
    }
}

#[tokio::test]
async fn starttls_and_ldaps_bind_with_the_configured_ca_and_fail_without_it() {
    let mut options = SlapdOptions::test_directory();
    options.tls = true;
    let slapd = Slapd::start(options);
    let password_file = slapd.password_file(slapd.admin_password());

    let mut starttls = config(&slapd, &password_file);
    starttls.starttls = true;
    starttls.ca_file = Some(slapd.ca_file());
    let mut ldaps = config(&slapd, &password_file);
    ldaps.url = slapd.ldaps_url();
    ldaps.ca_file = Some(slapd.ca_file());
    for tls_config in [&starttls, &ldaps] {
        let mut directory = Directory::connect(tls_config)
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", tls_config.url));
        let approval = directory.approved_machines(TEST_FINANCE_GROUP).await.unwrap();
        assert_eq!(approved_names(&approval), ["ws-alpha", "ws-beta"]);
        directory.close().await;
    }

    // The test CA is not among the system's roots: without ca_file the
    // server's certificate is refused before any password is sent.
    let mut untrusted = starttls.clone();
    untrusted.ca_file = None;
    let error = Directory::connect(&untrusted)
        .await
        .err()
        .expect("untrusted certificate");
    assert!(matches!(error, LdapError::Connect { .. }), "{error:?}");
}
