//! Reaching into and out of the node's network namespace: [`in_netns`] runs
//! a closure on a thread that joined it (sockets it makes stay there), and
//! [`Relay`] pipes connections accepted on one side to streams made on the
//! other, on plain threads (the node outlives any test's tokio runtime).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A loopback port forwarded into the node's netns by [`Node::forward`](super::Node::forward).
#[derive(Debug)]
pub struct PortForward {
    pub(super) local: SocketAddr,
    pub(super) relay: Relay,
}

impl PortForward {
    /// `127.0.0.1:<port>` in the test process.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.relay.stop();
    }
}

/// Accepts on a listener (in whatever netns it was bound) and pipes each
/// connection to a stream made by `connect`, on plain threads: the node
/// outlives any single test's tokio runtime.
#[derive(Debug)]
pub(super) struct Relay {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub(super) fn spawn<F>(listener: TcpListener, connect: F) -> io::Result<Relay>
    where
        F: Fn() -> io::Result<TcpStream> + Send + Sync + 'static,
    {
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stop.clone());
        let connect = Arc::new(connect);
        std::thread::Builder::new()
            .name("garret-e2e-relay".into())
            .spawn(move || {
                for conn in l.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(a) = conn else { continue };
                    let connect = connect.clone();
                    let _ = std::thread::Builder::new()
                        .name("garret-e2e-pipe".into())
                        .spawn(move || {
                            if let Ok(b) = connect() {
                                pipe(a, b);
                            }
                        });
                }
            })?;
        Ok(Relay { listener, stop })
    }

    /// Stop accepting; the listener's socket (and its netns reference) goes
    /// when the accept thread returns.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a listening socket we own wakes accept().
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let _ = copy(&mut b2, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// Run `f` on a fresh thread that has joined the network namespace at
/// `netns`; sockets it creates stay in that namespace.
pub(super) fn in_netns<T, F>(netns: PathBuf, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    std::thread::spawn(move || {
        let ns = File::open(&netns)?;
        // SAFETY: setns on this thread only (network namespaces may differ
        // per thread); the thread ends right after `f`.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

pub(super) fn connect_in(netns: PathBuf, addr: SocketAddr) -> io::Result<TcpStream> {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
}
