//! The slapd harness itself: it serves the test directory, and a test that
//! fails leaves no server, port or folder behind.

use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;

use sohofs_e2e::process::is_alive;
use sohofs_e2e::slapd::{Slapd, TEST_CLUSTER_GROUP};

#[test]
fn the_test_directory_is_served_and_a_failing_test_leaves_nothing_behind() {
    let mut seen = None;
    let failed = catch_unwind(AssertUnwindSafe(|| {
        let mut slapd = Slapd::start_test_directory();
        assert!(slapd.is_running());
        let search = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-H", &slapd.url(), "-D", slapd.admin_dn(), "-w"])
            .arg(slapd.admin_password())
            .args(["-b", TEST_CLUSTER_GROUP, "-s", "base", "member"])
            .output()
            .unwrap();
        assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
        let members = String::from_utf8(search.stdout).unwrap();
        assert_eq!(members.matches("member: ").count(), 4, "{members}");
        seen = Some((slapd.pid(), slapd.port(), slapd.folder().to_path_buf()));
        panic!("the test fails here, with slapd running");
    }));
    assert!(failed.is_err());
    let (pid, port, folder) = seen.expect("slapd started");
    assert!(!is_alive(pid), "slapd {pid} outlived the failed test");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers"
    );
    assert!(!folder.exists(), "{} is left", folder.display());
}
