//! The audit trail for the SIEM: one JSON object per line, appended to a
//! file, with Elastic Common Schema field names. Fields are written nested
//! (`{"event":{"action":…}}`), the shape Elasticsearch stores `event.action`
//! in, so Filebeat's ndjson input ships the lines without any mapping;
//! sohofs-specific fields sit under `sohofs.*`, as ECS asks of custom fields.
//!
//! Each event is one `write` of a whole line to a file opened with
//! O_APPEND, so lines from concurrent writers (threads or processes) never
//! interleave. Lines are not fsynced one by one: a crash may lose the last
//! lines the kernel had not written out, never corrupt earlier ones.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

/// The ECS version whose field names these lines use.
pub const ECS_VERSION: &str = "8.11.0";
/// An event line longer than this is cut down (its `message` first): the
/// SIEM's line reader has a limit, and one event must stay one line.
pub const AUDIT_LINE_BYTES_MAX: usize = 16 * 1024;

/// What happened, as `event.action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// A machine was added to an envelope.
    KeyGrant,
    /// A machine was taken out (a new epoch starts).
    KeyRevoke,
    /// This machine opened an envelope.
    KeyUnwrap,
    RekeyStart,
    RekeyFinish,
    /// This machine was refused access to a protected directory.
    AccessDenied,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::KeyGrant => "key-grant",
            AuditAction::KeyRevoke => "key-revoke",
            AuditAction::KeyUnwrap => "key-unwrap",
            AuditAction::RekeyStart => "rekey-start",
            AuditAction::RekeyFinish => "rekey-finish",
            AuditAction::AccessDenied => "access-denied",
        }
    }

    /// ECS `event.type` values for the action.
    fn event_types(self) -> &'static [&'static str] {
        match self {
            AuditAction::KeyGrant => &["change", "allowed"],
            AuditAction::KeyRevoke => &["change", "deletion"],
            AuditAction::KeyUnwrap => &["access"],
            AuditAction::RekeyStart => &["change", "start"],
            AuditAction::RekeyFinish => &["change", "end"],
            AuditAction::AccessDenied => &["access", "denied"],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    Success,
    Failure,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
        }
    }
}

/// One audit event. `host_name` is the machine the event is about (the
/// one granted, revoked, unwrapping or denied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub host_name: String,
    /// The protected directory, when there is one.
    pub file_path: Option<String>,
    /// The uid of the process that asked, when known.
    pub user_id: Option<String>,
    pub policy_id: Option<u64>,
    pub key_epoch: Option<u32>,
    /// The LDAP group behind the decision.
    pub group: Option<String>,
    /// A sentence for people reading the SIEM.
    pub message: String,
}

impl AuditEvent {
    pub fn new(action: AuditAction, outcome: AuditOutcome, host_name: &str, message: &str) -> AuditEvent {
        AuditEvent {
            action,
            outcome,
            host_name: host_name.to_string(),
            file_path: None,
            user_id: None,
            policy_id: None,
            key_epoch: None,
            group: None,
            message: message.to_string(),
        }
    }

    /// The ECS document of the event at time `at`.
    pub fn to_ecs(&self, at: SystemTime) -> Value {
        let mut document = Map::new();
        document.insert(
            "@timestamp".into(),
            json!(humantime::format_rfc3339_millis(at).to_string()),
        );
        document.insert("ecs".into(), json!({ "version": ECS_VERSION }));
        document.insert(
            "event".into(),
            json!({
                "kind": "event",
                "category": ["iam", "configuration"],
                "type": self.action.event_types(),
                "action": self.action.as_str(),
                "outcome": self.outcome.as_str(),
                "provider": "sohofs-keyring",
            }),
        );
        document.insert("host".into(), json!({ "name": self.host_name }));
        if let Some(path) = &self.file_path {
            document.insert("file".into(), json!({ "path": path }));
        }
        if let Some(user_id) = &self.user_id {
            document.insert("user".into(), json!({ "id": user_id }));
        }
        if let Some(group) = &self.group {
            document.insert("group".into(), json!({ "name": group }));
        }
        let mut sohofs = Map::new();
        if let Some(policy_id) = self.policy_id {
            sohofs.insert("policy".into(), json!({ "id": policy_id }));
        }
        if let Some(epoch) = self.key_epoch {
            sohofs.insert("key".into(), json!({ "epoch": epoch }));
        }
        if !sohofs.is_empty() {
            document.insert("sohofs".into(), Value::Object(sohofs));
        }
        document.insert("message".into(), json!(self.message));
        Value::Object(document)
    }

    /// The line written for the event, newline included, at most
    /// [`AUDIT_LINE_BYTES_MAX`] bytes.
    pub fn to_line(&self, at: SystemTime) -> String {
        let mut line = self.to_ecs(at).to_string();
        if line.len() >= AUDIT_LINE_BYTES_MAX {
            let mut shortened = self.clone();
            shortened.message = "(message cut: event too long)".into();
            for text in [&mut shortened.file_path, &mut shortened.group].into_iter().flatten() {
                truncate_at_char(text, 1024);
            }
            truncate_at_char(&mut shortened.host_name, 255);
            line = shortened.to_ecs(at).to_string();
        }
        line.push('\n');
        line
    }
}

/// Cuts `text` to at most `bytes_max` bytes on a character boundary.
fn truncate_at_char(text: &mut String, bytes_max: usize) {
    let mut end = bytes_max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

#[derive(Debug, thiserror::Error)]
// The I/O error is in the message, not a `source`: a chain prints it once.
#[error("audit log {path}: {cause}")]
pub struct AuditError {
    pub path: PathBuf,
    pub cause: io::Error,
}

/// Appends audit events to one file (created 0600 if missing).
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|cause| AuditError {
                path: path.to_path_buf(),
                cause,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the event now, as one line.
    pub fn record(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.record_at(event, SystemTime::now())
    }

    pub fn record_at(&self, event: &AuditEvent, at: SystemTime) -> Result<(), AuditError> {
        let line = event.to_line(at);
        // A poisoned lock only means another writer panicked mid-call; the
        // file itself is still fine to append to.
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(line.as_bytes()).map_err(|cause| AuditError {
            path: self.path.clone(),
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn read_lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn events_read_back_as_ecs_documents_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_796_400_000_123);
        let mut denied = AuditEvent::new(
            AuditAction::AccessDenied,
            AuditOutcome::Failure,
            "ws-outsider",
            "not a recipient",
        );
        denied.file_path = Some("/finance".into());
        denied.user_id = Some("1000".into());
        denied.policy_id = Some(7);
        denied.key_epoch = Some(2);
        log.record_at(&denied, at).unwrap();
        let mut grant = AuditEvent::new(AuditAction::KeyGrant, AuditOutcome::Success, "ws-alpha", "granted");
        grant.group = Some("cn=finance-machines,ou=groups,dc=example,dc=org".into());
        log.record_at(&grant, at).unwrap();
        drop(log);

        // Reopening appends.
        let log = AuditLog::open(&path).unwrap();
        log.record(&AuditEvent::new(
            AuditAction::RekeyFinish,
            AuditOutcome::Success,
            "ws-alpha",
            "done",
        ))
        .unwrap();

        let lines = read_lines(&path);
        assert_eq!(lines.len(), 3);
        let first = &lines[0];
        assert_eq!(first["@timestamp"], "2026-12-04T16:00:00.123Z");
        assert_eq!(first["ecs"]["version"], ECS_VERSION);
        assert_eq!(first["event"]["kind"], "event");
        assert_eq!(first["event"]["action"], "access-denied");
        assert_eq!(first["event"]["outcome"], "failure");
        assert_eq!(first["event"]["type"], json!(["access", "denied"]));
        assert_eq!(first["host"]["name"], "ws-outsider");
        assert_eq!(first["file"]["path"], "/finance");
        assert_eq!(first["user"]["id"], "1000");
        assert_eq!(first["sohofs"]["policy"]["id"], 7);
        assert_eq!(first["sohofs"]["key"]["epoch"], 2);
        assert_eq!(first["message"], "not a recipient");
        assert_eq!(lines[1]["event"]["action"], "key-grant");
        assert_eq!(
            lines[1]["group"]["name"],
            "cn=finance-machines,ou=groups,dc=example,dc=org"
        );
        assert!(lines[1].get("file").is_none(), "absent fields are left out");
        assert_eq!(lines[2]["event"]["action"], "rekey-finish");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(&path).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for index in 0..50 {
                        let mut event = AuditEvent::new(
                            AuditAction::KeyUnwrap,
                            AuditOutcome::Success,
                            &format!("ws-{writer}"),
                            &"x".repeat(500),
                        );
                        event.policy_id = Some(index);
                        log.record(&event).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(read_lines(&path).len(), 200);
    }

    #[test]
    fn an_oversized_event_stays_one_bounded_line() {
        let mut event = AuditEvent::new(
            AuditAction::AccessDenied,
            AuditOutcome::Failure,
            "ws",
            &"m".repeat(AUDIT_LINE_BYTES_MAX),
        );
        event.file_path = Some("é".repeat(AUDIT_LINE_BYTES_MAX));
        let line = event.to_line(UNIX_EPOCH);
        assert!(line.len() <= AUDIT_LINE_BYTES_MAX, "{}", line.len());
        assert_eq!(line.matches('\n').count(), 1);
        let document: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(document["event"]["action"], "access-denied");
    }
}
