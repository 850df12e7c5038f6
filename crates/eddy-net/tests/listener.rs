//! The listener's limits, with a handler that holds its connection open: the cap per listener
//! (one more is closed at once, a freed slot is taken again), the drain on shutdown (handlers
//! that say goodbye finish; ones that do not are aborted after the deadline), and the TLS
//! handshake deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_net::{Conn, Handler, Limits, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Greets, then echoes until the client closes; on shutdown it says "bye" and ends, unless
/// it is `stubborn`, which ignores shutdown.
struct Echo {
    stubborn: bool,
    ended: AtomicUsize,
}

impl Handler for Echo {
    fn protocol(&self) -> &'static str {
        "echo"
    }

    async fn handle(self: Arc<Self>, conn: Conn) {
        let mut shutdown = conn.shutdown;
        let (mut rd, mut wr) = conn.stream.into_split();
        let _ = wr.write_all(b"hi").await;
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => { let _ = wr.write_all(&buf[..n]).await; }
                },
                _ = shutdown.changed(), if !self.stubborn => {
                    let _ = wr.write_all(b"bye").await;
                    break;
                }
            }
        }
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    fn refuse(&self, stream: &TcpStream) {
        let _ = stream.try_write(b"full");
    }
}

async fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("nothing read within 10 s"),
    }
}

/// A connection the handler greeted.
async fn greeted(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_some(&mut s).await, b"hi");
    s
}

async fn start(
    limits: Limits,
    stubborn: bool,
) -> (
    std::net::SocketAddr,
    Arc<Echo>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let listener = Listener::bind("echo", "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Echo {
        stubborn,
        ended: AtomicUsize::new(0),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(eddy_net::serve(listener, handler.clone(), limits, stopped));
    (addr, handler, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_freed_slots_are_taken_again() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let (addr, handler, stop, server) = start(limits, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greeted(addr).await);
    }
    // the fourth is told and closed; the three held keep working
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_some(&mut extra).await, b"full");
    assert_eq!(read_some(&mut extra).await, b"", "closed after the refusal");
    for s in &mut held {
        s.write_all(b"ping").await.unwrap();
        assert_eq!(read_some(s).await, b"ping");
    }
    // a slot freed is taken again (once the handler has seen the close)
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while handler.ended.load(Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < deadline,
            "the closed connection never ended"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut again = loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let first = read_some(&mut s).await;
        if first == b"hi" {
            break s;
        }
        // the listener may still count the closed one for a moment
        assert_eq!(first, b"full");
        assert!(
            Instant::now() < deadline,
            "no slot after a connection closed"
        );
    };
    again.write_all(b"x").await.unwrap();
    assert_eq!(read_some(&mut again).await, b"x");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_connections_that_say_goodbye() {
    let (addr, handler, stop, server) = start(Limits::default(), false).await;
    let mut a = greeted(addr).await;
    let mut b = greeted(addr).await;
    stop.send(true).unwrap();
    assert_eq!(read_some(&mut a).await, b"bye");
    assert_eq!(read_some(&mut b).await, b"bye");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handler.ended.load(Ordering::SeqCst), 2);
    // no longer listening
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_ignore_shutdown_are_aborted_after_the_drain() {
    let limits = Limits {
        drain: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, handler, stop, server) = start(limits, true).await;
    let mut a = greeted(addr).await;
    let began = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned before the drain: {took:?}"
    );
    // aborted, not ended by itself, and the socket is closed
    assert_eq!(handler.ended.load(Ordering::SeqCst), 0);
    assert_eq!(read_some(&mut a).await, b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_finishes_its_handshake_is_closed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let acceptor = eddy_net::tls_acceptor(&cert, &key, None).unwrap();
    let listener = Listener::bind("echo-tls", "127.0.0.1:0".parse().unwrap(), Some(acceptor))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Echo {
        stubborn: false,
        ended: AtomicUsize::new(0),
    });
    let limits = Limits {
        tls_handshake: Duration::from_millis(300),
        max_connections: 1,
        ..Limits::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(eddy_net::serve(listener, handler.clone(), limits, stopped));
    // a client that connects and says nothing holds the only slot until the deadline
    let began = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_some(&mut silent).await, b"", "closed");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "closed before the deadline: {took:?}"
    );
    assert_eq!(handler.ended.load(Ordering::SeqCst), 0, "no handler ran");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_more_than_its_share_of_a_listener() {
    let limits = Limits {
        max_connections_per_address: 2,
        ..Limits::default()
    };
    let (addr, _handler, stop, server) = start(limits, false).await;
    let mut held = vec![greeted(addr).await, greeted(addr).await];
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_some(&mut third).await, b"full");
    assert_eq!(read_some(&mut third).await, b"");
    // another address is counted apart (127.0.0.2 is loopback too on Linux)
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr).await.unwrap();
    assert_eq!(read_some(&mut other).await, b"hi");
    // a closed one frees its address's place
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if read_some(&mut s).await == b"hi" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the address's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_sharing_a_descriptor_budget_leave_the_others_room() {
    let budget = eddy_net::Descriptors::new(3);
    let shared = Limits {
        descriptors: Some(budget.clone()),
        ..Limits::default()
    };
    let (a, _ha, stop_a, server_a) = start(shared.clone(), false).await;
    let (b, _hb, stop_b, server_b) = start(shared, false).await;
    // the management listener draws from no budget
    let (admin, _hc, stop_c, server_c) = start(Limits::default(), false).await;
    let _held = vec![greeted(a).await, greeted(a).await, greeted(b).await];
    assert_eq!(budget.open(), 3);
    for addr in [a, b] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_some(&mut s).await, b"full", "{addr}");
    }
    let mut ok = greeted(admin).await;
    ok.write_all(b"still here").await.unwrap();
    assert_eq!(read_some(&mut ok).await, b"still here");
    drop(_held);
    for (stop, server) in [(stop_a, server_a), (stop_b, server_b), (stop_c, server_c)] {
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        budget.open(),
        0,
        "every connection gave its descriptor back"
    );
}
