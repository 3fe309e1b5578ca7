//! A test host behind a network link the test controls: a network namespace
//! joined to the test's own by a veth pair. iptables inside the namespace
//! black-holes, refuses or loses packets; an NFQUEUE verdict helper delays
//! them (this kernel has no `tc netem`). An `unreachable` route covers the
//! namespace's /24, so once the link is gone a connect fails at once instead
//! of reaching the sandbox's default route, which accepts anything.
//!
//! Needs root, `ip` (iproute2) and `iptables`; `scripts/deps` installs them.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A network namespace with one address, reached over a veth pair.
pub struct Netns {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// The host side of the veth pair.
    link: String,
    /// The namespace's address, where its servers listen.
    pub ip: Ipv4Addr,
    /// The `unreachable` route covering the link's network.
    block: String,
}

/// Namespace names carry the test process's id, so leftovers of a process
/// that died are recognised and removed.
const PREFIX: &str = "dbs-test-";

impl Netns {
    /// Creates a namespace `10.X.N.2/30` with the test's end at `.1`, where X
    /// comes from the process id and N counts namespaces in this process.
    pub fn create() -> Netns {
        remove_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let n8 = u8::try_from(n).expect("one process makes at most 256 test namespaces");
        let pid = std::process::id();
        let x = 64 + u8::try_from(pid % 64).unwrap();
        let ns = Netns {
            name: format!("{PREFIX}{pid}-{n}"),
            // Interface names have at most 15 characters.
            link: format!("dbs{}v{n}", pid % 100_000),
            ip: Ipv4Addr::new(10, x, n8, 2),
            block: format!("10.{x}.{n}.0/24"),
        };
        let peer = format!("{}p", ns.link);
        let host_ip = format!("10.{x}.{n}.1/30");
        let ns_ip = format!("{}/30", ns.ip);
        run("ip", &["netns", "add", &ns.name]);
        run(
            "ip",
            &[
                "link", "add", &ns.link, "type", "veth", "peer", "name", &peer, "netns", &ns.name,
            ],
        );
        run("ip", &["addr", "add", &host_ip, "dev", &ns.link]);
        run("ip", &["link", "set", &ns.link, "up"]);
        ns.exec(&["ip", "addr", "add", &ns_ip, "dev", &peer]);
        ns.exec(&["ip", "link", "set", &peer, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        run("ip", &["route", "add", "unreachable", &ns.block]);
        ns
    }

    /// Runs a command inside the namespace and asserts it succeeds.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// An address inside the namespace.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// Drops every TCP packet arriving in the namespace: connects and reads hang.
    pub fn black_hole(&self) {
        self.tcp_input_rule(&["-j", "DROP"]);
    }

    /// Answers every TCP packet with a reset: connects are refused at once and
    /// open connections break on their next packet.
    pub fn refuse(&self) {
        self.tcp_input_rule(&["-j", "REJECT", "--reject-with", "tcp-reset"]);
    }

    /// Drops each arriving TCP packet with probability `p`, chosen by the
    /// kernel at random.
    pub fn lossy(&self, p: f64) {
        self.tcp_input_rule(&[
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p.to_string(),
            "-j",
            "DROP",
        ]);
    }

    /// Holds every TCP packet arriving in the namespace for `delay` before
    /// letting it through; the returned guard sets another delay, and lifts
    /// the delay when dropped.
    pub fn delay(&self, delay: Duration) -> Delay {
        let helper = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/integration/support/nfqueue_delay.py");
        let mut child = self
            .command("python3")
            .arg(helper)
            .arg(delay.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the NFQUEUE helper");
        // Packets queue only once the helper is bound, so none is lost.
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the NFQUEUE helper did not start");
        self.tcp_input_rule(&["-j", "NFQUEUE", "--queue-num", "0"]);
        let control = child.stdin.take().unwrap();
        Delay {
            ns: self.name.clone(),
            child,
            control,
        }
    }

    /// Removes every rule: the link is clean again.
    pub fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
    }

    /// Removes the link, as when a host or its network vanishes: the
    /// `unreachable` route answers for the address from now on.
    pub fn vanish(&self) {
        run("ip", &["link", "del", &self.link]);
    }

    /// Appends a rule for TCP packets arriving in the namespace.
    fn tcp_input_rule(&self, rule: &[&str]) {
        let mut all = vec!["-A", "INPUT", "-p", "tcp"];
        all.extend_from_slice(rule);
        self.iptables(&all);
    }

    fn iptables(&self, args: &[&str]) {
        let mut all = vec!["iptables", "-w"];
        all.extend_from_slice(args);
        self.exec(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &self.block])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Packets held by the NFQUEUE helper, released after the delay.
pub struct Delay {
    ns: String,
    child: Child,
    control: ChildStdin,
}

impl Delay {
    /// Holds packets that arrive from now on for `delay` instead.
    pub fn set(&mut self, delay: Duration) {
        let line = format!("{}\n", delay.as_millis());
        self.control.write_all(line.as_bytes()).unwrap();
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        // Rule first: with the helper gone, queued packets would be dropped.
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "iptables", "-w", "-F", "INPUT"])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes namespaces, links and routes left by test processes that died.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let x = 64 + pid % 64;
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("dbs{}v{n}", pid % 100_000)])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &format!("10.{x}.{n}.0/24")])
            .stderr(Stdio::null())
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (install iproute2 and iptables): {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
