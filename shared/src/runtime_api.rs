//! The streaming function's connection to Lambda's Runtime API. `lambda_runtime` opens it with
//! Nagle's algorithm on and offers no way to turn it off, so a streamed chunk written while the
//! previous one is unacknowledged waits for the Runtime API's delayed ACK: about 40 ms after the
//! prelude, with the first deltas held back together. Setting `TCP_NODELAY` on that socket from
//! here lets every chunk leave as it is written.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::BorrowedFd;

use socket2::SockRef;

/// Turns Nagle's algorithm off on this process's connections to the Runtime API named by
/// `AWS_LAMBDA_RUNTIME_API`; does nothing outside Lambda. Cheap (a directory listing and a few
/// system calls): call it on every invocation, since the runtime may have reconnected.
pub fn send_without_delay() {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let Some(address) = api.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        tracing::warn!(%api, "AWS_LAMBDA_RUNTIME_API is not an address");
        return;
    };
    let sockets = disable_nagle_towards(address);
    tracing::debug!(sockets, "sending to the Runtime API without delay");
}

/// Sets `TCP_NODELAY` on every open TCP socket of this process connected to `peer`; how many.
pub fn disable_nagle_towards(peer: SocketAddr) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for the two calls below. If another thread
        // closes it meanwhile, they fail with EBADF; if its number is reused, the peer check
        // keeps us off anything but a socket to the Runtime API.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let connected_to_peer = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a == peer);
        if connected_to_peer && socket.set_tcp_nodelay(true).is_ok() {
            changed += 1;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn only_sockets_to_the_peer_lose_nagle() {
        // GIVEN two connections, each to its own listener, both with Nagle's algorithm on
        let runtime = TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let to_runtime = TcpStream::connect(runtime.local_addr().expect("addr")).expect("connect");
        let to_other = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        assert!(!to_runtime.nodelay().expect("nodelay"));

        // WHEN Nagle is turned off towards the first listener
        let changed = disable_nagle_towards(runtime.local_addr().expect("addr"));

        // THEN that connection sends without delay, and the other is untouched
        assert_eq!(changed, 1);
        assert!(to_runtime.nodelay().expect("nodelay"));
        assert!(!to_other.nodelay().expect("nodelay"));
    }
}
