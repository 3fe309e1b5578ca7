//! The `dbsplice` binary run in the background by tests, with its logs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dbsplice");

/// The binary running in the background, with the logs it has written so far.
pub struct Running {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub logs: Arc<Mutex<String>>,
}

impl Running {
    /// Starts the binary (optionally under `prlimit`) and waits for its listener.
    pub fn start(config_path: &std::path::Path, nofile: Option<u32>) -> Running {
        Running::start_with(config_path, nofile, &[])
    }

    /// Starts the binary with extra environment variables.
    pub fn start_with(
        config_path: &std::path::Path,
        nofile: Option<u32>,
        env: &[(&str, String)],
    ) -> Running {
        let wrapper: Vec<String> = nofile
            .map(|n| vec!["prlimit".to_owned(), format!("--nofile={n}:{n}")])
            .unwrap_or_default();
        Running::start_wrapped(config_path, &wrapper, env)
    }

    /// Starts the binary as the unprivileged user `nobody` (setpriv).
    pub fn start_unprivileged(config_path: &std::path::Path) -> Running {
        let wrapper = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        Running::start_wrapped(config_path, &wrapper.map(str::to_owned), &[])
    }

    /// Starts the binary in a mount namespace of its own where
    /// `/etc/resolv.conf` is `resolv_conf` (needs root): its host names go
    /// to the name servers the test chose.
    pub fn start_with_resolv_conf(
        config_path: &std::path::Path,
        resolv_conf: &std::path::Path,
    ) -> Running {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            resolv_conf.display()
        );
        let wrapper = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ];
        Running::start_wrapped(config_path, &wrapper.map(str::to_owned), &[])
    }

    /// Starts the binary behind `wrapper` (a command that runs the rest).
    fn start_wrapped(
        config_path: &std::path::Path,
        wrapper: &[String],
        env: &[(&str, String)],
    ) -> Running {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut child = command
            .args([
                "run",
                "--log-format",
                "json",
                "--log-level",
                "info,dbsplice::control::reload=debug",
                "--config",
            ])
            .arg(config_path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let addr = line
                        .split("\"addr\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next());
                    let _ = addr_tx.send(addr.unwrap().to_owned());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .parse()
            .unwrap();
        Running { child, addr, logs }
    }

    /// Open descriptors of the process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// Open descriptors at rest: the fewest seen over 200 ms, so that a
    /// probe's socket in flight does not count.
    pub async fn resting_fd_count(&self) -> usize {
        let mut fewest = usize::MAX;
        for _ in 0..10 {
            fewest = fewest.min(self.fd_count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fewest
    }

    /// Asserts that open descriptors come back down to `baseline` within 30 s.
    pub async fn assert_fds_return_to(&self, baseline: usize) {
        let settled = super::wait_until(Duration::from_secs(30), || async {
            (self.fd_count() <= baseline).then_some(())
        })
        .await;
        assert!(
            settled.is_some(),
            "{} descriptors open after the load, {baseline} before",
            self.fd_count()
        );
    }

    /// CPU time the process has used, user and system, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name: state is the 3rd of stat(5),
        // utime the 14th and stime the 15th, in ticks of 1/100 s on Linux.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (ticks(11) + ticks(12)) as f64 / 100.0
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Anonymous memory (heap, stacks, buffers): what a leak grows, unlike
    /// the binary's own pages that join RSS as new code paths first run.
    pub fn anonymous_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        super::proc_status::status_kib(&self.child.id().to_string(), field)
    }

    /// Waits until the logs, from byte `from` on, have a line with every
    /// one of `words`; returns where the logs end now.
    pub async fn wait_log(&self, from: usize, words: &[&str]) -> usize {
        let found = super::wait_until(Duration::from_secs(20), || async {
            let logs = self.logs();
            let tail = logs.get(from..).unwrap_or_default();
            tail.lines()
                .any(|l| words.iter().all(|w| l.contains(w)))
                .then_some(())
        })
        .await;
        let logs = self.logs();
        assert!(
            found.is_some(),
            "no log line with {words:?}: {}",
            logs.get(from..).unwrap_or_default()
        );
        logs.len()
    }

    /// The admin server's address, once its `admin listening` line is logged.
    pub async fn admin_addr(&self) -> std::net::SocketAddr {
        let parse = |logs: String| {
            let line = logs
                .lines()
                .find(|l| l.contains("\"admin listening\""))?
                .to_owned();
            line.split("\"addr\":\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()
        };
        super::wait_until(Duration::from_secs(10), || async { parse(self.logs()) })
            .await
            .unwrap_or_else(|| panic!("no admin address logged: {}", self.logs()))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and asserts a clean exit (0), showing the logs if not.
    pub async fn stop(self) {
        let logs = self.logs.clone();
        assert_eq!(self.terminate().await, Some(0), "{}", logs.lock().unwrap());
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        exit.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
/// The value of a sample line `name{labels} value` in a Prometheus scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
