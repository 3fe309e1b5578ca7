//! A small authoritative DNS server on loopback for the tests: A and SRV
//! records the test sets and changes while dbsplice runs, answers of
//! failure on demand, and a count of the questions asked per name. It
//! writes its answers itself (not with dbsplice's code) so that the two
//! sides do not share a mistake.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// What the server answers for one name.
#[derive(Debug, Clone)]
pub enum Record {
    /// These IPv4 addresses (no AAAA).
    A(Vec<Ipv4Addr>),
    /// SRV records: (priority, weight, port, target).
    Srv(Vec<(u16, u16, u16, String)>),
    /// SERVFAIL.
    Fail,
}

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<String, Record>,
    asked: HashMap<String, u64>,
}

/// The running server; stops when dropped.
pub struct Dns {
    /// Where it answers.
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    /// Starts the server on 127.0.0.1, port 0.
    pub async fn start() -> Dns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let task = {
            let zone = Arc::clone(&zone);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    if let Some(reply) = answer(&zone, &buf[..n]) {
                        let _ = socket.send_to(&reply, from).await;
                    }
                }
            })
        };
        Dns { addr, zone, task }
    }

    /// Sets what `name` answers.
    pub fn set(&self, name: &str, record: Record) {
        let mut zone = self.zone.lock().unwrap();
        zone.records.insert(name.to_ascii_lowercase(), record);
    }

    /// How many questions (of any type) `name` was asked.
    pub fn asked(&self, name: &str) -> u64 {
        let zone = self.zone.lock().unwrap();
        zone.asked
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

/// The reply to `query`, or none for bytes that are not a query.
fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let record = {
        let mut zone = zone.lock().unwrap();
        *zone.asked.entry(name.clone()).or_default() += 1;
        zone.records.get(&name).cloned()
    };
    let mut out = query.get(..question_end)?.to_vec();
    out[2] = 0x84 | (query[2] & 0x01); // response, authoritative, RD copied
    out[3] = 0;
    out[6..12].fill(0);
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    match (record, qtype) {
        (None, _) => out[3] = 3, // NXDOMAIN
        (Some(Record::Fail), _) => out[3] = 2,
        (Some(Record::A(ips)), 1) => {
            answers.extend(ips.iter().map(|ip| (1, ip.octets().to_vec())));
        }
        (Some(Record::Srv(targets)), 33) => {
            for (priority, weight, port, target) in targets {
                let mut data = Vec::new();
                for v in [priority, weight, port] {
                    data.extend_from_slice(&v.to_be_bytes());
                }
                for label in target.trim_end_matches('.').split('.') {
                    data.push(u8::try_from(label.len()).unwrap());
                    data.extend_from_slice(label.as_bytes());
                }
                data.push(0);
                answers.push((33, data));
            }
        }
        _ => {} // the name exists, without records of that type
    }
    out[6..8].copy_from_slice(&u16::try_from(answers.len()).unwrap().to_be_bytes());
    for (rtype, data) in answers {
        out.extend_from_slice(&[0xc0, 12]); // the question's name
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 5]); // IN, TTL 5 s
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}
