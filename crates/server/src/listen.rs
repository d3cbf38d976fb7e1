//! Listening sockets with room for a reconnect storm.
//!
//! Tokio's `TcpListener::bind` asks the kernel to queue at most 1,024
//! connections for `accept`. When every device of a dropped gateway comes
//! back at once, that queue overflows and the kernel drops their SYNs; each
//! such device waits a whole retransmission timeout (1 s) before it tries
//! again. So services listen with the largest queue the kernel allows.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;

/// Listens on `addr` (`host:port`, the first address it resolves to that
/// can be bound).
pub async fn listen(addr: &str) -> io::Result<TcpListener> {
    let mut failed = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match listen_on(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Listens as [`listen`] does and says where a service listens.
pub async fn bind(service: &str, addr: &str) -> io::Result<TcpListener> {
    let listener = listen(addr).await?;
    tracing::info!(service, addr = %listener.local_addr()?, "listening");
    Ok(listener)
}

fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted service can listen again
    // while connections of its predecessor linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listens_where_asked_and_accepts() {
        let listener = listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(accepted.unwrap().1, client.unwrap().local_addr().unwrap());
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error() {
        let first = listen("127.0.0.1:0").await.unwrap();
        let addr = first.local_addr().unwrap().to_string();
        assert_eq!(
            listen(&addr).await.unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_an_error() {
        assert!(listen("127.0.0.1").await.is_err());
    }
}
