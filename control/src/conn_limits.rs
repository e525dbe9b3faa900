//! Bounds on control connections: how many at once (from everyone, and from
//! one source address), and how long a new one may take before it speaks
//! HTTP/2.
//!
//! A control connection costs a descriptor and some memory from the moment
//! it is accepted; one that finishes TLS and then says nothing would
//! otherwise stay forever. So every accepted connection takes a
//! [`ConnSlot`] (refused when none is left), and must deliver the 24-byte
//! HTTP/2 client preface within the setup deadline; the preface is then
//! replayed to tonic by [`Admitted`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection counters shared by the accept loop and every open connection.
#[derive(Debug)]
pub struct ConnLimits {
    global: usize,
    per_source: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-control-conns` are open.
    Global,
    /// `--max-control-conns-per-source` are open from that address.
    PerSource,
}

impl ConnLimits {
    /// At most `global` connections, `per_source` from one address.
    pub fn new(global: usize, per_source: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            global,
            per_source,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `source`, held until dropped.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnSlot, Refused> {
        let mut open = self.lock();
        if open.total >= self.global {
            return Err(Refused::Global);
        }
        let mine = open.by_source.entry(source).or_default();
        if *mine >= self.per_source {
            return Err(Refused::PerSource);
        }
        *mine += 1;
        open.total += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            source,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    source: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// Reads the HTTP/2 preface from a new connection within `deadline`; the
/// connection, with the preface to replay and its slot, is what tonic gets.
pub async fn await_preface<S>(
    mut stream: S,
    slot: ConnSlot,
    deadline: Duration,
) -> io::Result<Admitted<S>>
where
    S: AsyncRead + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout(deadline, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the setup deadline",
            ));
        }
    }
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 client (gRPC needs HTTP/2)",
        ));
    }
    Ok(Admitted {
        inner: stream,
        replay: PREFACE.len(),
        _slot: slot,
    })
}

/// An admitted control connection: the preface already read is replayed
/// first, then the stream itself; its slot is freed when tonic drops it.
#[derive(Debug)]
pub struct Admitted<S> {
    inner: S,
    /// Bytes of the preface not yet handed out.
    replay: usize,
    _slot: ConnSlot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay > 0 {
            let start = PREFACE.len() - self.replay;
            let n = self.replay.min(buf.remaining());
            buf.put_slice(&PREFACE[start..start + n]);
            self.replay -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn slots_are_bounded_per_source_and_overall_and_come_back() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit(a).unwrap();
        let _s2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerSource);
        let _s3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Global);
        drop(s1);
        assert_eq!(l.open(), 2);
        assert!(l.admit(a).is_ok());
    }

    #[tokio::test]
    async fn the_preface_is_required_in_time_and_replayed() {
        let l = ConnLimits::new(10, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // Silent: closed at the deadline.
        let (_client, server) = tokio::io::duplex(64);
        let e = await_preface(server, l.admit(ip).unwrap(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(l.open(), 0, "the slot went with it");
        // Not HTTP/2.
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let e = await_preface(server, l.admit(ip).unwrap(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A real preface and what follows come through whole.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let mut admitted = await_preface(server, l.admit(ip).unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(l.open(), 1);
        let mut got = vec![0u8; PREFACE.len() + 6];
        admitted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..24], PREFACE);
        assert_eq!(&got[24..], b"frames");
    }
}
