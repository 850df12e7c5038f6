//! Behaviour fixed while the front end was reshaped, each as RabbitMQ does it: a connection
//! error waits for the client's close-ok; durable queues take any valid name, however long its
//! file-safe form; an exclusive mismatch on redeclare is 405; the handshake has an absolute
//! deadline, however slowly its bytes trickle in.

#[macro_use]
mod common;

use std::time::Duration;

use amq_protocol::protocol::{connection, queue, AMQPClass};
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_error_waits_for_close_ok() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    c.method(5, queue_declare("x")).await; // 504: channel never opened
    let close = expect!(c, 0, AMQPClass::Connection(connection::AMQPMethod::Close(cl)) => cl);
    assert_eq!(close.reply_code, 504);
    // the server is still there to take close-ok (its grace period is 2 s)
    let early = tokio::time::timeout(Duration::from_millis(500), c.next_frame()).await;
    assert!(
        early.is_err(),
        "the server ended the connection before close-ok: {early:?}"
    );
    c.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    c.expect_eof().await;
    drop(c);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_queues_take_any_valid_name() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    for name in [
        "é".repeat(50),
        "!".repeat(100),
        "队列".repeat(20),
        "é".repeat(127),
    ] {
        let reply = c
            .rpc(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    durable: true,
                    ..declare_queue(&name)
                })),
            )
            .await;
        assert!(
            matches!(&reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) if ok.queue.as_str() == name),
            "{} bytes: {reply:?}",
            name.len()
        );
    }
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_mismatch_on_redeclare_is_resource_locked() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let excl = |name: &str, exclusive: bool| {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            exclusive,
            ..declare_queue(name)
        }))
    };
    assert!(matches!(
        c.rpc(1, excl("owned", true)).await,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    assert!(matches!(
        c.rpc(1, excl("shared", false)).await,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    for (name, exclusive) in [("owned", false), ("shared", true)] {
        c.method(1, excl(name, exclusive)).await;
        let close = c.expect_channel_close(1).await;
        assert_eq!(close.code, 405, "{name}: {close:?}");
        c.open_channel(1).await;
    }
    // exclusive access is checked before the other properties: durable flipped too is 405
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            durable: true,
            ..declare_queue("owned")
        })),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.code, 405, "{close:?}");
    c.open_channel(1).await;
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_trickled_byte_by_byte_is_cut_at_its_deadline() {
    let mut f = Fixture::new();
    let began = std::time::Instant::now();
    let mut c = f.connect_raw_with_deadline(Duration::from_millis(600));
    c.start().await;
    // a start-ok that never ends: one byte every 100 ms kept a connection in its handshake
    // forever when the timeout restarted on every read
    let mut closed = false;
    for _ in 0..100 {
        if c.try_send_raw(&[1]).await.is_err() {
            closed = true;
            break;
        }
        if tokio::time::timeout(Duration::from_millis(100), c.next_frame())
            .await
            .is_ok_and(|f| f.is_none())
        {
            closed = true;
            break;
        }
    }
    let took = began.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    drop(c);
    f.finish().await;
}
