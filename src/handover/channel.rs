//! The socket a hand-over runs on: `SOCK_SEQPACKET` over an abstract Unix
//! name that the giving process makes up and passes to the process it
//! starts, which alone may connect (its peer credentials are checked). The
//! calls block, each within the timeout set: run them off the async threads.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix,
};

use super::format::{FormatError, Message, FDS_PER_MESSAGE, MAX_MESSAGE_BYTES, PACKET_BYTES};

/// The environment variable that names the socket to the new process.
pub const ENV: &str = "DBSPLICE_HANDOVER";

/// A socket the new process is to connect to.
#[derive(Debug)]
pub struct Listening {
    fd: OwnedFd,
    name: String,
}

/// One end of a hand-over.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

fn invalid(e: FormatError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Listening {
    /// Listens at a fresh abstract name.
    pub fn new() -> io::Result<Listening> {
        let fd = seqpacket()?;
        let name = format!(
            "dbsplice-handover-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        );
        rustix::net::bind(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        rustix::net::listen(&fd, 4)?;
        Ok(Listening { fd, name })
    }

    /// The name to pass in [`ENV`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `within` for process `pid` to connect; anyone else who
    /// connects meanwhile is closed.
    pub fn accept_from(&self, pid: u32, within: Duration) -> io::Result<Channel> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the new process did not connect within {within:?}"),
                ));
            }
            rustix::net::sockopt::set_socket_timeout(
                &self.fd,
                rustix::net::sockopt::Timeout::Recv,
                Some(left),
            )?;
            let fd = match rustix::net::accept_with(&self.fd, rustix::net::SocketFlags::CLOEXEC) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let peer = rustix::net::sockopt::socket_peercred(&fd)?;
            if u32::try_from(peer.pid.as_raw_nonzero().get()).ok() == Some(pid) {
                return Ok(Channel { fd });
            }
            tracing::warn!(
                pid = peer.pid.as_raw_nonzero().get(),
                "a process other than the new one connected to the hand-over socket; closed"
            );
        }
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

impl Channel {
    /// Connects to the socket named `name` (from [`ENV`]).
    pub fn connect(name: &str) -> io::Result<Channel> {
        let fd = seqpacket()?;
        rustix::net::connect(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        Ok(Channel { fd })
    }

    /// Every later call fails after `timeout` without progress.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        use rustix::net::sockopt::{set_socket_timeout, Timeout};
        set_socket_timeout(&self.fd, Timeout::Recv, Some(timeout))?;
        set_socket_timeout(&self.fd, Timeout::Send, Some(timeout))?;
        Ok(())
    }

    /// Sends one message.
    pub fn send(&self, message: &Message) -> io::Result<()> {
        let bytes = message.encode();
        let mut parts = bytes.chunks(PACKET_BYTES - 1).peekable();
        if parts.peek().is_none() {
            return self.packet(&[0], &[]);
        }
        while let Some(part) = parts.next() {
            let more = u8::from(parts.peek().is_some());
            let mut packet = Vec::with_capacity(part.len() + 1);
            packet.push(more);
            packet.extend_from_slice(part);
            self.packet(&packet, &[])?;
        }
        Ok(())
    }

    /// Sends `fds` in `fds` messages of at most [`FDS_PER_MESSAGE`].
    pub fn send_fds(&self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        for batch in fds.chunks(FDS_PER_MESSAGE) {
            let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            let mut packet = vec![0];
            packet.extend_from_slice(&Message::Fds { count }.encode());
            self.packet(&packet, batch)?;
        }
        Ok(())
    }

    fn packet(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        loop {
            match rustix::net::sendmsg(
                &self.fd,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the other process stopped reading the hand-over",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message and the descriptors that came with it.
    pub fn recv(&self) -> io::Result<(Message, Vec<OwnedFd>)> {
        let mut bytes = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0u8; PACKET_BYTES];
        loop {
            let (n, mut got) = self.recv_packet(&mut buf)?;
            fds.append(&mut got);
            let Some((&more, part)) = buf.get(..n).and_then(<[u8]>::split_first) else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other process closed the hand-over",
                ));
            };
            if bytes.len() + part.len() > MAX_MESSAGE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a hand-over message larger than any state",
                ));
            }
            bytes.extend_from_slice(part);
            if more == 0 {
                break;
            }
        }
        let message = Message::decode(&bytes).map_err(invalid)?;
        Ok((message, fds))
    }

    fn recv_packet(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.fd,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(got) => break got,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the other process went quiet during the hand-over",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "descriptors were lost in the hand-over (truncated)",
            ));
        }
        Ok((got.bytes.min(buf.len()), fds))
    }

    /// The socket, for waiting on it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_in_batches() {
        let listening = Listening::new().unwrap();
        let name = listening.name().to_owned();
        let sender = std::thread::spawn(move || {
            let channel = Channel::connect(&name).unwrap();
            channel.set_timeout(Duration::from_secs(10)).unwrap();
            // More descriptors than one message carries.
            let files: Vec<std::fs::File> = (0..600)
                .map(|_| std::fs::File::open("/dev/null").unwrap())
                .collect();
            let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
            channel.send_fds(&fds).unwrap();
            // A message longer than a packet.
            channel
                .send(&Message::Failed {
                    why: "x".repeat(300_000),
                })
                .unwrap();
        });
        let channel = listening
            .accept_from(std::process::id(), Duration::from_secs(10))
            .unwrap();
        channel.set_timeout(Duration::from_secs(10)).unwrap();
        let mut received = Vec::new();
        while received.len() < 600 {
            let (message, mut fds) = channel.recv().unwrap();
            assert_eq!(
                message,
                Message::Fds {
                    count: u32::try_from(fds.len()).unwrap()
                }
            );
            assert!(fds.len() <= FDS_PER_MESSAGE);
            received.append(&mut fds);
        }
        assert_eq!(received.len(), 600);
        let (message, fds) = channel.recv().unwrap();
        assert!(fds.is_empty());
        assert!(matches!(message, Message::Failed { why } if why.len() == 300_000));
        sender.join().unwrap();
        let closed = channel.recv();
        assert!(closed.is_err(), "the sender closed its end");
    }
}
