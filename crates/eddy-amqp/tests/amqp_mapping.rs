//! How AMQP methods map onto the broker, tested in process: the AMQP handler serves an
//! in-memory connection against a real broker on a temporary directory, and a small client
//! checks every reply frame by frame.

#[macro_use]
mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, exchange, queue, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;

fn props() -> BasicProperties {
    BasicProperties::default()
}

/// A deliver on `ch` with its content: (deliver, body).
async fn expect_deliver(c: &mut Client, ch: u16) -> (basic::Deliver, Vec<u8>) {
    let d = expect!(c, ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d);
    let (_, body) = c.recv_content(ch).await;
    (d, body)
}

/// basic.get that must answer get-ok: (get-ok, body).
async fn get_ok(c: &mut Client, ch: u16, q: &str, no_ack: bool) -> (basic::GetOk, Vec<u8>) {
    c.method(ch, get(q, no_ack)).await;
    let g = expect!(c, ch, AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => g);
    let (_, body) = c.recv_content(ch).await;
    (g, body)
}

async fn get_empty(c: &mut Client, ch: u16, q: &str) {
    c.method(ch, get(q, true)).await;
    expect!(c, ch, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => ());
}

async fn declare(c: &mut Client, ch: u16, q: &str) -> queue::DeclareOk {
    c.method(ch, queue_declare(q)).await;
    expect!(c, ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok)
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_advertises_protocol_and_limits() {
    let mut f = Fixture::new();
    let mut c = f.connect_raw();
    let start = c.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms.to_string(), "PLAIN AMQPLAIN");
    assert_eq!(start.locales.to_string(), "en_US");
    let caps = match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("capabilities: {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
    c.start_ok_plain("guest", "guest").await;
    let tune = c.expect_tune().await;
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, FRAME_MAX, 60)
    );
    c.tune_ok(0, FRAME_MAX, 0).await;
    c.method(0, open("/")).await;
    expect!(c, 0, AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::OpenOk(_)) => ());
    c.open_channel(1).await;
    c.open_channel(2047).await;
    // the broker lists the connection with its user, vhost and channels
    let conns = f.broker.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].user(), "guest");
    assert_eq!(conns[0].vhost(), "/");
    assert_eq!(conns[0].channels(), vec![1, 2047]);
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_declare_named_server_named_and_passive() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;

    let ok = declare(&mut c, 1, "named").await;
    assert_eq!(
        (ok.queue.as_str(), ok.message_count, ok.consumer_count),
        ("named", 0, 0)
    );
    for body in [b"a", b"b"] {
        c.publish(1, "", "named", body, props(), false).await;
    }
    // an equivalent redeclare answers with the current counts
    let ok = declare(&mut c, 1, "named").await;
    assert_eq!((ok.queue.as_str(), ok.message_count), ("named", 2));
    // passive: found, with counts (consumers included)
    c.method(1, consume("named", "ctag", false)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => assert_eq!(ok.consumer_tag.as_str(), "ctag"));
    expect_deliver(&mut c, 1).await;
    expect_deliver(&mut c, 1).await;
    assert_eq!(c.queue_counts(1, "named").await, (0, 1));

    // server-named: amq.gen- and 22 characters, found by a passive declare afterwards
    let ok = declare(&mut c, 1, "").await;
    let name = ok.queue.to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert_eq!(name.len(), "amq.gen-".len() + 22, "{name}");
    assert_eq!(c.queue_counts(1, &name).await, (0, 0));
    let other = declare(&mut c, 1, "").await;
    assert_ne!(other.queue, ok.queue, "each server-named queue is new");

    // passive, not found: 404 on the channel, which can be opened again
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            passive: true,
            ..declare_queue("absent")
        })),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        close,
        Close {
            code: 404,
            text: "NOT_FOUND - no queue 'absent' in vhost '/'".into(),
            class_id: 50,
            method_id: 10
        }
    );
    c.open_channel(1).await;
    // the consumer went with the channel
    assert_eq!(c.queue_counts(1, "named").await, (2, 0));
    c.close().await;
    f.finish().await;
}

/// (type, binding key, binding arguments, a publish routed, one not routed: (routing key,
/// properties))
type RoutingCase = (
    &'static str,
    &'static str,
    FieldTable,
    (&'static str, BasicProperties),
    Option<(&'static str, BasicProperties)>,
);

#[tokio::test(flavor = "multi_thread")]
async fn exchange_declare_each_type_routes_by_its_kind() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let headers_all = table(&[
        ("x-match", long_str("all")),
        ("h", long_str("1")),
        ("g", long_str("2")),
    ]);
    let with_headers = |h: &[(&str, &str)]| {
        let t = table(&h.iter().map(|(k, v)| (*k, long_str(v))).collect::<Vec<_>>());
        props().with_headers(t)
    };
    let cases: Vec<RoutingCase> = vec![
        (
            "direct",
            "k1",
            FieldTable::default(),
            ("k1", props()),
            Some(("k2", props())),
        ),
        // fanout ignores the key: nothing bound goes unrouted
        (
            "fanout",
            "ignored",
            FieldTable::default(),
            ("anything", props()),
            None,
        ),
        (
            "topic",
            "a.*.c.#",
            FieldTable::default(),
            ("a.b.c.d.e", props()),
            Some(("a.b.d", props())),
        ),
        (
            "headers",
            "",
            headers_all,
            ("", with_headers(&[("h", "1"), ("g", "2"), ("x", "y")])),
            Some(("", with_headers(&[("h", "1")]))),
        ),
    ];
    for (kind, key, args, (routed_key, routed_props), unrouted) in cases {
        let ex = format!("ex-{kind}");
        let q = format!("q-{kind}");
        let reply = c.rpc(1, exchange_declare(&ex, kind)).await;
        assert!(
            matches!(
                reply,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
            ),
            "{kind}: {reply:?}"
        );
        // equivalent redeclare and passive declare
        let reply = c.rpc(1, exchange_declare(&ex, kind)).await;
        assert!(
            matches!(
                reply,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
            ),
            "{kind}: {reply:?}"
        );
        let passive = AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            passive: true,
            kind: "".into(),
            ..declare_exchange(&ex, kind)
        }));
        let reply = c.rpc(1, passive).await;
        assert!(
            matches!(
                reply,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
            ),
            "{kind}: {reply:?}"
        );
        declare(&mut c, 1, &q).await;
        let bind = AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: q.as_str().into(),
            exchange: ex.as_str().into(),
            routing_key: key.into(),
            nowait: false,
            arguments: args,
        }));
        let reply = c.rpc(1, bind).await;
        assert!(
            matches!(reply, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))),
            "{kind}: {reply:?}"
        );

        // unrouted (mandatory) comes back; routed reaches the queue
        if let Some((unrouted_key, unrouted_props)) = unrouted {
            c.publish(1, &ex, unrouted_key, b"lost", unrouted_props, true)
                .await;
            let r = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => r);
            assert_eq!(
                (r.reply_code, r.reply_text.as_str()),
                (312, "NO_ROUTE"),
                "{kind}"
            );
            assert_eq!(
                (r.exchange.as_str(), r.routing_key.as_str()),
                (ex.as_str(), unrouted_key)
            );
            assert_eq!(c.recv_content(1).await.1, b"lost");
        }
        c.publish(1, &ex, routed_key, kind.as_bytes(), routed_props, true)
            .await;
        let (g, body) = get_ok(&mut c, 1, &q, true).await;
        assert_eq!(body, kind.as_bytes());
        assert_eq!(
            (g.exchange.as_str(), g.routing_key.as_str()),
            (ex.as_str(), routed_key)
        );
        get_empty(&mut c, 1, &q).await;
    }

    // a redeclare with another type is refused, naming both
    c.method(1, exchange_declare("ex-direct", "fanout")).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.code, 406);
    assert_eq!(close.text, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex-direct' in vhost '/': received 'fanout' but current is 'direct'");
    assert_eq!((close.class_id, close.method_id), (40, 10));
    c.open_channel(1).await;

    // exchange.delete, then the exchange is gone
    let del = AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
        exchange: "ex-fanout".into(),
        if_unused: false,
        nowait: false,
    }));
    let reply = c.rpc(1, del).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_))
        ),
        "{reply:?}"
    );
    c.publish(1, "ex-fanout", "", b"x", props(), false).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.text.as_str()),
        (404, "NOT_FOUND - no exchange 'ex-fanout' in vhost '/'")
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_bind_unbind_and_exchange_bind() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    for (name, kind) in [("src", "direct"), ("dst", "fanout")] {
        let reply = c.rpc(1, exchange_declare(name, kind)).await;
        assert!(matches!(
            reply,
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
        ));
    }
    declare(&mut c, 1, "bq").await;
    let reply = c.rpc(1, queue_bind("bq", "dst", "")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))),
        "{reply:?}"
    );
    let ebind = AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: "dst".into(),
        source: "src".into(),
        routing_key: "k".into(),
        nowait: false,
        arguments: FieldTable::default(),
    }));
    let reply = c.rpc(1, ebind).await;
    assert!(
        matches!(reply, AMQPClass::Exchange(exchange::AMQPMethod::BindOk(_))),
        "{reply:?}"
    );

    // src --k--> dst --> bq
    c.publish(1, "src", "k", b"via-e2e", props(), true).await;
    let (g, body) = get_ok(&mut c, 1, "bq", true).await;
    assert_eq!(body, b"via-e2e");
    assert_eq!((g.exchange.as_str(), g.routing_key.as_str()), ("src", "k"));
    c.publish(1, "src", "other", b"no", props(), true).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => assert_eq!(r.reply_code, 312));
    c.recv_content(1).await;

    let eunbind = AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
        destination: "dst".into(),
        source: "src".into(),
        routing_key: "k".into(),
        nowait: false,
        arguments: FieldTable::default(),
    }));
    let reply = c.rpc(1, eunbind).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(_))
        ),
        "{reply:?}"
    );
    c.publish(1, "src", "k", b"unbound", props(), true).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => assert_eq!(r.routing_key.as_str(), "k"));
    c.recv_content(1).await;

    // the queue binding still works until queue.unbind
    c.publish(1, "dst", "", b"direct-to-dst", props(), true)
        .await;
    assert_eq!(get_ok(&mut c, 1, "bq", true).await.1, b"direct-to-dst");
    let reply = c.rpc(1, queue_unbind("bq", "dst", "")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_))),
        "{reply:?}"
    );
    c.publish(1, "dst", "", b"gone", props(), true).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => assert_eq!(r.exchange.as_str(), "dst"));
    c.recv_content(1).await;
    get_empty(&mut c, 1, "bq").await;
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_then_consume_delivers_after_consume_ok_in_tag_order() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "work").await;
    let reply = c.rpc(1, queue_bind("work", "amq.direct", "rk-x")).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::BindOk(_))
    ));
    let headers = table(&[("n", AMQPValue::LongInt(7)), ("s", long_str("v"))]);
    let p = props()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_message_id("id-1".into())
        .with_headers(headers.clone());
    for body in [&b"m1"[..], b"m2", b"m3"] {
        c.publish(1, "", "work", body, p.clone(), false).await;
    }
    c.method(1, consume("work", "", false)).await;
    let tag = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => ok.consumer_tag.to_string());
    assert!(tag.starts_with("amq.ctag-"), "{tag}");
    for (i, want) in [&b"m1"[..], b"m2", b"m3"].into_iter().enumerate() {
        let d = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d);
        assert_eq!(d.delivery_tag, i as u64 + 1);
        assert_eq!(d.consumer_tag.as_str(), tag);
        assert!(!d.redelivered);
        assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", "work"));
        let (got_props, body) = c.recv_content(1).await;
        assert_eq!(body, want);
        assert_eq!(got_props, p, "properties round trip");
    }
    // while consuming: through a named exchange, and a body over several frames
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.publish(1, "amq.direct", "rk-x", &big, props(), false)
        .await;
    let d = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d);
    assert_eq!(d.delivery_tag, 4);
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("amq.direct", "rk-x")
    );
    let (_, body) = c.recv_content(1).await;
    assert_eq!(body, big);
    // an empty body has a header and no body frame
    c.publish(1, "", "work", b"", props(), false).await;
    let d = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d);
    assert_eq!(d.delivery_tag, 5);
    assert_eq!(c.recv_content(1).await.1, b"");

    c.method(1, ack(5, true)).await;
    assert_eq!(c.queue_counts(1, "work").await, (0, 1));
    let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: tag.as_str().into(),
        nowait: false,
    }));
    let reply = c.rpc(1, cancel).await;
    assert!(
        matches!(&reply, AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok)) if ok.consumer_tag.as_str() == tag),
        "{reply:?}"
    );
    assert_eq!(c.queue_counts(1, "work").await, (0, 0));
    // after cancel nothing is delivered; the message waits in the queue
    c.publish(1, "", "work", b"later", props(), false).await;
    assert_eq!(c.queue_counts(1, "work").await, (1, 0));
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_nack_requeue_and_reject() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "settle").await;
    for body in [&b"one"[..], b"two", b"three"] {
        c.publish(1, "", "settle", body, props(), false).await;
    }
    c.method(1, consume("settle", "c", false)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    for (tag, body) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
        let (d, b) = expect_deliver(&mut c, 1).await;
        assert_eq!((d.delivery_tag, b.as_slice()), (tag, body));
    }
    c.method(1, ack(1, false)).await;
    // nack with requeue: redelivered at once, with a new tag and the redelivered flag
    c.method(1, nack(2, false, true)).await;
    let (d, b) = expect_deliver(&mut c, 1).await;
    assert_eq!(
        (d.delivery_tag, d.redelivered, b.as_slice()),
        (4, true, &b"two"[..])
    );
    // reject without requeue drops the message
    c.method(1, reject(3, false)).await;
    // reject with requeue brings it back
    c.method(1, reject(4, true)).await;
    let (d, b) = expect_deliver(&mut c, 1).await;
    assert_eq!(
        (d.delivery_tag, d.redelivered, b.as_slice()),
        (5, true, &b"two"[..])
    );
    c.method(1, ack(5, false)).await;
    assert_eq!(c.queue_counts(1, "settle").await, (0, 1));

    // multiple: nack up to a tag drops everything before it too
    for body in [&b"x"[..], b"y", b"z"] {
        c.publish(1, "", "settle", body, props(), false).await;
    }
    for tag in 6..=8 {
        assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, tag);
    }
    c.method(1, nack(7, true, false)).await;
    c.method(1, ack(8, false)).await;
    assert_eq!(c.queue_counts(1, "settle").await, (0, 1));
    // a settled tag is unknown now: 406 on the channel
    c.method(1, ack(8, false)).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        close,
        Close {
            code: 406,
            text: "PRECONDITION_FAILED - unknown delivery tag 8".into(),
            class_id: 60,
            method_id: 80
        }
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_get_counts_and_get_empty() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "g").await;
    get_empty(&mut c, 1, "g").await;
    for body in [&b"1"[..], b"2", b"3"] {
        c.publish(1, "", "g", body, props(), false).await;
    }
    let (g, b) = get_ok(&mut c, 1, "g", false).await;
    assert_eq!(
        (g.delivery_tag, g.message_count, g.redelivered, b.as_slice()),
        (1, 2, false, &b"1"[..])
    );
    assert_eq!((g.exchange.as_str(), g.routing_key.as_str()), ("", "g"));
    let (g, b) = get_ok(&mut c, 1, "g", true).await;
    assert_eq!(
        (g.delivery_tag, g.message_count, b.as_slice()),
        (2, 1, &b"2"[..])
    );
    let (g, b) = get_ok(&mut c, 1, "g", false).await;
    assert_eq!(
        (g.delivery_tag, g.message_count, b.as_slice()),
        (3, 0, &b"3"[..])
    );
    get_empty(&mut c, 1, "g").await;
    // requeued: the next get has it again, redelivered, with the next tag
    c.method(1, reject(1, true)).await;
    let (g, b) = get_ok(&mut c, 1, "g", false).await;
    assert_eq!(
        (g.delivery_tag, g.redelivered, g.message_count, b.as_slice()),
        (4, true, 0, &b"1"[..])
    );
    c.method(1, ack(4, true)).await;
    // nothing unacked is left: tag 3 went with the multiple ack
    assert_eq!(c.queue_counts(1, "g").await, (0, 0));
    c.method(1, ack(3, false)).await;
    assert_eq!(c.expect_channel_close(1).await.code, 406);
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_prefetch_limits_deliveries() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "pf").await;
    for i in 0..5u8 {
        c.publish(1, "", "pf", &[i], props(), false).await;
    }
    let reply = c.rpc(1, qos(2, false)).await;
    assert!(
        matches!(reply, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))),
        "{reply:?}"
    );
    c.method(1, consume("pf", "c", false)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, 1);
    assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, 2);
    // the reply comes next, not a third delivery: three wait
    assert_eq!(c.queue_counts(1, "pf").await, (3, 1));
    c.method(1, ack(1, false)).await;
    assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, 3);
    assert_eq!(c.queue_counts(1, "pf").await, (2, 1));
    c.method(1, ack(3, true)).await;
    assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, 4);
    assert_eq!(expect_deliver(&mut c, 1).await.0.delivery_tag, 5);
    c.method(1, ack(5, true)).await;
    assert_eq!(c.queue_counts(1, "pf").await, (0, 1));

    // global: one limit for the channel's consumers of two queues
    c.open_channel(2).await;
    let reply = c.rpc(2, qos(1, true)).await;
    assert!(
        matches!(reply, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))),
        "{reply:?}"
    );
    for q in ["ga", "gb"] {
        declare(&mut c, 2, q).await;
        c.publish(2, "", q, q.as_bytes(), props(), false).await;
    }
    c.method(2, consume("ga", "ca", false)).await;
    expect!(c, 2, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    let (d, _) = expect_deliver(&mut c, 2).await;
    assert_eq!((d.delivery_tag, d.consumer_tag.as_str()), (1, "ca"));
    c.method(2, consume("gb", "cb", false)).await;
    expect!(c, 2, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    assert_eq!(c.queue_counts(2, "gb").await, (1, 1));
    c.method(2, ack(1, false)).await;
    let (d, b) = expect_deliver(&mut c, 2).await;
    assert_eq!(
        (d.delivery_tag, d.consumer_tag.as_str(), b.as_slice()),
        (2, "cb", &b"gb"[..])
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_and_delete_report_message_counts() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "pq").await;
    for i in 0..4u8 {
        c.publish(1, "", "pq", &[i], props(), false).await;
    }
    // one delivered and unacknowledged: purge counts only the ready ones
    get_ok(&mut c, 1, "pq", false).await;
    let purge = |q: &str| {
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: q.into(),
            nowait: false,
        }))
    };
    let reply = c.rpc(1, purge("pq")).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                message_count: 3
            }))
        ),
        "{reply:?}"
    );
    let reply = c.rpc(1, purge("pq")).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                message_count: 0
            }))
        ),
        "{reply:?}"
    );
    c.method(1, ack(1, false)).await;
    for i in 0..2u8 {
        c.publish(1, "", "pq", &[i], props(), false).await;
    }
    let delete = |q: &str| {
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: q.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        }))
    };
    let reply = c.rpc(1, delete("pq")).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: 2
            }))
        ),
        "{reply:?}"
    );
    // a missing queue: delete-ok with 0, as RabbitMQ
    let reply = c.rpc(1, delete("pq")).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: 0
            }))
        ),
        "{reply:?}"
    );
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            passive: true,
            ..declare_queue("pq")
        })),
    )
    .await;
    assert_eq!(c.expect_channel_close(1).await.code, 404);
    c.close().await;
    f.finish().await;
}

/// Confirms up to `last`: (tag, nack) for every tag once, in order, `multiple` acks expanded.
async fn confirms(c: &mut Client, ch: u16, from: u64, last: u64) -> Vec<(u64, bool)> {
    let mut out: Vec<(u64, bool)> = Vec::new();
    let mut next = from;
    while next <= last {
        match c.recv_method(ch).await {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                assert!(
                    a.delivery_tag >= next,
                    "ack {} repeats a confirm",
                    a.delivery_tag
                );
                let first = if a.multiple { next } else { a.delivery_tag };
                assert_eq!(first, next, "confirm skipped before {}", a.delivery_tag);
                for t in first..=a.delivery_tag {
                    out.push((t, false));
                }
                next = a.delivery_tag + 1;
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                assert_eq!((n.delivery_tag, n.multiple), (next, false));
                out.push((n.delivery_tag, true));
                next += 1;
            }
            other => panic!("expected a confirm, got {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn confirm_select_acks_publishes_in_order() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let durable = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        durable: true,
        ..declare_queue("cq")
    }));
    let reply = c.rpc(1, durable).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    let reply = c.rpc(1, confirm_select()).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::SelectOk(_))
        ),
        "{reply:?}"
    );
    // persistent messages to a durable queue: acked once written
    for i in 0..3u8 {
        c.publish(1, "", "cq", &[i], props().with_delivery_mode(2), false)
            .await;
    }
    assert_eq!(
        confirms(&mut c, 1, 1, 3).await,
        vec![(1, false), (2, false), (3, false)]
    );
    assert_eq!(c.queue_counts(1, "cq").await, (3, 0));
    // a mandatory unroutable message: basic.return first, then its ack
    c.publish(1, "amq.direct", "nowhere", b"r", props(), true)
        .await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => assert_eq!(r.reply_code, 312));
    c.recv_content(1).await;
    assert_eq!(confirms(&mut c, 1, 4, 4).await, vec![(4, false)]);
    // a queue that rejects publishes when full: nack
    let limited = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        arguments: table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", long_str("reject-publish")),
        ]),
        ..declare_queue("full")
    }));
    let reply = c.rpc(1, limited).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    c.publish(1, "", "full", b"fits", props(), false).await;
    c.publish(1, "", "full", b"rejected", props(), false).await;
    assert_eq!(confirms(&mut c, 1, 5, 6).await, vec![(5, false), (6, true)]);
    // select again: still in confirm mode, tags go on
    let reply = c.rpc(1, confirm_select()).await;
    assert!(matches!(reply, AMQPClass::Confirm(_)), "{reply:?}");
    c.publish(1, "", "cq", b"7", props(), false).await;
    assert_eq!(confirms(&mut c, 1, 7, 7).await, vec![(7, false)]);
    // a channel in confirm mode cannot become transactional
    c.method(1, tx_select()).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        close,
        Close {
            code: 406,
            text: "PRECONDITION_FAILED - cannot switch from confirm to tx mode".into(),
            class_id: 90,
            method_id: 10
        }
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tx_select_commit_and_rollback() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "tq").await;
    c.open_channel(2).await;
    let reply = c.rpc(1, tx_select()).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::SelectOk(_))
        ),
        "{reply:?}"
    );
    // a publish is held until commit
    c.publish(1, "", "tq", b"rolled-back", props(), false).await;
    assert_eq!(c.queue_counts(2, "tq").await, (0, 0));
    let reply = c.rpc(1, tx_rollback()).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::RollbackOk(_))
        ),
        "{reply:?}"
    );
    assert_eq!(c.queue_counts(2, "tq").await, (0, 0));
    c.publish(1, "", "tq", b"committed", props(), false).await;
    c.publish(1, "", "tq", b"committed-2", props(), false).await;
    assert_eq!(c.queue_counts(2, "tq").await, (0, 0));
    let reply = c.rpc(1, tx_commit()).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::CommitOk(_))
        ),
        "{reply:?}"
    );
    assert_eq!(c.queue_counts(2, "tq").await, (2, 0));

    // acks are held too: a rolled-back ack leaves the message unacked (requeued when the
    // channel closes), a committed one removes it
    let (g, _) = get_ok(&mut c, 1, "tq", false).await;
    c.method(1, ack(g.delivery_tag, false)).await;
    let reply = c.rpc(1, tx_rollback()).await;
    assert!(matches!(reply, AMQPClass::Tx(_)), "{reply:?}");
    let (g2, _) = get_ok(&mut c, 1, "tq", false).await;
    assert_eq!((g.delivery_tag, g2.delivery_tag), (1, 2));
    c.method(1, ack(2, false)).await;
    let reply = c.rpc(1, tx_commit()).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::CommitOk(_))
        ),
        "{reply:?}"
    );
    let reply = c.rpc(1, channel_close()).await;
    assert!(
        matches!(reply, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "{reply:?}"
    );
    // tag 1 (ack rolled back) is back in the queue; tag 2 is gone
    let (g, b) = get_ok(&mut c, 2, "tq", true).await;
    assert_eq!((g.redelivered, b.as_slice()), (true, &b"committed"[..]));
    get_empty(&mut c, 2, "tq").await;

    // a transactional channel cannot switch to confirms
    c.open_channel(1).await;
    let reply = c.rpc(1, tx_select()).await;
    assert!(matches!(reply, AMQPClass::Tx(_)), "{reply:?}");
    c.method(1, confirm_select()).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        close,
        Close {
            code: 406,
            text: "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into(),
            class_id: 85,
            method_id: 10
        }
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_channel_requeues_and_recover_redelivers() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "rq").await;
    c.open_channel(2).await;
    for body in [&b"a"[..], b"b"] {
        c.publish(1, "", "rq", body, props(), false).await;
    }
    c.method(2, consume("rq", "c2", false)).await;
    expect!(c, 2, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    assert_eq!(expect_deliver(&mut c, 2).await.0.delivery_tag, 1);
    assert_eq!(expect_deliver(&mut c, 2).await.0.delivery_tag, 2);
    // basic.recover (requeue): both come back redelivered, with new tags; the
    // redeliveries may come before recover-ok
    c.method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
    )
    .await;
    let mut redelivered = Vec::new();
    let mut saw_ok = false;
    while redelivered.len() < 2 || !saw_ok {
        match c.recv_method(2).await {
            AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_)) => saw_ok = true,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                c.recv_content(2).await;
                redelivered.push((d.delivery_tag, d.redelivered));
            }
            other => panic!("expected recover-ok or deliver, got {other:?}"),
        }
    }
    assert_eq!(redelivered, vec![(3, true), (4, true)]);
    // closing the channel requeues its unacknowledged messages and cancels its consumer
    let reply = c.rpc(2, channel_close()).await;
    assert!(
        matches!(reply, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "{reply:?}"
    );
    assert_eq!(c.queue_counts(1, "rq").await, (2, 0));
    // a reopened channel starts its tags at 1 again
    c.open_channel(2).await;
    let (g, b) = get_ok(&mut c, 2, "rq", false).await;
    assert_eq!(
        (g.delivery_tag, g.redelivered, b.as_slice()),
        (1, true, &b"a"[..])
    );
    // a method on a closed channel is a connection error
    let reply = c.rpc(2, channel_close()).await;
    assert!(
        matches!(reply, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "{reply:?}"
    );
    c.method(2, get("rq", true)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(
        close,
        Close {
            code: 504,
            text: "CHANNEL_ERROR - expected 'channel.open' on channel 2".into(),
            class_id: 60,
            method_id: 70
        }
    );
    // the message the closed channel held went back to the queue
    let mut c = f.connect().await;
    assert_eq!(c.queue_counts(1, "rq").await, (2, 0));
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_on_a_closing_channel_are_dropped_until_close_ok() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "kept").await;
    // provoke a channel error, then keep talking before close-ok: ignored
    c.method(1, ack(99, false)).await;
    let close = expect!(c, 1, AMQPClass::Channel(channel::AMQPMethod::Close(cl)) => cl);
    assert_eq!(close.reply_code, 406);
    c.method(1, queue_declare("dropped")).await;
    c.publish(1, "", "kept", b"dropped too", props(), false)
        .await;
    c.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    c.open_channel(1).await;
    assert_eq!(c.queue_counts(1, "kept").await, (0, 0));
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            passive: true,
            ..declare_queue("dropped")
        })),
    )
    .await;
    assert_eq!(c.expect_channel_close(1).await.code, 404);
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_connection_ends_its_handler_and_frees_exclusive_queues() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let excl = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        exclusive: true,
        ..declare_queue("mine")
    }));
    let reply = c.rpc(1, excl).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    assert!(f.broker.vhost("/").unwrap().queue("mine").is_some());
    c.close().await;
    let mut c = f.connect().await;
    // the queue went with its connection (before close-ok): the name is free again
    assert!(f.broker.vhost("/").unwrap().queue("mine").is_none());
    let reply = c.rpc(1, queue_declare("mine")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_flow_pauses_and_resumes_deliveries() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    declare(&mut c, 1, "fq").await;
    c.method(1, consume("fq", "c", true)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    let flow = |active| AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active }));
    let reply = c.rpc(1, flow(false)).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: false
            }))
        ),
        "{reply:?}"
    );
    c.publish(1, "", "fq", b"held", props(), false).await;
    // the reply comes next, not the delivery: the message waits
    assert_eq!(c.queue_counts(1, "fq").await, (1, 1));
    let reply = c.rpc(1, flow(true)).await;
    assert!(
        matches!(
            reply,
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: true
            }))
        ),
        "{reply:?}"
    );
    let (d, b) = expect_deliver(&mut c, 1).await;
    assert_eq!((d.delivery_tag, b.as_slice()), (1, &b"held"[..]));
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_consumed_queue_cancels_its_consumers_when_the_client_asks() {
    let mut f = Fixture::new();
    // a client that announces consumer_cancel_notify
    let mut c = f.connect_raw();
    c.start().await;
    let caps = table(&[("consumer_cancel_notify", AMQPValue::Boolean(true))]);
    c.start_ok_with(
        "PLAIN",
        b"\0guest\0guest".to_vec(),
        table(&[("capabilities", AMQPValue::FieldTable(caps))]),
    )
    .await;
    c.expect_tune().await;
    c.tune_ok(0, FRAME_MAX, 0).await;
    c.method(0, open("/")).await;
    expect!(c, 0, AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::OpenOk(_)) => ());
    c.open_channel(1).await;
    c.open_channel(2).await;
    declare(&mut c, 1, "doomed").await;
    c.method(1, consume("doomed", "watcher", false)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    c.method(
        2,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "doomed".into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
    .await;
    // delete-ok on channel 2 and basic.cancel on channel 1, in either order
    let (mut delete_ok, mut cancel) = (false, false);
    while !(delete_ok && cancel) {
        match c.recv().await {
            AMQPFrame::Method(2, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok))) => {
                assert_eq!(ok.message_count, 0);
                delete_ok = true;
            }
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(cl))) => {
                assert_eq!(cl.consumer_tag.as_str(), "watcher");
                cancel = true;
            }
            other => panic!("expected delete-ok or basic.cancel, got {other:?}"),
        }
    }
    // the tag is free again on the channel
    declare(&mut c, 1, "doomed").await;
    c.method(1, consume("doomed", "watcher", false)).await;
    expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    c.close().await;
    f.finish().await;
}
