//! What a careless or hostile Kafka client cannot make the front end do, in process: hold
//! response bytes for a client that does not read (past the connection's bound, or the bound
//! all connections share), buffer a large request before a SASL login, keep a request
//! arriving forever, keep an idle socket, or claim another user in `amqp.user-id`.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use eddy_kafka::KafkaConfig;
use eddy_records::BatchBuilder;
use kafka_protocol::messages::*;

const CORRUPT_MESSAGE: i16 = 2;
const INVALID_RECORD: i16 = 87;

/// The topic `t` with one batch holding one record of `size` bytes.
async fn topic_with_a_record(c: &mut Client, size: usize) {
    assert_eq!(c.create_topic("t", 1).await, 0);
    let value = vec![7u8; size];
    assert_eq!(
        c.produce(1, "t", 0, batch(1, &[&value])).await.error_code,
        0
    );
}

/// A fetch of everything from offset 0 of `t`, as large as a client may ask for.
fn greedy_fetch() -> FetchRequest {
    let mut f = fetch("t", 0, 0, 0, 1);
    f.max_bytes = i32::MAX;
    f
}

/// Bytes the server has read from the one connection it has (none: 0).
fn received(f: &Fixture) -> u64 {
    f.broker
        .connections()
        .iter()
        .map(|c| c.recv_oct.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Wait until `cond` holds, for at most `within`.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_its_fetches_stops_being_read() {
    let f = Fixture::with(KafkaConfig {
        max_buffered_per_connection: 1 << 20,
        ..Default::default()
    });
    let mut c = f.connect();
    topic_with_a_record(&mut c, 200 << 10).await;
    let before = received(&f);
    let one = frame(12, 0, c.client_id.as_deref(), &greedy_fetch()).len() as u64;
    // 200 fetches of a 200 KiB response each, none read
    let mut corrs = Vec::new();
    for _ in 0..200 {
        corrs.push(c.send(12, &greedy_fetch()).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = (received(&f) - before) / one;
    // what the in-memory pipe holds (256 KiB), what is held for the client (1 MiB) and the
    // request waiting for room; not the 64 a response queue of that length would take
    assert!(
        read <= 10,
        "{read} of 200 requests read from a client that reads nothing"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((received(&f) - before) / one, read, "reading stays stopped");
    // once the client reads, every fetch is answered, in order
    for corr in corrs {
        let r = c.recv::<FetchRequest>(12, corr).await;
        let records = r.responses[0].partitions[0].records.as_ref().unwrap();
        assert!(records.len() > 200 << 10);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn response_bytes_are_bounded_over_all_connections() {
    let f = Fixture::with(KafkaConfig {
        max_buffered: 1 << 20,
        ..Default::default()
    });
    let mut hog = f.connect();
    topic_with_a_record(&mut hog, 300 << 10).await;
    let mut corrs = Vec::new();
    for _ in 0..50 {
        corrs.push(hog.send(12, &greedy_fetch()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // another connection's fetch finds the shared bound taken: it waits, and small answers
    // still go through
    let mut other = f.connect();
    let meta = other.call(12, &metadata(Some(&["t"]), false)).await;
    assert_eq!(meta.topics[0].error_code, 0);
    let corr = other.send(12, &greedy_fetch()).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), other.read_frame())
            .await
            .is_err(),
        "a fetch was built while responses held the whole bound"
    );
    // the first client reads: the bound frees up and the waiting fetch is answered
    let drain = async {
        for corr in corrs {
            hog.recv::<FetchRequest>(12, corr).await;
        }
    };
    let (_, r) = tokio::join!(drain, other.recv::<FetchRequest>(12, corr));
    assert!(r.responses[0].partitions[0].records.as_ref().unwrap().len() > 300 << 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_holds_no_room_while_it_waits() {
    let f = Fixture::with(KafkaConfig {
        max_buffered: 1 << 20,
        ..Default::default()
    });
    let mut a = f.connect();
    assert_eq!(a.create_topic("quiet", 1).await, 0);
    assert_eq!(a.create_topic("t", 1).await, 0);
    a.produce(1, "t", 0, batch(1, &[b"x"])).await;
    // clients long-polling an empty partition with the largest limits hold nothing while
    // they wait: another's fetch is built at once
    let mut pollers = Vec::new();
    for _ in 0..4 {
        let mut p = f.connect();
        let mut req = fetch("quiet", 0, 0, 3_000, 1);
        req.max_bytes = i32::MAX;
        let corr = p.send(12, &req).await;
        pollers.push((p, corr));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let got = a.fetch("t", 0, 0).await;
    assert!(!got.records.unwrap().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a fetch waited {:?} for long polls to end",
        started.elapsed()
    );
    for (mut p, corr) in pollers {
        let r = p.recv::<FetchRequest>(12, corr).await;
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
    }
}

/// The first 4 + 8 bytes of a request that announces `len` bytes and sends no more.
fn announce(len: i32) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(len);
    out.put_i16(ApiKey::Produce as i16);
    out.put_i16(9);
    out.put_i32(1);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_request_before_a_sasl_login_closes_the_connection() {
    let f = Fixture::new();
    // a SASL login under way: 512 KiB at most, refused from its size alone
    let mut c = f.connect();
    let mut h = SaslHandshakeRequest::default();
    h.mechanism = s("PLAIN");
    assert_eq!(c.call(1, &h).await.error_code, 0);
    c.send_raw(&announce(600 << 10)).await;
    let started = Instant::now();
    c.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // a client that may not act without a login (guest has another password) likewise
    f.broker
        .users()
        .put("guest", Some("changed"), None, vec!["administrator".into()])
        .unwrap();
    let mut c = f.connect();
    c.send_raw(&announce(600 << 10)).await;
    c.expect_closed().await;
    // under the bound it is answered
    let mut c = f.connect();
    assert_eq!(
        c.call(3, &ApiVersionsRequest::default()).await.error_code,
        0
    );
    // logged in, large requests are taken (a 3 MiB produce, its buffer grown as it arrives)
    assert_eq!(c.login("guest", "changed").await, 0);
    assert_eq!(c.create_topic("big", 1).await, 0);
    let value = vec![9u8; 3 << 20];
    let p = c.produce(1, "big", 0, batch(1, &[&value])).await;
    assert_eq!(p.error_code, 0);
    let got = c.fetch("big", 0, 0).await.records.unwrap();
    let records = eddy_records::decode_batch(0, &got).unwrap();
    assert_eq!(records[0].value.as_deref(), Some(&value[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_acting_as_guest_without_sasl_may_send_large_requests() {
    let f = Fixture::new();
    let mut c = f.connect();
    // its first request is small (ApiVersions, Metadata: what every client opens with); a
    // first request over 512 KiB closes the connection, so a client that never spoke holds
    // nothing large
    let mut opener = f.connect();
    opener.send_raw(&announce(600 << 10)).await;
    opener.expect_closed().await;
    assert_eq!(c.create_topic("t", 1).await, 0);
    let value = vec![1u8; 600 << 10];
    assert_eq!(
        c.produce(1, "t", 0, batch(1, &[&value])).await.error_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_must_arrive_in_full_within_the_request_timeout() {
    let f = Fixture::with(KafkaConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let mut c = f.connect();
    assert_eq!(
        c.call(3, &ApiVersionsRequest::default()).await.error_code,
        0
    );
    // announced, then sent a byte at a time: the deadline does not move with each byte
    c.send_raw(&announce(1000)).await;
    let started = Instant::now();
    let dribble = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !c.try_send_raw(&[0]).await {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(600), dribble).await;
    c.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let f = Fixture::with(KafkaConfig {
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    });
    // one that says nothing
    let quiet = f.connect();
    // one that keeps asking, slower than the timeout in total but never idle that long
    let mut busy = f.connect();
    // one whose long poll lasts longer than the timeout
    let mut poller = f.connect();
    assert_eq!(poller.create_topic("t", 1).await, 0);
    let corr = poller.send(12, &fetch("t", 0, 0, 1_000, 1)).await;
    let started = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = busy.call(3, &ApiVersionsRequest::default()).await;
        assert_eq!(r.error_code, 0);
    }
    let r = poller.recv::<FetchRequest>(12, corr).await;
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    quiet.expect_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    // the poller is closed once idle after its answer
    poller.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_takes_no_byte_is_closed_after_the_idle_timeout() {
    let f = Fixture::with(KafkaConfig {
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    });
    let mut c = f.connect();
    topic_with_a_record(&mut c, 200 << 10).await;
    for _ in 0..20 {
        c.send(12, &greedy_fetch()).await;
    }
    // never read: the writer makes no progress, and the connection goes
    assert!(
        eventually(Duration::from_secs(5), || f.broker.connections().is_empty()).await,
        "a connection that takes no response byte stays open"
    );
}

/// A batch of one record carrying these headers.
fn with_headers(headers: &[(&str, Option<&[u8]>)]) -> Bytes {
    let headers: Vec<(String, Option<Bytes>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(Bytes::copy_from_slice)))
        .collect();
    let mut b = BatchBuilder::new();
    b.push(1, 0, None, Some(b"v"), &headers);
    Bytes::from(b.finish())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_may_not_claim_another_user_in_amqp_user_id() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("t", 1).await, 0);
    // as the anonymous guest: guest may be named, nobody else (nor an empty or null value)
    let own = c
        .produce(1, "t", 0, with_headers(&[("amqp.user-id", Some(b"guest"))]))
        .await;
    assert_eq!(own.error_code, 0);
    for forged in [Some(&b"admin"[..]), Some(b""), None] {
        let p = c
            .produce(
                1,
                "t",
                0,
                with_headers(&[("other", Some(b"x")), ("amqp.user-id", forged)]),
            )
            .await;
        assert_eq!(p.error_code, INVALID_RECORD, "{forged:?}");
        let msg = p.error_message.as_ref().unwrap().to_string();
        assert!(msg.contains("amqp.user-id"), "{msg}");
    }
    assert_eq!(
        c.list_offset("t", 0, -1).await.1,
        1,
        "nothing refused is stored"
    );
    // after a SASL login, the logged-in user is the one a record may name
    f.add_user("alice", "pw", Some((".*", ".*", ".*")));
    let mut a = f.connect();
    assert_eq!(a.login("alice", "pw").await, 0);
    let p = a
        .produce(1, "t", 0, with_headers(&[("amqp.user-id", Some(b"alice"))]))
        .await;
    assert_eq!(p.error_code, 0);
    let p = a
        .produce(1, "t", 0, with_headers(&[("amqp.user-id", Some(b"guest"))]))
        .await;
    assert_eq!(p.error_code, INVALID_RECORD);
    // other headers, and a header value that only looks like the name, are not refused
    let p = a
        .produce(1, "t", 0, with_headers(&[("x", Some(b"amqp.user-id"))]))
        .await;
    assert_eq!(p.error_code, 0);
    // records that cannot be read to check are refused too
    let mut bad = with_headers(&[("amqp.user-id", Some(b"mallory"))]).to_vec();
    let n = bad.len();
    bad[n - 8] = 0x7e; // the header value's length, now past the record
    let mut h = eddy_records::BatchHeader::new(&mut bad).unwrap();
    h.update_crc();
    let p = a.produce(1, "t", 0, Bytes::from(bad)).await;
    assert_eq!(p.error_code, CORRUPT_MESSAGE);
    assert_eq!(a.list_offset("t", 0, -1).await.1, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_alarm_holds_producers() {
    // any process holds more than a byte: the memory alarm is raised at the first reading
    let f = Fixture::with_broker(KafkaConfig::default(), |b| b.memory_high_watermark = 1);
    let mut c = f.connect();
    assert_eq!(c.create_topic("held", 1).await, 0);
    let housekeeping = f.broker.spawn_housekeeping();
    let mut alarms = f.broker.alarms();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alarms.borrow_and_update().blocked() {
        assert!(Instant::now() < deadline, "no alarm");
        let _ = tokio::time::timeout(Duration::from_millis(100), alarms.changed()).await;
    }
    // the produce is not answered, and nothing is appended, while the alarm lasts (before,
    // produce ignored the disk alarm and filled a disk)
    let held = tokio::time::timeout(
        Duration::from_millis(700),
        c.produce(1, "held", 0, batch(1, &[b"x"])),
    )
    .await;
    assert!(held.is_err(), "answered during the alarm: {held:?}");
    let mut other = f.connect();
    assert_eq!(other.list_offset("held", 0, -1).await.1, 0);
    housekeeping.abort();
}
