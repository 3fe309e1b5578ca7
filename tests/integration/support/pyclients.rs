//! Python clients through dbsplice (`pyclients.py`): PyMySQL opening a new
//! connection per transaction and SQLAlchemy's pool, as applications use
//! them, driven over the program's stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// What the program answers on its stdout within.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `pyclients.py`; killed (by PID) on drop.
pub struct PyClients {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

/// A drill's counts, as the program reports them.
#[derive(Debug)]
pub struct Summary {
    pub json: Value,
}

impl Summary {
    /// One of the counts (`refused`, `lost`, `pooled_failed`...).
    pub fn count(&self, key: &str) -> u64 {
        self.json["counts"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no count {key}: {}", self.json))
    }

    /// How long new connections took to be served, in seconds, sorted.
    pub fn connect_seconds(&self) -> Vec<f64> {
        self.json["connect_seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    /// The acknowledged inserts, as (worker, seq).
    pub fn acked(&self) -> Vec<(u64, u64)> {
        self.json["acked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
            .collect()
    }

    /// The wait distribution and the counts, one line for the test's output.
    pub fn describe(&self) -> String {
        let s = self.connect_seconds();
        let at = |q: f64| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let i = ((s.len().saturating_sub(1)) as f64 * q).round() as usize;
            s.get(i).copied().unwrap_or(0.0) * 1000.0
        };
        format!(
            "{} new connections, connect time p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; counts {}; errors {}",
            s.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            self.json["counts"],
            self.json["errors"]
        )
    }
}

impl PyClients {
    /// Starts `fresh` new-connection threads and `pooled` pooled ones
    /// against `addr` (as the test user), once each has been served.
    pub async fn start(addr: SocketAddr, fresh: usize, pooled: usize) -> PyClients {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/integration/support/pyclients.py"
        );
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(super::mariadb::USER)
            .arg(super::mariadb::PASSWORD)
            .arg(fresh.to_string())
            .arg(pooled.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs pyclients.py (scripts/deps installs PyMySQL and SQLAlchemy)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut clients = PyClients {
            child,
            stdin,
            lines,
        };
        assert_eq!(clients.line().await, "ready");
        clients
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(ANSWER_TIMEOUT, self.lines.recv())
            .await
            .expect("pyclients.py answers")
            .expect("pyclients.py still runs")
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Stops the loops; what they saw.
    pub async fn stop(&mut self) -> Summary {
        self.send("stop");
        Summary {
            json: serde_json::from_str(&self.line().await).unwrap(),
        }
    }

    /// Asks for `n` new connections at once; returns at once. The answer
    /// comes from [`PyClients::burst_outcome`].
    pub fn burst(&mut self, n: usize) {
        self.send(&format!("burst {n}"));
    }

    /// How a burst went: seconds each served and refused connection took,
    /// and the other failures.
    pub async fn burst_outcome(&mut self) -> (Vec<f64>, Vec<f64>, Vec<String>) {
        let json: Value = serde_json::from_str(&self.line().await).unwrap();
        let list = |key: &str| -> Vec<f64> {
            json[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let failed = json["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        (list("served"), list("refused"), failed)
    }
}

impl Drop for PyClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
