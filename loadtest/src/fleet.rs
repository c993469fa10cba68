//! The dispatcher processes of a run: the real `dispatcher` binary started
//! as children (`dispatcher run --config FILE`), so that a scenario can
//! kill -9 them and their memory and CPU can be read from `/proc`.
//!
//! This module owns finding the binary, writing each child's config,
//! starting, killing and restarting children, and stopping them at the end.
//! Each child's log goes to a file in the run's work directory. On request
//! it keeps a Prometheus target list of the children's metrics addresses
//! current, so a real Prometheus can scrape a run.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_yaml_ng::{Mapping, Value};

use crate::procstat;

/// How long a child may take to become ready (`/readyz`).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Find the `dispatcher` binary: `explicit` if given, else
/// `$LOADTEST_DISPATCHER`, else the `dispatcher` next to this executable
/// (cargo puts both binaries of a workspace in the same directory; test
/// executables sit one level down, in `deps/`).
///
/// With `build`, when that directory is a cargo profile directory, the
/// binary is first (re)built with `cargo build -p dispatcher` for the same
/// profile, so that a run never measures a stale dispatcher. Cargo does
/// nothing when the binary is fresh.
pub fn locate_dispatcher(explicit: Option<&Path>, build: bool) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--dispatcher {}: no such file", p.display());
        }
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("LOADTEST_DISPATCHER") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("LOADTEST_DISPATCHER={}: no such file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_owned();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidate = dir.join("dispatcher");
    if build {
        if let Some(target_dir) = cargo_target_dir(&dir) {
            build_dispatcher(&dir, target_dir)?;
        }
    }
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "no dispatcher binary at {}: build it (`cargo build --release -p dispatcher`) or pass --dispatcher PATH",
            candidate.display()
        )
    }
}

/// The target directory of a cargo profile directory (`target/release`),
/// recognised by the `CACHEDIR.TAG` cargo writes at the target's root.
fn cargo_target_dir(profile_dir: &Path) -> Option<&Path> {
    let target = profile_dir.parent()?;
    target.join("CACHEDIR.TAG").is_file().then_some(target)
}

fn build_dispatcher(profile_dir: &Path, target_dir: &Path) -> anyhow::Result<()> {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile directory name")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "dispatcher",
        "--bin",
        "dispatcher",
    ])
    .arg("--target-dir")
    .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("loadtest: building the dispatcher ({profile} profile) so that it is not stale");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        bail!(
            "cargo build -p dispatcher failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Deep-merge `over` into `base`: mappings merge key by key, anything else
/// in `over` replaces what `base` had.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// One child.
struct Member {
    child: Child,
    pid: u32,
    admin: SocketAddr,
    started: Instant,
}

/// A process that ended, with its CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub cpu: Duration,
}

/// A reading of every live child.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Summed resident memory of the live children.
    pub rss_bytes: u64,
    /// CPU time of every child so far, dead ones included.
    pub cpu: Duration,
}

/// The running dispatcher processes.
pub struct Fleet {
    binary: PathBuf,
    dir: PathBuf,
    config: Value,
    log_filter: String,
    members: Vec<Member>,
    /// CPU time of children that have ended.
    ended_cpu: Duration,
    kills: u64,
    starts: u64,
    /// Where to keep the Prometheus target list, if anywhere.
    targets: Option<PathBuf>,
}

impl Fleet {
    /// Start `processes` children of `binary` with `config` (each gets its
    /// own admin port), logs and configs in `dir`. With `targets`, the
    /// children's admin addresses are written there as a Prometheus
    /// `file_sd_configs` list (see [`Fleet::write_targets`]).
    pub fn start(
        binary: &Path,
        dir: &Path,
        config: Value,
        processes: usize,
        log_filter: &str,
        targets: Option<&Path>,
    ) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            config,
            log_filter: log_filter.to_owned(),
            members: Vec::with_capacity(processes),
            ended_cpu: Duration::ZERO,
            kills: 0,
            starts: 0,
            targets: targets.map(Path::to_owned),
        };
        for i in 0..processes {
            let m = fleet.spawn(i)?;
            fleet.members.push(m);
        }
        fleet.write_targets()?;
        Ok(fleet)
    }

    /// Write the children's metrics addresses (their admin ports) to the
    /// target list, one target per child labelled `pod="dispatcher-<i>"`,
    /// replacing the file in one rename so that Prometheus never reads half
    /// of it. A restarted child has a new port: the list follows it.
    fn write_targets(&self) -> anyhow::Result<()> {
        let Some(path) = &self.targets else {
            return Ok(());
        };
        let list: Vec<serde_json::Value> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                serde_json::json!({
                    "targets": [m.admin.to_string()],
                    "labels": {"pod": format!("dispatcher-{i}")},
                })
            })
            .collect();
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(&list)?)
            .with_context(|| format!("writing {}", Path::new(&partial).display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<Member> {
        // A free port now; the child binds it a moment later. Another
        // process taking it in between makes the child exit, which
        // `check` reports with the log.
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free admin port")?;
        let mut config = self.config.clone();
        merge(
            &mut config,
            &serde_yaml_ng::from_str::<Value>(&format!("admin: {{listen: \"{admin}\"}}"))?,
        );
        let config_path = self.dir.join(format!("dispatcher-{index}.yaml"));
        std::fs::write(&config_path, serde_yaml_ng::to_string(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = self.log_path(index);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.starts += 1;
        Ok(Member {
            pid: child.id(),
            child,
            admin,
            started: Instant::now(),
        })
    }

    /// Each live child's admin address (metrics, health), by index.
    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.admin).collect()
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("dispatcher-{index}.log"))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn kills(&self) -> u64 {
        self.kills
    }

    /// Processes started, restarts included.
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// How long child `index` has been running.
    pub fn uptime(&self, index: usize) -> Duration {
        self.members[index].started.elapsed()
    }

    /// Wait until every child answers `/readyz` with 200.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.members.len() {
            loop {
                self.check()?;
                if ready(self.members[i].admin).await {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "dispatcher {i} was not ready after {READY_TIMEOUT:?}; log:\n{}",
                        self.log_tail(i)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// SIGKILL child `index` and start it again at once.
    pub fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        member.child.kill().context("SIGKILL")?; // std's kill is SIGKILL on Unix
        self.ended_cpu += final_cpu(member.pid);
        member.child.wait().context("reaping a killed dispatcher")?;
        self.kills += 1;
        let m = self.spawn(index)?;
        self.members[index] = m;
        self.write_targets()
    }

    /// Fail when a child exited on its own, quoting its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            if let Some(status) = self.members[i].child.try_wait()? {
                bail!(
                    "dispatcher {i} exited on its own ({status}); log {}:\n{}",
                    self.log_path(i).display(),
                    self.log_tail(i)
                );
            }
        }
        Ok(())
    }

    /// Memory and CPU of the children now.
    pub fn usage(&self) -> Usage {
        let mut u = Usage {
            rss_bytes: 0,
            cpu: self.ended_cpu,
        };
        for m in &self.members {
            u.rss_bytes += procstat::rss_bytes(Some(m.pid)).unwrap_or(0);
            u.cpu += procstat::cpu(Some(m.pid)).unwrap_or_default();
        }
        u
    }

    /// SIGTERM every child and wait up to `grace` for them to exit; SIGKILL
    /// what is left. Returns each exit status and the final usage.
    pub fn stop(mut self, grace: Duration) -> (Vec<ExitStatus>, Usage) {
        for m in &self.members {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(m.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        let mut statuses = Vec::with_capacity(self.members.len());
        let mut cpu = self.ended_cpu;
        for m in &mut self.members {
            // Read while it lives: once reaped, /proc forgets it.
            let mut last = procstat::cpu(Some(m.pid)).unwrap_or_default();
            let status = loop {
                match m.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        last = procstat::cpu(Some(m.pid)).unwrap_or(last);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = m.child.kill();
                        last = last.max(final_cpu(m.pid));
                        break m.child.wait().ok();
                    }
                }
            };
            cpu += last;
            statuses.extend(status);
        }
        (statuses, Usage { rss_bytes: 0, cpu })
    }

    /// The last lines of child `index`'s log.
    pub fn log_tail(&self, index: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Never leave a dispatcher behind, whatever ended the run.
        for m in &mut self.members {
            if let Ok(None) = m.child.try_wait() {
                let _ = m.child.kill();
                let _ = m.child.wait();
            }
        }
    }
}

/// CPU time of a process just killed: wait (briefly) until it is a zombie,
/// whose `/proc` entry still holds its final counts until it is reaped.
fn final_cpu(pid: u32) -> Duration {
    let deadline = Instant::now() + Duration::from_millis(200);
    while procstat::state(pid).is_some_and(|s| s != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    procstat::cpu(Some(pid)).unwrap_or_default()
}

/// `GET /readyz` answered 200.
async fn ready(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: dispatcher\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The generated part of a dispatcher config for a run; scenarios merge
/// their own keys over it.
pub struct BaseConfig<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub dead_letter_topic: &'a str,
    pub retry_topic: &'a str,
    /// The broker is the embedded Kafka (librdkafka's mock cluster).
    pub embedded: bool,
    /// (endpoint entry without `config`, the scenario's endpoint `config`).
    pub endpoints: Vec<(Mapping, Mapping)>,
}

impl BaseConfig<'_> {
    pub fn to_value(&self, scenario_config: &Mapping) -> anyhow::Result<Value> {
        let base = format!(
            r#"
kafka:
  brokers: "{}"
  group_id: "{}"
  topics: ["{}"]
  dead_letter_topic: "{}"
  retry_topic: "{}"
  options:
    # A killed member's partitions move on within this, on real brokers too.
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
http:
  allowed_networks: ["127.0.0.0/8"]
pipeline:
  # A run's stop should not wait the production default of 25 s.
  shutdown_grace: 5s
"#,
            self.bootstrap, self.group, self.topic, self.dead_letter_topic, self.retry_topic
        );
        let mut config: Value = serde_yaml_ng::from_str(&base).context("the generated config")?;
        if self.embedded {
            // The mock cluster does not answer a waiting fetch when records
            // arrive, only at fetch.wait.max.ms (500 ms by default): ages
            // would measure that, not the dispatcher. Real brokers answer
            // at once, so this is only set here.
            merge(
                &mut config,
                &serde_yaml_ng::from_str("kafka: {options: {fetch.wait.max.ms: 10}}")?,
            );
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for (entry, extra) in &self.endpoints {
            let mut e = Value::Mapping(entry.clone());
            merge(&mut e, &Value::Mapping(extra.clone()));
            endpoints.push(e);
        }
        if let Value::Mapping(m) = &mut config {
            m.insert("endpoints".into(), Value::Sequence(endpoints));
        }
        merge(&mut config, &Value::Mapping(scenario_config.clone()));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_deep_and_the_overlay_wins() {
        let mut base: Value = serde_yaml_ng::from_str("a: {b: 1, c: [1, 2]}\nd: x\n").unwrap();
        let over: Value = serde_yaml_ng::from_str("a: {c: [3], e: 4}\nd: {f: 5}\n").unwrap();
        merge(&mut base, &over);
        let want: Value = serde_yaml_ng::from_str("a: {b: 1, c: [3], e: 4}\nd: {f: 5}\n").unwrap();
        assert_eq!(base, want);
    }

    #[test]
    fn generated_config_passes_the_dispatchers_own_validation() {
        let mut entry = Mapping::new();
        entry.insert("id".into(), "ep-0".into());
        entry.insert("url".into(), "http://127.0.0.1:9/webhooks/ep-0".into());
        entry.insert("events".into(), Value::Sequence(vec!["*".into()]));
        let mut extra = Mapping::new();
        extra.insert("max_in_flight".into(), 7.into());
        let base = BaseConfig {
            bootstrap: "127.0.0.1:9092",
            group: "g",
            topic: "loadtest.x",
            dead_letter_topic: "loadtest.x.dlq",
            retry_topic: "loadtest.x.retry",
            embedded: true,
            endpoints: vec![(entry, extra)],
        };
        let scenario: Mapping =
            serde_yaml_ng::from_str("pipeline: {max_events_in_flight: 999}").unwrap();
        let text = serde_yaml_ng::to_string(&base.to_value(&scenario).unwrap()).unwrap();
        let config = dispatcher::config::Config::from_yaml(&text, &|_| None)
            .unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        assert_eq!(config.pipeline.max_events_in_flight, 999);
        assert_eq!(config.pipeline.shutdown_grace, Duration::from_secs(5));
        assert_eq!(config.endpoints[0].max_in_flight, 7);
    }
}
