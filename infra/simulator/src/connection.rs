//! Connections a handler can sever, so a `[sim:cut]` request ends with the socket closed and no
//! response at all — what a client sees when a provider's load balancer drops it.
//!
//! axum hands a handler no access to its socket, so the listener wraps each socket with a
//! [`KillSwitch`] and passes a copy to handlers as connect info. Once pulled, every read and
//! write on the socket fails, the HTTP server gives up on the connection and drops it before a
//! single byte of the response is written.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::{ConnectInfo, Connected},
    http::Extensions,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

/// Severs one connection.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub fn pull(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn pulled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The switch of the connection a request came on, when it was served by [`crate::serve`].
    pub fn of(extensions: &Extensions) -> Option<&KillSwitch> {
        extensions
            .get::<ConnectInfo<KillSwitch>>()
            .map(|ConnectInfo(switch)| switch)
    }
}

impl Connected<IncomingStream<'_, SeverableListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, SeverableListener>) -> Self {
        stream.io().switch.clone()
    }
}

/// A TCP listener whose connections carry a [`KillSwitch`].
#[derive(Debug)]
pub struct SeverableListener(pub TcpListener);

impl Listener for SeverableListener {
    type Io = SeverableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, address)) => {
                    // Streams are many tiny writes; Nagle's algorithm would batch them and
                    // hide the pacing (and the first-token latency) the tests measure.
                    if let Err(error) = inner.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    let io = SeverableIo {
                        inner,
                        switch: KillSwitch::default(),
                    };
                    return (io, address);
                }
                Err(error) => {
                    // Per-connection errors (reset before accept) are not worth a pause; running
                    // out of file descriptors is, or the loop would spin.
                    if !matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream that fails every operation once its [`KillSwitch`] is pulled.
#[derive(Debug)]
pub struct SeverableIo {
    inner: TcpStream,
    switch: KillSwitch,
}

fn severed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "simulated connection drop",
    )
}

impl AsyncRead for SeverableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.switch.pulled() {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SeverableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.switch.pulled() {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.switch.pulled() {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.switch.pulled() {
            return Poll::Ready(Err(severed()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
