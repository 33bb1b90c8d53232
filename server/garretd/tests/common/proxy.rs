//! A TCP relay that forwards what clients send only up to a byte budget and then holds the
//! rest, so a test can keep an upload in flight for as long as it likes and interrupt it
//! at a point it has observed, instead of racing a kill against a fast loopback upload.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct StallingProxy {
    /// `http://127.0.0.1:<port>`: where clients connect instead of the server.
    pub url: String,
    stalled: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl StallingProxy {
    /// Relays to the server at `target` (`http://host:port`), forwarding at most `budget`
    /// bytes from clients (all connections together); answers flow back unlimited.
    pub fn start(target: &str, budget: u64) -> StallingProxy {
        let upstream = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let stalled = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let forwarded = Arc::new(AtomicU64::new(0));
        let (st, so) = (stalled.clone(), sockets.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let Ok(mut v) = so.lock() {
                    v.extend(client.try_clone().ok());
                    v.extend(server.try_clone().ok());
                }
                let (stalled, forwarded) = (st.clone(), forwarded.clone());
                std::thread::spawn(move || relay_up(client, server, budget, &forwarded, &stalled));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        StallingProxy {
            url,
            stalled,
            sockets,
        }
    }

    /// Whether the budget is spent: some client is now sending into the void.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection on both sides (the server sees its client vanish).
    pub fn cut(&self) {
        if let Ok(mut v) = self.sockets.lock() {
            for s in v.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Client → server until the shared budget is spent; then stops reading (the sockets stay
/// open, held by the proxy, until [`StallingProxy::cut`]).
fn relay_up(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: u64,
    forwarded: &AtomicU64,
    stalled: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = budget.saturating_sub(forwarded.load(Ordering::SeqCst));
        if left == 0 {
            stalled.store(true, Ordering::SeqCst);
            return;
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        forwarded.fetch_add(n as u64, Ordering::SeqCst);
    }
}
