//! The hostile-client suite: one broker, the attacks a careless or hostile client makes on
//! loopback (bounded in time and count), and after each the broker's resident memory, its open
//! descriptors and how fast it still answers a fresh client of every protocol, against stated
//! bounds. Its figures are in RELIABILITY.md (printed with `--nocapture`).
//!
//! The probes come from 127.0.0.2, the attacks from 127.0.0.1: the caps per client address
//! must leave other clients served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{kafka_request, rss, Server};
use eddy_records::BatchBuilder;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// Most resident memory the broker may reach under any one attack.
const MAX_RSS: u64 = 256 << 20;
/// Most descriptors it may hold under any one attack (the cap per address is 1,024 a listener).
const MAX_FDS: usize = 1200;
/// Longest a fresh client may wait for its first answer, under any attack.
const MAX_ANSWER: Duration = Duration::from_secs(2);

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A connection from 127.0.0.2 (not the attackers' address).
fn probe_connect(port: u16) -> TcpStream {
    let s = connect_from_another_address(port);
    s.set_read_timeout(Some(MAX_ANSWER * 2)).unwrap();
    s
}

fn connect_from_another_address(port: u16) -> TcpStream {
    // std has no bind-before-connect; tokio's TcpSocket does, on a small runtime
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = s.connect(to).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// How long the slowest of the three protocols took to answer a fresh client.
fn answer_time(s: &Server) -> Duration {
    let began = Instant::now();
    let mut a = probe_connect(s.port);
    a.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = [0u8; 1024];
    let n = a.read(&mut buf).unwrap();
    assert!(n > 7 && buf[0] == 1, "AMQP answered {:?}", &buf[..n]);
    let mut k = probe_connect(s.kafka_port);
    k.write_all(&kafka_request(
        ApiKey::ApiVersions,
        0,
        1,
        &ApiVersionsRequest::default(),
    ))
    .unwrap();
    assert!(!read_frame(&mut k).is_empty());
    let mut h = probe_connect(s.http_port);
    h.write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: eddy\r\n\r\n")
        .unwrap();
    let n = h.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 204"),
        "HTTP answered {n} bytes"
    );
    began.elapsed()
}

struct Figures {
    attack: &'static str,
    rss: u64,
    fds: usize,
    answer: Duration,
}

/// Measure while the attack holds its sockets: the peak of a few readings.
fn measure(attack: &'static str, s: &Server, hold: Duration) -> Figures {
    let pid = s.child.as_ref().unwrap().id();
    let until = Instant::now() + hold;
    let mut f = Figures {
        attack,
        rss: 0,
        fds: 0,
        answer: Duration::ZERO,
    };
    loop {
        f.rss = f.rss.max(rss(pid));
        f.fds = f.fds.max(fds(pid));
        f.answer = f.answer.max(answer_time(s));
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "{attack}: peak RSS {} MB, peak descriptors {}, slowest first answer {} ms",
        f.rss >> 20,
        f.fds,
        f.answer.as_millis()
    );
    assert!(f.rss < MAX_RSS, "{attack}: RSS {} MB", f.rss >> 20);
    assert!(f.fds < MAX_FDS, "{attack}: {} descriptors", f.fds);
    assert!(
        f.answer < MAX_ANSWER,
        "{attack}: answered in {:?}",
        f.answer
    );
    f
}

fn raise_own_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a properly sized argument.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn topic_with_data(port: u16, topic: &str, megabytes: usize) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.num_partitions = 1;
    t.replication_factor = 1;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 10_000;
    c.write_all(&kafka_request(ApiKey::CreateTopics, 5, 1, &r))
        .unwrap();
    read_frame(&mut c);
    let value = vec![7u8; 1 << 20];
    for i in 0..megabytes {
        let mut b = BatchBuilder::new();
        b.push(0, 0, None, Some(&value), &[]);
        let mut pd = PartitionProduceData::default();
        pd.records = Some(Bytes::from(b.finish()));
        let mut td = TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string(topic.into()));
        td.partition_data = vec![pd];
        let mut p = ProduceRequest::default();
        p.acks = 1;
        p.timeout_ms = 10_000;
        p.topic_data = vec![td];
        c.write_all(&kafka_request(ApiKey::Produce, 7, 2 + i as i32, &p))
            .unwrap();
        read_frame(&mut c);
    }
}

fn fetch_all(topic: &str) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.partition_max_bytes = i32::MAX;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut f = FetchRequest::default();
    f.max_wait_ms = 0;
    f.max_bytes = i32::MAX;
    f.topics = vec![t];
    f
}

#[test]
fn a_hostile_client_cannot_take_the_broker_down() {
    raise_own_descriptor_limit();
    let s = Server::start(&["--heartbeat", "0"]);
    let mut figures = vec![measure("idle", &s, Duration::ZERO)];

    // 1. AMQP handshakes trickled a byte every 2 s: each is closed at its 10 s deadline
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
            c
        })
        .collect();
    let began = Instant::now();
    figures.push(measure(
        "100 AMQP handshakes trickled",
        &s,
        Duration::from_secs(1),
    ));
    let mut open = slow.len();
    while open > 0 && began.elapsed() < Duration::from_secs(20) {
        open = 0;
        for c in &mut slow {
            if c.write_all(&[1]).is_ok() {
                open += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(open, 0, "handshakes still open after {:?}", began.elapsed());
    drop(slow);

    // 2. idle Kafka sockets: as many as the attacker can open
    let idle: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", s.kafka_port)).ok())
        .collect();
    figures.push(measure(
        "2,000 idle Kafka sockets",
        &s,
        Duration::from_secs(1),
    ));
    drop(idle);

    // 3. Kafka requests announced at 100 MiB, 16 MiB of each sent, before any login
    let mut big: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.kafka_port)).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut head = (100i32 << 20).to_be_bytes().to_vec();
            head.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
            head.resize(16 << 20, 0);
            // a broker that stops taking the bytes (or closes) is what the bound is for
            let _ = c.write_all(&head);
            c
        })
        .collect();
    figures.push(measure(
        "20 Kafka requests announced at 100 MiB, 16 MiB of each sent",
        &s,
        Duration::from_secs(2),
    ));
    for c in &mut big {
        let _ = c.write_all(&[0; 1024]);
    }
    drop(big);

    // 4. pipelined fetches of everything, never read, on two connections
    topic_with_data(s.kafka_port, "hoard", 32);
    let mut hoard = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", s.kafka_port)).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        for corr in 0..200 {
            if c.write_all(&kafka_request(ApiKey::Fetch, 11, corr, &fetch_all("hoard")))
                .is_err()
            {
                break; // the broker stopped reading: what the bound is for
            }
        }
        hoard.push(c);
    }
    figures.push(measure(
        "2 connections × 200 pipelined fetches of 32 MB, never read",
        &s,
        Duration::from_secs(3),
    ));
    drop(hoard);

    // 5. HTTP bodies announced at 64 MiB to a path that takes none, before any login
    let posts: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
            let _ = c.write_all(
                b"POST /metrics HTTP/1.1\r\nHost: eddy\r\nContent-Length: 67108864\r\n\r\n",
            );
            let _ = c.write_all(&vec![b'x'; 1 << 20]);
            c
        })
        .collect();
    figures.push(measure(
        "20 HTTP bodies of 64 MiB announced to /metrics",
        &s,
        Duration::from_secs(1),
    ));
    drop(posts);

    // after it all, the broker is as it was
    let after = measure("after the attacks", &s, Duration::ZERO);
    assert!(
        after.fds < figures[0].fds + 50,
        "descriptors left open: {} vs {}",
        after.fds,
        figures[0].fds
    );
    figures.push(after);
    println!("\n| attack | peak RSS | peak descriptors | slowest first answer |");
    println!("|---|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {} MB | {} | {} ms |",
            f.attack,
            f.rss >> 20,
            f.fds,
            f.answer.as_millis()
        );
    }
}
