//! The byte stream a handler gets: plain TCP, TLS, or an in-memory pipe (tests). Splitting a
//! plain TCP stream gives its owned halves (no lock between reader and writer on the hot
//! path); a TLS or in-memory stream is split with `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A connection's bytes.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS, after the handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory pipe: a test's client end is the other side.
    Memory(DuplexStream),
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
    /// In memory.
    Memory(tokio::io::ReadHalf<DuplexStream>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
    /// In memory.
    Memory(tokio::io::WriteHalf<DuplexStream>),
}

impl Stream {
    /// Split into halves a reader task and a writer task can own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::Memory(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Memory(r), WriteHalf::Memory(w))
            }
        }
    }
}

/// Forwards a poll to whichever variant is there (all of them are `Unpin`).
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Tcp($s) => $e,
            Self::Tls($s) => $e,
            Self::Memory($s) => $e,
        }
    };
}

macro_rules! read_impl {
    ($t:ty) => {
        impl AsyncRead for $t {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                each!(self, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

macro_rules! write_impl {
    ($t:ty) => {
        impl AsyncWrite for $t {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                each!(self, s => Pin::new(s).poll_write(cx, buf))
            }
            #[inline]
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Tcp(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                    Self::Memory(s) => s.is_write_vectored(),
                }
            }
            #[inline]
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                each!(self, s => Pin::new(s).poll_flush(cx))
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                each!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

read_impl!(Stream);
read_impl!(ReadHalf);
write_impl!(Stream);
write_impl!(WriteHalf);
