//! Packet framing, length-encoded values, and the ERR packet dbsplice sends in
//! place of a greeting. Every parser here takes untrusted bytes and returns an
//! error rather than panicking.

use std::fmt;

/// Server error 1040, "Too many connections": what clients expect when a
/// server cannot take them, so drivers print it and retry sensibly.
pub const ER_CON_COUNT_ERROR: u16 = 1040;

/// Longest payload of one packet (a 3-byte length).
const MAX_PAYLOAD: usize = 0xff_ff_ff;

/// Bytes that break the protocol: the peer is not a MySQL server we can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Shorthand for a protocol error with a message.
pub(crate) fn protocol(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// One packet: its sequence number and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id from the header.
    pub seq: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Collects bytes as they arrive and cuts them into packets.
#[derive(Debug)]
pub struct PacketBuffer {
    buf: Vec<u8>,
    max_payload: usize,
}

impl PacketBuffer {
    /// A buffer that refuses packets longer than `max_payload` bytes: a probe
    /// reads a handful of small packets, and an absurd length must not make
    /// it wait for (or allocate) megabytes.
    pub fn new(max_payload: usize) -> PacketBuffer {
        PacketBuffer {
            buf: Vec::new(),
            max_payload: max_payload.min(MAX_PAYLOAD - 1),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True when bytes are waiting that no packet has taken yet.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next whole packet, `None` if more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ProtocolError> {
        let Some(&[a, b, c, seq]) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
        if len > self.max_payload {
            return Err(protocol(format!(
                "packet of {len} bytes announced, more than the {} a check expects",
                self.max_payload
            )));
        }
        let Some(payload) = self.buf.get(4..len.saturating_add(4)) else {
            return Ok(None);
        };
        let packet = Packet {
            seq,
            payload: payload.to_vec(),
        };
        self.buf.drain(..len.saturating_add(4));
        Ok(Some(packet))
    }
}

/// Frames `payload` as one packet with sequence id `seq`.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let payload = payload.get(..MAX_PAYLOAD - 1).unwrap_or(payload);
    let len = u32::try_from(payload.len()).unwrap_or(0).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len().saturating_add(4));
    out.extend_from_slice(&len[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// Frames an ERR packet as the first packet of a connection (sequence 0).
///
/// The client has not told its capabilities yet, and a server refusing a
/// client before the greeting leaves the `#SQLSTATE` out; dbsplice puts it in
/// (`08004` for 1040, else `HY000`). Clients that read the marker when it is
/// there (libmariadb, mysqlnd, Connector/J, Go's driver, mysql2) show the same
/// message either way, and PyMySQL before 1.1.1, which always skips six bytes
/// for it, would otherwise cut the first six characters off the message.
pub fn err_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(if code == 1040 { b"08004" } else { b"HY000" });
    payload.extend_from_slice(message.as_bytes());
    frame(0, &payload)
}

/// An ERR packet from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The error code, such as 1045 or 1129.
    pub code: u16,
    /// The message, without the SQLSTATE.
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

/// Parses an ERR payload (first byte 0xff), with or without a `#SQLSTATE`.
pub fn parse_err(payload: &[u8]) -> Result<ServerError, ProtocolError> {
    let Some(&[0xff, lo, hi]) = payload.get(..3) else {
        return Err(protocol("malformed ERR packet"));
    };
    let mut rest = payload.get(3..).unwrap_or_default();
    if rest.first() == Some(&b'#') {
        rest = rest.get(6..).unwrap_or_default();
    }
    Ok(ServerError {
        code: u16::from_le_bytes([lo, hi]),
        message: printable(rest.get(..MAX_SERVER_MESSAGE).unwrap_or(rest)),
    })
}

/// Longest server message or version kept, in bytes: enough for any real one.
pub const MAX_SERVER_MESSAGE: usize = 512;

/// Server-supplied bytes as text safe to log and print: control characters
/// (a newline that would forge a log line, an escape sequence that would
/// drive a terminal) become U+FFFD.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Reads values front to back from a payload.
#[derive(Debug)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// A length-encoded integer; `None` for the NULL marker (0xfb).
    pub fn lenenc_int(&mut self) -> Result<Option<u64>, ProtocolError> {
        let (&first, rest) = self
            .0
            .split_first()
            .ok_or_else(|| protocol("truncated length"))?;
        self.0 = rest;
        let width = match first {
            0xfb => return Ok(None),
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            0xff => return Err(protocol("invalid length prefix 0xff")),
            n => return Ok(Some(u64::from(n))),
        };
        let bytes = self.take(width)?;
        Ok(Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| acc << 8 | u64::from(b)),
        ))
    }

    /// A length-encoded string; `None` for SQL NULL.
    pub fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, ProtocolError> {
        match self.lenenc_int()? {
            None => Ok(None),
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| protocol("length out of range"))?;
                self.take(len).map(Some)
            }
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(protocol("truncated packet"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn frames_an_err_packet() {
        let p = err_packet(1040, "no backend");
        assert_eq!(p[..4], [19, 0, 0, 0]);
        assert_eq!(&p[7..13], b"#08004");
        assert_eq!(
            parse_err(&p[4..]),
            Ok(ServerError {
                code: 1040,
                message: "no backend".into()
            })
        );
    }

    #[test]
    fn parses_err_with_sqlstate() {
        let mut payload = vec![0xff, 0x15, 0x04];
        payload.extend_from_slice(b"#28000Access denied");
        assert_eq!(
            parse_err(&payload).unwrap(),
            ServerError {
                code: 1045,
                message: "Access denied".into()
            }
        );
        assert!(parse_err(&[0xff, 1]).is_err());
    }

    #[test]
    fn cuts_packets_across_arbitrary_splits() {
        let mut wire = frame(0, b"hello");
        wire.extend(frame(1, b""));
        wire.extend(frame(2, &[7; 300]));
        for split in 0..wire.len() {
            let mut buf = PacketBuffer::new(1024);
            buf.push(&wire[..split]);
            let mut got = Vec::new();
            while let Some(p) = buf.next_packet().unwrap() {
                got.push(p);
            }
            buf.push(&wire[split..]);
            while let Some(p) = buf.next_packet().unwrap() {
                got.push(p);
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!((got[0].seq, &got[0].payload[..]), (0, &b"hello"[..]));
            assert_eq!((got[2].seq, got[2].payload.len()), (2, 300));
            assert!(!buf.has_partial());
        }
    }

    #[test]
    fn refuses_absurd_lengths_before_waiting_for_them() {
        let mut buf = PacketBuffer::new(1024);
        buf.push(&[0xff, 0xff, 0xff, 0]);
        assert!(buf.next_packet().unwrap_err().0.contains("16777215"));
    }

    #[test]
    fn length_encoded_values() {
        let mut r = Reader(&[0x05, 0xfc, 0x01, 0x02, 0xfb, 0x03, b'a', b'b', b'c', 0xfe]);
        assert_eq!(r.lenenc_int().unwrap(), Some(5));
        assert_eq!(r.lenenc_int().unwrap(), Some(0x0201));
        assert_eq!(r.lenenc_bytes().unwrap(), None);
        assert_eq!(r.lenenc_bytes().unwrap(), Some(&b"abc"[..]));
        assert!(r.lenenc_int().is_err(), "8-byte length cut short");
        assert!(Reader(&[0x09, 1]).lenenc_bytes().is_err());
        assert!(Reader(&[0xff]).lenenc_int().is_err());
    }
}
