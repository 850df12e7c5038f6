//! lapin (Rust's AMQP client) against a real Eddy: round trips, confirms, and a kill -9 crash
//! test that counts confirmed messages after restart.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Server;
use futures_lite::stream::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

async fn connect(s: &Server) -> Connection {
    Connection::connect(&s.uri(), ConnectionProperties::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack_round_trip() {
    let s = Server::start(&[]);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "lapin-rt".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..500u32 {
        let c = ch
            .basic_publish(
                "".into(),
                "lapin-rt".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    let q = ch
        .queue_declare(
            "lapin-rt".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 500);

    let ch2 = conn.create_channel().await.unwrap();
    ch2.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch2
        .basic_consume(
            "lapin-rt".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut expected = 0u32;
    while expected < 500 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery in time")
            .unwrap()
            .unwrap();
        assert_eq!(
            u32::from_be_bytes(d.data[..4].try_into().unwrap()),
            expected,
            "FIFO order"
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
        expected += 1;
    }
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queue_is_404_and_channel_closes() {
    let s = Server::start(&[]);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "does-not-exist".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("NOT_FOUND") || text.contains("404"), "{text}");
    // the connection survives a channel error
    let ch2 = conn.create_channel().await.unwrap();
    ch2.queue_declare(
        "after-error".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// A publisher streams confirmed persistent messages; Eddy is killed with SIGKILL mid-stream,
/// restarted on the same data dir, and every confirmed message must be consumed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_confirmed_message() {
    let mut s = Server::start(&[]);
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "crash".into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut confirmed: Vec<u64> = Vec::new();
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u64;
    let start = Instant::now();
    // pipeline up to 200 unconfirmed publishes; kill after ~1.5 s of streaming
    loop {
        while in_flight.len() < 200 {
            let body = format!("{next:020}");
            match ch
                .basic_publish(
                    "".into(),
                    "crash".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props.clone(),
                )
                .await
            {
                Ok(pc) => in_flight.push_back((next, pc)),
                Err(_) => break,
            }
            next += 1;
        }
        if start.elapsed() > Duration::from_millis(1500) {
            break;
        }
        let (id, pc) = in_flight.pop_front().unwrap();
        if pc.await.map(|c| c.is_ack()).unwrap_or(false) {
            confirmed.push(id);
        }
    }
    // drain confirms that already arrived, then kill while others are in flight
    while let Some((id, pc)) = in_flight.pop_front() {
        match tokio::time::timeout(Duration::from_millis(1), pc).await {
            Ok(Ok(c)) if c.is_ack() => confirmed.push(id),
            _ => break,
        }
    }
    s.kill9();
    drop(in_flight);
    // the server is gone: do not wait for a close-ok that cannot come
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(0, "".into())).await;
    drop(conn);
    assert!(
        confirmed.len() > 100,
        "the publisher should have had many confirms, got {}",
        confirmed.len()
    );

    s.restart();
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    let mut seen = HashSet::new();
    while let Some(m) = ch
        .basic_get("crash".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id: u64 = std::str::from_utf8(&m.delivery.data)
            .unwrap()
            .parse()
            .unwrap();
        seen.insert(id);
    }
    let lost: Vec<u64> = confirmed
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    eprintln!(
        "crash test: confirmed={} recovered={} lost={}",
        confirmed.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} confirmed messages, e.g. {:?}\nserver log:\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        s.log_text()
    );
}
