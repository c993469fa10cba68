//! The `dispatcher` command line as a user meets it.

use std::process::Command;

fn dispatcher(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run dispatcher");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_names_the_file_and_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "kafka:\n  topics: []\nendpoints:\n  - id: a\n    url: https://a.example/\n    events: ['message*']\n    timeout: forever\n  - id: b\n    events: ['*']\n",
    )
    .unwrap();
    let (ok, _, err) = dispatcher(&["validate", "--config", path.to_str().unwrap()]);
    assert!(!ok, "a bad config must fail");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    for key in [
        "kafka.topics:",
        "endpoints[0].timeout:",
        "endpoints[1].url:",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn validate_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dispatcher.yaml");
    let (ok, out, err) = dispatcher(&["validate", "--config", example]);
    assert!(ok, "examples/dispatcher.yaml must validate:\n{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn run_fails_at_start_up_on_a_missing_file() {
    let (ok, _, err) = dispatcher(&["run", "--config", "/nonexistent/dispatcher.yaml"]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/dispatcher.yaml") && err.contains("cannot read"),
        "{err}"
    );
}

/// The README's first command, small: it runs the whole pipeline on its
/// embedded Kafka, delivers everything, and stops without an error line.
#[test]
fn the_demo_delivers_everything_and_stops_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["demo", "--events", "400", "--json", "--timeout", "3m"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("run dispatcher demo");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("demo --json printed no summary ({e}):\n{stdout}"));
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["delivered"], summary["deliveries"]);
    for ep in summary["endpoints"].as_array().expect("endpoints") {
        assert_eq!(ep["delivered"], ep["expected"], "{ep}");
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "error lines from a clean run:\n{}",
        errors.join("\n")
    );
}
