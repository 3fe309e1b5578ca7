//! A scripted fake MySQL server for what a real one cannot do on demand:
//! garbage, stalls, hostile lengths, a 1129 greeting, MySQL 8's
//! `caching_sha2_password` exchanges.

use std::net::SocketAddr;
use std::sync::Arc;

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The nonce every fake greeting carries (20 bytes).
pub const NONCE: &[u8; 20] = b"abcdefghijklmnopqrst";

/// Frames a payload as one packet.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let mut out = vec![len[0], len[1], len[2], seq];
    out.extend_from_slice(payload);
    out
}

/// A MySQL 8 style greeting offering `plugin`, and TLS when `tls`.
pub fn greeting(plugin: &str, tls: bool) -> Vec<u8> {
    let mut caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_LONG_PASSWORD;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let mut scramble_2 = NONCE[8..].to_vec();
    scramble_2.push(0);
    let handshake = HandshakePacket::new(
        10,
        &b"8.0.36-fake"[..],
        1,
        NONCE[..8].try_into().unwrap(),
        Some(scramble_2),
        caps,
        45,
        StatusFlags::empty(),
        Some(plugin.as_bytes()),
    );
    let mut payload = Vec::new();
    handshake.serialize(&mut payload);
    packet(0, &payload)
}

/// An OK packet.
pub fn ok(seq: u8) -> Vec<u8> {
    packet(seq, &[0, 0, 0, 2, 0, 0, 0])
}

/// A two-column result `read_only = OFF`, as `SHOW GLOBAL VARIABLES` sends it.
pub fn read_only_off() -> Vec<u8> {
    fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
        out.push(u8::try_from(s.len()).unwrap());
        out.extend_from_slice(s);
    }
    let mut wire = packet(1, &[2]);
    for (i, name) in ["Variable_name", "Value"].iter().enumerate() {
        let mut col = Vec::new();
        for field in [&b"def"[..], b"", b"", b"", name.as_bytes(), name.as_bytes()] {
            lenenc(&mut col, field);
        }
        col.extend_from_slice(&[0x0c, 0x21, 0, 0, 1, 0, 0xfd, 0, 0, 0, 0, 0]);
        wire.extend(packet(u8::try_from(i + 2).unwrap(), &col));
    }
    wire.extend(packet(4, &[0xfe, 0, 0, 2, 0]));
    let mut row = Vec::new();
    lenenc(&mut row, b"read_only");
    lenenc(&mut row, b"OFF");
    wire.extend(packet(5, &row));
    wire.extend(packet(6, &[0xfe, 0, 0, 2, 0]));
    wire
}

/// Reads one packet's payload; `None` at EOF.
pub async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

/// After login: answers COM_PING and the role query, then expects COM_QUIT.
/// Returns true when the client quit cleanly.
pub async fn serve_logged_in<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
    loop {
        let Some(cmd) = read_packet(s).await else {
            return false;
        };
        match cmd.first() {
            Some(0x0e) => s.write_all(&ok(1)).await.unwrap(),
            Some(0x03) => s.write_all(&read_only_off()).await.unwrap(),
            Some(0x01) => return true,
            _ => return false,
        }
    }
}

/// A listener on port 0 running `script` for every connection.
pub async fn serve<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream));
        }
    });
    addr
}

/// A minimal client over an already connected stream (so the test chooses
/// the source address): native-password login, one query, the first value
/// of the first row.
pub async fn query_over(
    mut s: tokio::net::TcpStream,
    user: &str,
    password: &str,
    sql: &str,
) -> Option<String> {
    use dbsplice::mysql::resultset::{QueryOutcome, ResultReader};
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
    let greeting = read_packet(&mut s).await?;
    let handshake: HandshakePacket<'_> = ParseBuf(&greeting).parse(()).ok()?;
    let nonce = handshake.nonce();
    let scramble =
        dbsplice::mysql::auth::scramble(&AuthPlugin::MysqlNativePassword, password, &nonce);
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD;
    let response = HandshakeResponse::new(
        Some(scramble),
        (10, 11, 0),
        Some(user.as_bytes()),
        None::<&[u8]>,
        Some(AuthPlugin::MysqlNativePassword),
        caps,
        None,
        1 << 24,
    );
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    s.write_all(&packet(1, &payload)).await.ok()?;
    let ok = read_packet(&mut s).await?;
    if ok.first() != Some(&0) {
        return None;
    }
    let mut query = vec![0x03];
    query.extend_from_slice(sql.as_bytes());
    s.write_all(&packet(0, &query)).await.ok()?;
    let mut reader = ResultReader::default();
    loop {
        let p = read_packet(&mut s).await?;
        if let Some(outcome) = reader.feed(&p).ok()? {
            let _ = s.write_all(&packet(0, &[0x01])).await;
            return match outcome {
                QueryOutcome::Rows(r) => r.rows.first()?.first()?.clone(),
                _ => None,
            };
        }
    }
}
