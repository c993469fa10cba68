//! A transport defined outside this crate registers and receives
//! deliveries, with nothing else changed: the example of
//! `docs/transports.md`, compiled and run. The part between the `example`
//! markers is the doc's code block, word for word (checked below).

mod support;

use std::collections::BTreeSet;

use futures::future::join_all;
use serde_json::json;
use support::{seed, Ctx};
use transports::{Outcome, Registry};

// example:start
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use transports::registry::parse_settings;
use transports::{
    BoxFuture, BuildContext, Delivery, Outcome as SendOutcome, SettingsError, Transport,
    TransportFactory,
};

/// `transport: file` settings. `deny_unknown_fields` makes a misspelt key
/// an error that names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    /// The file each delivery's envelope is appended to, one per line.
    path: PathBuf,
}

/// Appends every delivery's envelope to a file, as JSON lines.
struct FileTransport {
    file: tokio::sync::Mutex<tokio::fs::File>,
}

impl Transport for FileTransport {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, SendOutcome> {
        Box::pin(async move {
            let mut line = Vec::with_capacity(delivery.body.len() + 1);
            line.extend_from_slice(&delivery.body);
            line.push(b'\n');
            let mut file = self.file.lock().await;
            // tokio writes files in the background: only a flush says the
            // line is written, and only then is the delivery delivered.
            let written = match file.write_all(&line).await {
                Ok(()) => file.flush().await,
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => SendOutcome::Delivered { status: None },
                // A full disk may clear up: let the dispatcher retry.
                Err(e) => SendOutcome::Retry {
                    status: None,
                    reason: format!("writing the file failed: {e}"),
                    retry_after: None,
                },
            }
        })
    }
}

/// Registers as `transport: file`.
pub struct FileFactory;

impl TransportFactory for FileFactory {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        self.validate(settings, ctx)?;
        let s: FileSettings = parse_settings(settings)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.path)
            .map_err(|e| SettingsError::new("path", format!("cannot be opened: {e}")))?;
        Ok(Arc::new(FileTransport {
            file: tokio::sync::Mutex::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// `dispatcher validate` must not touch the world: check, create nothing.
    fn validate(
        &self,
        settings: &serde_json::Value,
        _ctx: &BuildContext<'_>,
    ) -> Result<(), SettingsError> {
        let s: FileSettings = parse_settings(settings)?;
        match s.path.parent() {
            Some(dir) if dir.is_dir() => Ok(()),
            _ => Err(SettingsError::new("path", "its directory does not exist")),
        }
    }
}
// example:end

fn scratch_file(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::env::temp_dir().join(format!(
        "transports-{name}-{}-{nanos}.jsonl",
        std::process::id()
    ))
}

#[tokio::test]
async fn a_custom_transport_registers_and_receives_deliveries() {
    // The one registration line a deployment adds.
    let mut registry = Registry::builtin();
    assert!(registry.register(Box::new(FileFactory)).is_none());
    assert_eq!(registry.names(), vec!["file", "http", "kafka", "slack"]);

    let ctx = Ctx::new("", false);
    let path = scratch_file("custom");
    let settings = json!({ "path": path });
    let factory = registry.get("file").expect("registered");
    factory.validate(&settings, &ctx.get()).unwrap();
    assert!(!path.exists(), "validate creates nothing");

    let transport = factory.build(&settings, &ctx.get()).unwrap();
    assert_eq!(transport.kind(), "file");
    let deliveries: Vec<Delivery> = seed::EVENT_TYPES
        .iter()
        .enumerate()
        .map(|(i, ty)| seed::delivery(seed::event(ty, i as u64), "archive"))
        .collect();
    // Concurrently, as a lane with several sends in flight would.
    let outcomes = join_all(deliveries.iter().map(|d| transport.send(d))).await;
    assert!(outcomes
        .iter()
        .all(|o| *o == Outcome::Delivered { status: None }));

    let written = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: BTreeSet<&str> = written.lines().collect();
    let bodies: BTreeSet<String> = deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
        .collect();
    assert_eq!(lines.len(), deliveries.len());
    assert_eq!(lines, bodies.iter().map(String::as_str).collect());
}

#[test]
fn custom_settings_are_checked_strictly() {
    let mut registry = Registry::builtin();
    registry.register(Box::new(FileFactory));
    let factory = registry.get("file").unwrap();
    let ctx = Ctx::new("", false);
    let err = factory
        .validate(&json!({"path": "/tmp/x.jsonl", "mode": "w"}), &ctx.get())
        .unwrap_err();
    assert_eq!(err.field, "mode");
    let err = factory.validate(&json!({}), &ctx.get()).unwrap_err();
    assert_eq!(err.field, "path");
    let err = factory
        .validate(&json!({"path": "/no/such/dir/x.jsonl"}), &ctx.get())
        .unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        ("path", "its directory does not exist")
    );
}

#[test]
fn the_documented_example_is_this_code() {
    let source = include_str!("custom_transport.rs");
    let start =
        source.find("// example:start\n").expect("start marker") + "// example:start\n".len();
    let end = source.find("// example:end").expect("end marker");
    let example = &source[start..end];
    let doc = include_str!("../../docs/transports.md");
    assert!(
        doc.contains(example),
        "docs/transports.md must contain the example of tests/custom_transport.rs verbatim"
    );
}
