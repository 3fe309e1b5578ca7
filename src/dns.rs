//! The few DNS messages dbsplice exchanges itself, sans IO: a query for one
//! name and type, and the addresses or SRV targets in the answer. Every
//! answer is bytes from the network: each length is checked, compression
//! pointers may only point backwards and are followed a bounded number of
//! times, and nothing here panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A record type dbsplice asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Service targets (RFC 2782).
    Srv,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::A => 1,
            Kind::Aaaa => 28,
            Kind::Srv => 33,
        }
    }
}

/// One SRV record: where a service is, and how to share among targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative share among targets of one priority.
    pub weight: u16,
    /// The port.
    pub port: u16,
    /// The target host name, without the final dot.
    pub target: String,
}

/// What an answer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses, in the order given (A or AAAA).
    Addresses(Vec<IpAddr>),
    /// The SRV records, in the order given.
    Services(Vec<Srv>),
}

/// Longest name DNS allows, in its text form.
const MAX_NAME: usize = 255;
/// Compression pointers followed at most in one name.
const MAX_JUMPS: usize = 32;
/// Records read at most from one answer.
const MAX_RECORDS: usize = 256;

/// The query for `name`'s `kind` records, with recursion desired.
pub fn query(id: u16, name: &str, kind: Kind) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(name.len() + 18);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME - 2 {
        return Err(format!("\"{name}\" is not a host name DNS can carry"));
    }
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|&l| (1..=63).contains(&l))
            .ok_or_else(|| format!("\"{name}\" has a label DNS cannot carry"))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&kind.code().to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    Ok(out)
}

/// Why an answer gives nothing to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Not an answer to this query (another id, not a response): ignore it
    /// and wait on.
    #[error("not the answer to this query")]
    NotOurs,
    /// Cut short over UDP: ask again over TCP.
    #[error("the answer was truncated")]
    Truncated,
    /// The server answered with an error code.
    #[error("{0}")]
    Refused(String),
    /// The bytes do not make a DNS message.
    #[error("a malformed answer: {0}")]
    Malformed(&'static str),
}

/// The big-endian `u16` at `at` of `bytes`.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at + 2)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// The records of `kind` in `message`, the answer to query `id`. An answer
/// with none (the name exists but has no such record) is an empty list.
pub fn parse(message: &[u8], id: u16, kind: Kind) -> Result<Answer, Failure> {
    let Some(&[_, _, flags, code, ..]) = message.get(..12) else {
        return Err(Failure::NotOurs);
    };
    if be16(message, 0) != Some(id) || flags & 0x80 == 0 {
        return Err(Failure::NotOurs);
    }
    if flags & 0x02 != 0 {
        return Err(Failure::Truncated);
    }
    match code & 0x0f {
        0 => {}
        2 => return Err(Failure::Refused("the DNS server failed (SERVFAIL)".into())),
        3 => return Err(Failure::Refused("no such name (NXDOMAIN)".into())),
        5 => return Err(Failure::Refused("the DNS server refused the query".into())),
        code => return Err(Failure::Refused(format!("DNS error code {code}"))),
    }
    let questions = be16(message, 4).unwrap_or(0);
    let answers = usize::from(be16(message, 6).unwrap_or(0));
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut addresses = Vec::new();
    let mut services = Vec::new();
    for _ in 0..answers.min(MAX_RECORDS) {
        at = skip_name(message, at)?;
        let cut = Failure::Malformed("a record is cut short");
        let rtype = be16(message, at).ok_or(cut.clone())?;
        let len = usize::from(be16(message, at + 8).ok_or(cut)?);
        let data_at = at + 10;
        let data = message
            .get(data_at..data_at + len)
            .ok_or(Failure::Malformed("a record's data is cut short"))?;
        at = data_at + len;
        if rtype != kind.code() {
            continue; // a CNAME on the way, or something else.
        }
        record(message, kind, data, data_at, &mut addresses, &mut services)?;
    }
    Ok(match kind {
        Kind::A | Kind::Aaaa => Answer::Addresses(addresses),
        Kind::Srv => Answer::Services(services),
    })
}

/// Reads one record of the kind asked for, whose data `data` is at
/// `data_at` of `message`.
fn record(
    message: &[u8],
    kind: Kind,
    data: &[u8],
    data_at: usize,
    addresses: &mut Vec<IpAddr>,
    services: &mut Vec<Srv>,
) -> Result<(), Failure> {
    match kind {
        Kind::A => addresses.push(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(data).map_err(|_| WRONG_LENGTH)?,
        ))),
        Kind::Aaaa => addresses.push(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(data).map_err(|_| WRONG_LENGTH)?,
        ))),
        Kind::Srv => {
            let w = |i: usize| be16(data, i).ok_or(WRONG_LENGTH);
            let (priority, weight, port) = (w(0)?, w(2)?, w(4)?);
            if data.len() < 7 {
                return Err(WRONG_LENGTH);
            }
            let target = read_name(message, data_at + 6)?;
            services.push(Srv {
                priority,
                weight,
                port,
                target,
            });
        }
    }
    Ok(())
}

const WRONG_LENGTH: Failure = Failure::Malformed("a record has the wrong length");

/// Where the name at `at` ends (past its last label or its pointer).
fn skip_name(message: &[u8], mut at: usize) -> Result<usize, Failure> {
    loop {
        let len = *message
            .get(at)
            .ok_or(Failure::Malformed("a name is cut short"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                message
                    .get(at + 1)
                    .ok_or(Failure::Malformed("a name is cut short"))?;
                return Ok(at + 2);
            }
            l if l & 0xc0 != 0 => return Err(Failure::Malformed("a label of an unknown kind")),
            l => at += 1 + usize::from(l),
        }
    }
}

/// The name at `at` in text, following compression pointers backwards only.
fn read_name(message: &[u8], mut at: usize) -> Result<String, Failure> {
    let mut name = String::new();
    let mut jumps = 0;
    loop {
        let len = *message
            .get(at)
            .ok_or(Failure::Malformed("a name is cut short"))?;
        match len {
            0 => return Ok(name),
            l if l & 0xc0 == 0xc0 => {
                let pointer = be16(message, at).ok_or(Failure::Malformed("a name is cut short"))?;
                let to = usize::from(pointer & 0x3fff);
                jumps += 1;
                if to >= at || jumps > MAX_JUMPS {
                    return Err(Failure::Malformed("a name's pointer does not point back"));
                }
                at = to;
            }
            l if l & 0xc0 != 0 => return Err(Failure::Malformed("a label of an unknown kind")),
            l => {
                let label = message
                    .get(at + 1..at + 1 + usize::from(l))
                    .ok_or(Failure::Malformed("a label is cut short"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > MAX_NAME {
                    return Err(Failure::Malformed("a name is too long"));
                }
                at += 1 + usize::from(l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` (a query) with `records`: (type, rdata) each, owned
    /// by the question's name through a pointer.
    fn answer(q: &[u8], rcode: u8, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = q.to_vec();
        out[2] = 0x81;
        out[3] = 0x80 | rcode;
        out[6..8].copy_from_slice(&u16::try_from(records.len()).unwrap().to_be_bytes());
        for (rtype, data) in records {
            out.extend_from_slice(&[0xc0, 12]);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn addresses_and_services_are_read_and_other_records_skipped() {
        let q = query(7, "db.example.", Kind::A).unwrap();
        let cname = vec![2, b'd', b'b', 0xc0, 12];
        let a = answer(
            &q,
            0,
            &[(5, cname), (1, vec![10, 0, 0, 5]), (1, vec![10, 0, 0, 6])],
        );
        assert_eq!(
            parse(&a, 7, Kind::A).unwrap(),
            Answer::Addresses(vec![
                "10.0.0.5".parse().unwrap(),
                "10.0.0.6".parse().unwrap()
            ])
        );
        let q = query(9, "_mysql._tcp.db.example", Kind::Srv).unwrap();
        let mut srv = vec![0, 10, 0, 5, 0x0c, 0xea];
        srv.extend_from_slice(&[3, b'd', b'b', b'1', 0xc0, 12 + 7]);
        let a = answer(&q, 0, &[(33, srv)]);
        let Answer::Services(s) = parse(&a, 9, Kind::Srv).unwrap() else {
            panic!("services")
        };
        assert_eq!(
            s,
            vec![Srv {
                priority: 10,
                weight: 5,
                port: 3306,
                target: "db1._tcp.db.example".into()
            }]
        );
    }

    #[test]
    fn errors_and_strangers_are_told_apart() {
        let q = query(7, "db.example", Kind::A).unwrap();
        assert_eq!(parse(&q, 7, Kind::A), Err(Failure::NotOurs), "a query");
        let a = answer(&q, 0, &[]);
        assert_eq!(parse(&a, 8, Kind::A), Err(Failure::NotOurs), "another id");
        assert_eq!(parse(&a, 7, Kind::A), Ok(Answer::Addresses(Vec::new())));
        let failed = answer(&q, 2, &[]);
        assert!(
            matches!(parse(&failed, 7, Kind::A), Err(Failure::Refused(m)) if m.contains("SERVFAIL"))
        );
        let mut cut = answer(&q, 0, &[]);
        cut[2] |= 0x02;
        assert_eq!(parse(&cut, 7, Kind::A), Err(Failure::Truncated));
        assert!(query(1, "", Kind::A).is_err());
        assert!(query(1, &"x".repeat(64), Kind::A).is_err());
    }

    #[test]
    fn hostile_answers_are_refused_without_panic() {
        let q = query(7, "db.example", Kind::Srv).unwrap();
        // A target pointing at itself, then forwards.
        let at = u8::try_from(q.len() + 12 + 6).unwrap();
        let looped = answer(&q, 0, &[(33, vec![0, 0, 0, 0, 0, 1, 0xc0, at])]);
        assert!(matches!(
            parse(&looped, 7, Kind::Srv),
            Err(Failure::Malformed(_))
        ));
        let forward = answer(&q, 0, &[(33, vec![0, 0, 0, 0, 0, 1, 0xc0, 0xff])]);
        assert!(matches!(
            parse(&forward, 7, Kind::Srv),
            Err(Failure::Malformed(_))
        ));
        let short = answer(&q, 0, &[(1, vec![10, 0, 0])]);
        assert!(parse(&short, 7, Kind::A).is_err());
        let mut many = answer(&q, 0, &[]);
        many[6] = 0xff;
        assert!(matches!(
            parse(&many, 7, Kind::A),
            Err(Failure::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_an_answer_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes, u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]), Kind::Srv);
            let _ = parse(&bytes, 0, Kind::A);
        }
    }
}
