//! Broker-core tests through the protocol-neutral API (no front end, no sockets).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;

use crate::vhost::{ExchangeDeclare, QueueDeclare};
use crate::{BasicProperties, Broker, BrokerConfig, BrokerError, FsyncPolicy, Message};

fn open(dir: &std::path::Path, segment_bytes: u64) -> Broker {
    Broker::open(BrokerConfig {
        data_dir: dir.to_owned(),
        fsync: FsyncPolicy::Never,
        segment_bytes,
        ..BrokerConfig::default()
    })
    .unwrap()
}

fn exchange(name: &str, kind: &str, auto_delete: bool) -> ExchangeDeclare {
    ExchangeDeclare {
        name: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete,
        internal: false,
        arguments: FieldTable::default(),
    }
}

fn queue(name: &str, durable: bool, arguments: FieldTable) -> QueueDeclare {
    QueueDeclare {
        name: name.into(),
        durable,
        arguments,
        ..QueueDeclare::default()
    }
}

/// Run the queue's housekeeping tick (expiry, compaction) in a loop on another thread until
/// the flag is set.
fn spin_ticks(q: &Arc<crate::Queue>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                q.tick(Instant::now());
            }
        })
    };
    (stop, ticker)
}

fn msg(rk: &str, body: &[u8], persistent: bool) -> Arc<Message> {
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    Arc::new(Message::new("", rk, props, Bytes::copy_from_slice(body)))
}

/// A chain of 3,000 auto-delete exchanges collapses when the queue at its end goes: as a
/// loop (recursion this deep overflows a thread's stack).
#[test]
fn auto_delete_exchange_chain_collapses_without_recursion() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let v = b.vhost("/").unwrap();
    let n = 3_000;
    for i in 0..n {
        v.declare_exchange(exchange(&format!("x{i}"), "fanout", true))
            .unwrap();
    }
    for i in 0..n - 1 {
        v.bind_exchange(
            &format!("x{i}"),
            &format!("x{}", i + 1),
            "",
            FieldTable::default(),
        )
        .unwrap();
    }
    v.declare_queue(queue("end", false, FieldTable::default()), 1)
        .unwrap();
    v.bind_queue("end", "x0", "", FieldTable::default(), 1)
        .unwrap();
    // the chain routes end to end
    assert!(
        v.publish(&format!("x{}", n - 1), msg("", b"far", false))
            .unwrap()
            .routed
    );
    // run it on a thread with a small stack to be sure nothing recurses per link
    let v2 = v.clone();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || v2.delete_queue("end", false, false, 1).unwrap())
        .unwrap()
        .join()
        .unwrap();
    assert!(v.exchanges().iter().all(|e| !e.name.starts_with('x')));
}

/// Ten queues that dead-letter (TTL 0, no consumers) into the fan-out they are bound to: every
/// death fans out to the queues the message has not died in yet — factorial growth. The
/// cascade is cut off instead of running for hours.
#[test]
fn dead_letter_fan_out_cascade_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let v = b.vhost("/").unwrap();
    v.declare_exchange(exchange("boom", "fanout", false))
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("boom")),
    );
    for i in 0..10 {
        let name = format!("q{i}");
        v.declare_queue(queue(&name, false, args.clone()), 1)
            .unwrap();
        v.bind_queue(&name, "boom", "", FieldTable::default(), 1)
            .unwrap();
    }
    let t = Instant::now();
    v.publish("boom", msg("", b"seed", false)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(b.memory_used(), 0, "nothing is left queued");
}

/// The bound is on what dead letters set off, not on one operation's own dead letters: a
/// reject of many messages dead-letters every one of them.
#[test]
fn rejecting_many_messages_dead_letters_all_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let v = b.vhost("/").unwrap();
    v.declare_queue(queue("dlq", false, FieldTable::default()), 1)
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from("dlq")),
    );
    v.declare_queue(queue("work", false, args), 1).unwrap();
    let n = 5_000;
    for i in 0..n {
        v.publish("", msg("work", format!("{i}").as_bytes(), false))
            .unwrap();
    }
    let work = v.queue("work").unwrap();
    let ids: Vec<u64> = (0..n)
        .map(|_| work.get(false).unwrap().message_id)
        .collect();
    work.reject(&ids, false);
    let dlq = v.queue("dlq").unwrap();
    assert_eq!(dlq.counts().ready, n as u64);
    let first = dlq.get(true).unwrap();
    assert_eq!(&first.message.body[..], b"0", "in order");
}

#[test]
fn non_finite_numbers_in_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let v = b.vhost("/").unwrap();
    let mut args = FieldTable::default();
    args.insert("x-weird".into(), AMQPValue::Double(f64::NAN));
    let e = v
        .declare_queue(queue("nan", true, args.clone()), 1)
        .unwrap_err();
    assert!(matches!(e, BrokerError::PreconditionFailed(_)), "{e}");
    let mut x = exchange("nan-x", "direct", false);
    x.durable = true;
    x.arguments = args.clone();
    assert!(v.declare_exchange(x).is_err());
    drop(v);
    b.shutdown();
    drop(b);
    // nothing unreadable was stored: the broker starts again
    let b = open(dir.path(), 1 << 20);
    assert!(b.vhost("/").unwrap().queue("nan").is_none());
}

/// Persistent publishes, acks and log compaction (segments of 4 KiB, so compaction runs all
/// the time) race each other; after a restart every message not yet acknowledged is back.
#[test]
fn compaction_racing_publishes_never_loses_a_live_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 4096);
    let v = b.vhost("/").unwrap();
    v.declare_queue(queue("busy", true, FieldTable::default()), 1)
        .unwrap();
    let q = v.queue("busy").unwrap();
    let (stop, ticker) = spin_ticks(&q);
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let v = v.clone();
            std::thread::spawn(move || {
                for i in 0..3000u32 {
                    let body = format!("{p}-{i:05}");
                    v.publish("", msg("busy", body.as_bytes(), true)).unwrap();
                }
            })
        })
        .collect();
    // a consumer acks most of what it takes and keeps every tenth unacknowledged
    let mut acked = std::collections::HashSet::new();
    let mut held = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() + held < 6000 && Instant::now() < deadline {
        match q.get(false) {
            Some(r) => {
                if r.message_id % 10 == 0 {
                    held += 1;
                } else {
                    acked.insert(r.message.body.clone());
                    q.ack(&[r.message_id]);
                }
            }
            None => std::thread::yield_now(),
        }
    }
    for p in publishers {
        p.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    assert_eq!(acked.len() + held, 6000);
    drop((q, v));
    b.shutdown();
    drop(b);
    let b = open(dir.path(), 4096);
    let q = b.vhost("/").unwrap().queue("busy").unwrap();
    let mut back = std::collections::HashSet::new();
    while let Some(r) = q.get(true) {
        assert!(r.redelivered);
        back.insert(r.message.body.clone());
    }
    assert_eq!(
        back.len(),
        held,
        "every unacknowledged message, and only those, came back"
    );
    assert!(back.is_disjoint(&acked));
}

/// The compaction tick spins while a publisher sends one persistent message at a time and the
/// consumer acknowledges it at once, so the queue keeps emptying and compaction deletes all it
/// may: a message's record must still be in the log from the moment its publish returns.
#[test]
fn compaction_never_deletes_a_record_whose_publish_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1024);
    let v = b.vhost("/").unwrap();
    v.declare_queue(queue("tight", true, FieldTable::default()), 1)
        .unwrap();
    let q = v.queue("tight").unwrap();
    let (stop, ticker) = spin_ticks(&q);
    for i in 0..20_000u32 {
        let out = v.publish("", msg("tight", &i.to_be_bytes(), true)).unwrap();
        let (log, end) = out.durable[0].clone();
        let batches = log.read(end - 1, 1).unwrap();
        assert!(
            batches.first().is_some_and(|b| b.base_offset == end - 1),
            "record {} of message {i} was compacted away while its message was live",
            end - 1
        );
        let r = q.get(false).unwrap();
        q.ack(&[r.message_id]);
    }
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
}

#[test]
fn a_data_directory_takes_one_broker_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let e = Broker::open(BrokerConfig {
        data_dir: dir.path().to_owned(),
        ..BrokerConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("in use by another eddy"), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    // released with the broker
    b.shutdown();
    drop(b);
    let b = open(dir.path(), 1 << 20);
    drop(b);
}

/// A topic creation that fails part-way (here a partition's directory cannot be made) leaves
/// none of the partition directories it made behind, and the name can be created afterwards.
#[test]
fn a_failed_topic_creation_leaves_no_partition_directories() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), 1 << 20);
    let topic_dir = dir.path().join("topics").join("half");
    std::fs::create_dir_all(&topic_dir).unwrap();
    // partition 70 of 100 cannot have its directory: a file is in the way
    std::fs::write(topic_dir.join("70"), b"in the way").unwrap();
    assert!(b
        .create_topic("half", 100, crate::TopicConfig::default())
        .is_err());
    assert!(b.topic("half").is_none());
    assert!(
        !topic_dir.exists(),
        "left behind: {} entries",
        std::fs::read_dir(&topic_dir).map_or(0, |d| d.count())
    );
    let t = b
        .create_topic("half", 100, crate::TopicConfig::default())
        .unwrap();
    assert_eq!(t.partition_count(), 100);
}
