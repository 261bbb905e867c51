//! A real OpenLDAP server for tests: `slapd` with a private cn=config built
//! from LDIF in a scratch folder, listening on a free port of 127.0.0.1, with
//! a directory loaded before it starts. The system's slapd (service, config,
//! database) is neither used nor needed.
//!
//! The directory is loaded offline with `slapadd`, which writes operational
//! attributes as given: `tests/ldap/directory.ldif` uses that to give one
//! machine a `memberOf` that no group's `member` backs, as a FreeIPA host in
//! a nested hostgroup has. The memberof overlay runs in the server, so a
//! test that changes a group's `member` sees `memberOf` follow.
//!
//! Dropping a [`Slapd`] — also while a test panics — stops the server
//! (SIGTERM, then SIGKILL of its process group) and removes the folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::gateway::free_port;
use crate::process::{is_alive, kill_orphans_of_dead_test_processes, log_tail, run_bounded, terminate, RunTag};

/// From spawning slapd to a successful bind.
pub const SLAPD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One `slapadd` or `ldapmodify` run.
const LDAP_TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Attempts at a free port (another process may take it first).
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;
/// Where Debian's slapd keeps its modules and its stock schema LDIF.
const MODULE_DIR: &str = "/usr/lib/ldap";
const STOCK_SCHEMA_DIR: &str = "/etc/ldap/schema";

pub const TEST_SUFFIX: &str = "dc=example,dc=org";
pub const TEST_ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const TEST_ADMIN_PASSWORD: &str = "sohofs-test-admin";
/// The cluster group of the test directory.
pub const TEST_CLUSTER_GROUP: &str = "cn=sohofs-machines,ou=groups,dc=example,dc=org";
pub const TEST_FINANCE_GROUP: &str = "cn=finance-machines,ou=groups,dc=example,dc=org";

/// `tests/ldap/`: the test directory, the openssh-lpk schema and test keys.
pub fn ldap_test_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ldap")
}

/// A test key of `tests/ldap/keys/`.
pub fn test_key(name: &str) -> PathBuf {
    ldap_test_data_dir().join("keys").join(name)
}

/// What a server holds.
#[derive(Clone, Debug)]
pub struct SlapdOptions {
    pub suffix: String,
    pub admin_dn: String,
    pub admin_password: String,
    /// Schema LDIF for cn=config beyond the stock core, cosine, nis and
    /// inetorgperson.
    pub extra_schemas: Vec<PathBuf>,
    /// Entries loaded before the server starts.
    pub directory: Vec<PathBuf>,
    /// Also serve TLS: StartTLS on the `ldap://` port and `ldaps://` on a
    /// second one, with a certificate for 127.0.0.1 from a CA made for this
    /// server alone ([`Slapd::ca_file`]).
    pub tls: bool,
}

impl SlapdOptions {
    /// The office of `tests/ldap/directory.ldif`.
    pub fn test_directory() -> SlapdOptions {
        SlapdOptions {
            suffix: TEST_SUFFIX.into(),
            admin_dn: TEST_ADMIN_DN.into(),
            admin_password: TEST_ADMIN_PASSWORD.into(),
            extra_schemas: vec![ldap_test_data_dir().join("openssh-lpk.ldif")],
            directory: vec![ldap_test_data_dir().join("directory.ldif")],
            tls: false,
        }
    }
}

/// A running slapd.
pub struct Slapd {
    child: Option<Child>,
    port: u16,
    /// The `ldaps://` port, when TLS is on.
    tls_port: Option<u16>,
    options: SlapdOptions,
    dir: tempfile::TempDir,
    tag: RunTag,
}

impl Slapd {
    /// A server holding the test directory.
    pub fn start_test_directory() -> Slapd {
        Slapd::start(SlapdOptions::test_directory())
    }

    pub fn start(options: SlapdOptions) -> Slapd {
        // A test process killed outright leaves its slapd behind (it runs
        // in a process group of its own); its run tag finds it.
        kill_orphans_of_dead_test_processes();
        for attempt in 1..=START_ATTEMPTS {
            match Slapd::try_start(options.clone()) {
                Ok(slapd) => return slapd,
                Err(reason) if attempt < START_ATTEMPTS => {
                    eprintln!("slapd attempt {attempt} failed, trying another port: {reason}")
                }
                Err(reason) => panic!("slapd did not start: {reason}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn try_start(options: SlapdOptions) -> Result<Slapd, String> {
        let dir = tempfile::Builder::new()
            .prefix("sohofs-slapd-")
            .tempdir()
            .map_err(|error| format!("scratch folder: {error}"))?;
        let tag = RunTag::new();
        let config_dir = dir.path().join("slapd.d");
        let data_dir = dir.path().join("data");
        for folder in [&config_dir, &data_dir] {
            fs::create_dir(folder).map_err(|error| format!("create {}: {error}", folder.display()))?;
        }
        let tls = if options.tls {
            Some(make_certificates(dir.path(), &tag)?)
        } else {
            None
        };
        let config_ldif = dir.path().join("config.ldif");
        fs::write(
            &config_ldif,
            config_ldif_text(&options, dir.path(), &data_dir, tls.as_ref()),
        )
        .map_err(|error| format!("write config.ldif: {error}"))?;
        let mut load_config = Command::new("slapadd");
        load_config
            .arg("-n0")
            .arg("-F")
            .arg(&config_dir)
            .arg("-l")
            .arg(&config_ldif);
        run_checked(load_config, &tag, "slapadd of cn=config")?;
        for ldif in &options.directory {
            let mut load = Command::new("slapadd");
            load.arg("-F")
                .arg(&config_dir)
                .arg("-b")
                .arg(&options.suffix)
                .arg("-l")
                .arg(ldif);
            run_checked(load, &tag, &format!("slapadd of {}", ldif.display()))?;
        }

        let port = free_port();
        let tls_port = options.tls.then(free_port);
        let mut listen = format!("ldap://127.0.0.1:{port}/");
        if let Some(tls_port) = tls_port {
            listen.push_str(&format!(" ldaps://127.0.0.1:{tls_port}/"));
        }
        let log_path = dir.path().join("slapd.log");
        let log = fs::File::create(&log_path).map_err(|error| format!("create slapd.log: {error}"))?;
        let mut command = Command::new("slapd");
        // `-d` keeps slapd in the foreground (so it is our child, and its
        // process group ours to end) and logs connections and operations.
        command
            .arg("-F")
            .arg(&config_dir)
            .arg("-h")
            .arg(listen)
            .args(["-d", "stats"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|error| error.to_string())?)
            .stderr(log);
        tag.apply(&mut command);
        let child = command.spawn().map_err(|error| format!("spawn slapd: {error}"))?;
        let mut slapd = Slapd {
            child: Some(child),
            port,
            tls_port,
            options,
            dir,
            tag,
        };
        slapd.wait_ready()?;
        Ok(slapd)
    }

    /// Binds as the admin with `ldapwhoami` until it works or slapd exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        loop {
            let child = self.child.as_mut().expect("slapd was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("slapd exited with {status}\n{}", self.log_tail()));
            }
            let mut whoami = Command::new("ldapwhoami");
            whoami
                .args(["-x", "-H", &self.url(), "-D", &self.options.admin_dn, "-w"])
                .arg(&self.options.admin_password);
            if run_bounded(whoami, &self.tag, LDAP_TOOL_TIMEOUT).status.success() {
                return Ok(());
            }
            if started.elapsed() > SLAPD_READY_TIMEOUT {
                return Err(format!(
                    "slapd did not answer a bind within {SLAPD_READY_TIMEOUT:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ldap://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ldaps://127.0.0.1:PORT`; panics unless started with `tls`.
    pub fn ldaps_url(&self) -> String {
        let port = self.tls_port.expect("slapd was started without tls");
        format!("ldaps://127.0.0.1:{port}")
    }

    /// The PEM file of the CA that signed the server's certificate; panics
    /// unless started with `tls`.
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls_port.is_some(), "slapd was started without tls");
        self.dir.path().join("tls/ca.pem")
    }

    /// The `[ldap]` table of a cluster config for the test directory, with
    /// its bind password read from `ldap.secret` beside the config.
    pub fn config_table(&self) -> String {
        format!(
            r#"[ldap]
url = "{url}"
bind_dn = "{bind_dn}"
bind_password_file = "ldap.secret"
base_dn = "{TEST_SUFFIX}"
machine_filter = "(objectClass=device)"
recipient_attribute = "sshPublicKey"
cluster_group = "{TEST_CLUSTER_GROUP}"
"#,
            url = self.url(),
            bind_dn = self.admin_dn(),
        )
    }

    pub fn suffix(&self) -> &str {
        &self.options.suffix
    }

    pub fn admin_dn(&self) -> &str {
        &self.options.admin_dn
    }

    pub fn admin_password(&self) -> &str {
        &self.options.admin_password
    }

    /// A file in the server's folder holding `password` and a newline, as a
    /// `bind_password_file` would.
    pub fn password_file(&self, password: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("bind-{:08x}.secret", rand::random::<u32>()));
        fs::write(&path, format!("{password}\n")).expect("write a password file");
        path
    }

    /// Applies an LDIF of changes (`changetype: modify`, `add`, `delete`)
    /// as the admin; panics with the tool's output if it fails.
    pub fn modify(&self, ldif: &str) {
        let path = self
            .dir
            .path()
            .join(format!("change-{:08x}.ldif", rand::random::<u32>()));
        fs::write(&path, ldif).expect("write a change LDIF");
        let mut command = Command::new("ldapmodify");
        command
            .args(["-x", "-H", &self.url(), "-D", &self.options.admin_dn, "-w"])
            .arg(&self.options.admin_password)
            .arg("-f")
            .arg(&path);
        if let Err(reason) = run_checked(command, &self.tag, "ldapmodify") {
            panic!("{reason}\n--- change ---\n{ldif}");
        }
    }

    /// Removes `member_dn` from the groupOfNames `group_dn`.
    pub fn remove_member(&self, group_dn: &str, member_dn: &str) {
        self.modify(&format!(
            "dn: {group_dn}\nchangetype: modify\ndelete: member\nmember: {member_dn}\n"
        ));
    }

    /// Adds `member_dn` to the groupOfNames `group_dn`.
    pub fn add_member(&self, group_dn: &str, member_dn: &str) {
        self.modify(&format!(
            "dn: {group_dn}\nchangetype: modify\nadd: member\nmember: {member_dn}\n"
        ));
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("slapd is running").id() as i32
    }

    /// The scratch folder: config, database, TLS files, log.
    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("slapd is running");
        matches!(child.try_wait(), Ok(None)) && is_alive(child.id() as i32)
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("slapd.log"), LOG_TAIL_LINES)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_GRACE);
        }
    }
}

fn run_checked(command: Command, tag: &RunTag, what: &str) -> Result<(), String> {
    let output = run_bounded(command, tag, LDAP_TOOL_TIMEOUT);
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Where the server's TLS files are.
struct TlsFiles {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

/// A CA and a certificate it signs for 127.0.0.1 and localhost, valid for
/// two days, made with the openssl CLI in `run_dir/tls`.
fn make_certificates(run_dir: &Path, tag: &RunTag) -> Result<TlsFiles, String> {
    let tls_dir = run_dir.join("tls");
    fs::create_dir(&tls_dir).map_err(|error| format!("create {}: {error}", tls_dir.display()))?;
    let path = |name: &str| tls_dir.join(name);
    fs::write(path("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .map_err(|error| format!("write server.ext: {error}"))?;
    let steps: [(&str, Vec<String>); 3] = [
        (
            "make the test CA",
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=sohofs test CA",
                "-keyout",
            ]
            .into_iter()
            .map(String::from)
            .chain([
                path("ca.key").display().to_string(),
                "-out".into(),
                path("ca.pem").display().to_string(),
            ])
            .collect(),
        ),
        (
            "make the server key and request",
            vec![
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ]
            .into_iter()
            .map(String::from)
            .chain([
                path("server.key").display().to_string(),
                "-out".into(),
                path("server.csr").display().to_string(),
            ])
            .collect(),
        ),
        (
            "sign the server certificate",
            ["x509", "-req", "-days", "2", "-CAcreateserial"]
                .into_iter()
                .map(String::from)
                .chain(
                    [
                        ("-in", "server.csr"),
                        ("-CA", "ca.pem"),
                        ("-CAkey", "ca.key"),
                        ("-extfile", "server.ext"),
                        ("-out", "server.pem"),
                    ]
                    .into_iter()
                    .flat_map(|(flag, name)| [flag.to_string(), path(name).display().to_string()]),
                )
                .collect(),
        ),
    ];
    for (what, args) in steps {
        let mut command = Command::new("openssl");
        command.args(args);
        run_checked(command, tag, what)?;
    }
    Ok(TlsFiles {
        ca: path("ca.pem"),
        certificate: path("server.pem"),
        key: path("server.key"),
    })
}

/// The server's whole cn=config: modules, schema, one mdb database for the
/// suffix with the admin as its root DN, and the memberof overlay.
fn config_ldif_text(options: &SlapdOptions, run_dir: &Path, data_dir: &Path, tls: Option<&TlsFiles>) -> String {
    let tls_settings = match tls {
        Some(files) => format!(
            "olcTLSCACertificateFile: {}\nolcTLSCertificateFile: {}\nolcTLSCertificateKeyFile: {}\n",
            files.ca.display(),
            files.certificate.display(),
            files.key.display()
        ),
        None => String::new(),
    };
    let mut schemas: Vec<PathBuf> = ["core", "cosine", "nis", "inetorgperson"]
        .iter()
        .map(|name| Path::new(STOCK_SCHEMA_DIR).join(format!("{name}.ldif")))
        .collect();
    schemas.extend(options.extra_schemas.iter().cloned());
    let includes: String = schemas
        .iter()
        .map(|path| format!("include: file://{}\n", path.display()))
        .collect();
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {run}/slapd.pid
olcArgsFile: {run}/slapd.args
{tls_settings}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}
dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcDbDirectory: {data}
olcRootDN: {admin_dn}
olcRootPW: {admin_password}
olcDbMaxSize: 67108864
olcDbIndex: objectClass eq
olcDbIndex: member eq
olcDbIndex: memberOf eq

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfRefInt: TRUE
",
        run = run_dir.display(),
        suffix = options.suffix,
        data = data_dir.display(),
        admin_dn = options.admin_dn,
        admin_password = options.admin_password,
    )
}
