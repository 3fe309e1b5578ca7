//! Packet framing and the ERR packet dbsplice sends in place of a greeting.

/// Server error 1040, "Too many connections": what clients expect when a
/// server cannot take them, so drivers print it and retry sensibly.
pub const ER_CON_COUNT_ERROR: u16 = 1040;

/// Longest payload of one packet (a 3-byte length).
const MAX_PAYLOAD: usize = 0xff_ff_ff;

/// Frames an ERR packet as the first packet of a connection (sequence 0).
///
/// The client has not told its capabilities yet, so the packet carries no
/// SQLSTATE marker, as a server does when it refuses a client before the
/// greeting. The message is cut at the packet limit.
pub fn err_packet(code: u16, message: &str) -> Vec<u8> {
    let message = message.as_bytes();
    let message = message.get(..MAX_PAYLOAD - 3).unwrap_or(message);
    let len = 3 + message.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes()[..3]);
    out.push(0);
    out.push(0xff);
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_an_err_packet() {
        let p = err_packet(1040, "no backend");
        assert_eq!(p[..4], [13, 0, 0, 0]);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1040);
        assert_eq!(&p[7..], b"no backend");
    }
}
