//! Every reply code the AMQP front end sends, each with a method or situation that provokes
//! it, whether it closes the channel or the connection, and the class and method the close
//! names. Tested in process: the handler serves in-memory connections against a real broker.

#[macro_use]
mod common;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use eddy_amqp::AmqpConfig;
use eddy_broker::Permission;

/// Where an error lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// channel.close on channel 1; the connection stays usable.
    Channel,
    /// connection.close on channel 0; the stream ends after close-ok.
    Connection,
}

/// One provoked error: the frames sent (on a connection with channel 1 open), how many
/// replies come before the close, and the close expected.
struct Case {
    name: &'static str,
    send: Vec<Vec<u8>>,
    replies: usize,
    level: Level,
    code: u16,
    text: &'static str,
    /// (class_id, method_id) the close names (errors found once a publish's content is
    /// complete name basic.publish, 60/40, as RabbitMQ's do); None: not checked.
    at: Option<(u16, u16)>,
}

fn m(ch: u16, class: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, class))
}

fn publish_method(
    ch: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    immediate: bool,
) -> Vec<u8> {
    m(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory,
            immediate,
        })),
    )
}

/// A whole publish: method, header, body.
fn publish(exchange: &str, routing_key: &str, body: &[u8], properties: BasicProperties) -> Vec<u8> {
    let mut b = publish_method(1, exchange, routing_key, false, false);
    b.extend(content(1, body, properties));
    b
}

fn header(ch: u16, class_id: u16, body_size: u64) -> Vec<u8> {
    encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id,
            body_size,
            properties: BasicProperties::default(),
        },
    ))
}

fn body(ch: u16, b: &[u8]) -> Vec<u8> {
    encode(&AMQPFrame::Body(ch, b.to_vec()))
}

fn declare_with(name: &str, f: impl FnOnce(&mut queue::Declare)) -> Vec<u8> {
    let mut d = declare_queue(name);
    f(&mut d);
    m(1, AMQPClass::Queue(queue::AMQPMethod::Declare(d)))
}

fn stream_queue(name: &str) -> Vec<u8> {
    declare_with(name, |d| {
        d.durable = true;
        d.arguments = table(&[("x-queue-type", long_str("stream"))]);
    })
}

fn consume_with(q: &str, tag: &str, exclusive: bool) -> Vec<u8> {
    m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

fn delete_queue(q: &str, if_unused: bool, if_empty: bool) -> Vec<u8> {
    m(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: q.into(),
            if_unused,
            if_empty,
            nowait: false,
        })),
    )
}

fn delete_exchange(e: &str, if_unused: bool) -> Vec<u8> {
    m(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: e.into(),
            if_unused,
            nowait: false,
        })),
    )
}

fn exchange_bind(destination: &str, source: &str) -> Vec<u8> {
    m(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: destination.into(),
            source: source.into(),
            routing_key: "".into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

/// A field table nested `depth` levels deep.
fn nested(depth: usize) -> FieldTable {
    let mut v = long_str("leaf");
    for _ in 1..depth {
        v = AMQPValue::FieldTable(table(&[("k", v)]));
    }
    table(&[("x-nested", v)])
}

/// Run cases, each on a fresh connection of one broker: the replies before the close must
/// not be closes; the close must be exactly the one expected; a channel error leaves the
/// connection usable (channel 1 opens again), a connection error ends the stream.
async fn run(f: &mut Fixture, cases: Vec<Case>) {
    for case in cases {
        let name = case.name;
        let mut c = f.connect().await;
        for bytes in &case.send {
            c.send_raw(bytes).await;
        }
        for _ in 0..case.replies {
            let frame = c.recv().await;
            assert!(
                !matches!(
                    frame,
                    AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
                        | AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
                ),
                "{name}: a close came before the expected replies: {frame:?}"
            );
        }
        let close = match case.level {
            Level::Channel => c.expect_channel_close(1).await,
            Level::Connection => c.expect_connection_close().await,
        };
        // a text ending in "..." is a prefix (the rest quotes a value in the codec's form)
        let text_matches = match case.text.strip_suffix("...") {
            Some(prefix) => close.text.starts_with(prefix),
            None => close.text == case.text,
        };
        assert!(
            close.code == case.code && text_matches,
            "{name}: {:?} close: got ({}, {:?}), expected ({}, {:?})",
            case.level,
            close.code,
            close.text,
            case.code,
            case.text
        );
        if let Some(at) = case.at {
            assert_eq!(
                (close.class_id, close.method_id),
                at,
                "{name}: class and method"
            );
        }
        if case.level == Level::Channel {
            c.open_channel(1).await;
            let reply = c.rpc(1, queue_declare("still-usable")).await;
            assert!(
                matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
                "{name}: {reply:?}"
            );
            c.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_errors_close_the_channel_with_code_and_method() {
    use Level::Channel;
    let mut f = Fixture::new();
    let cases = vec![
        // 403 ACCESS_REFUSED
        Case {
            name: "queue name with the reserved prefix",
            send: vec![m(1, queue_declare("amq.mine"))],
            replies: 0,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'",
            at: Some((50, 10)),
        },
        Case {
            name: "exchange name with the reserved prefix",
            send: vec![m(1, exchange_declare("amq.custom", "direct"))],
            replies: 0,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'",
            at: Some((40, 10)),
        },
        Case {
            name: "declare the default exchange",
            send: vec![m(1, exchange_declare("", "direct"))],
            replies: 0,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - operation not permitted on the default exchange",
            at: Some((40, 10)),
        },
        Case {
            name: "delete a built-in exchange",
            send: vec![delete_exchange("amq.direct", false)],
            replies: 0,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - operation not permitted on the default exchange or 'amq.*' exchanges ('amq.direct')",
            at: Some((40, 20)),
        },
        Case {
            name: "bind to the default exchange",
            send: vec![m(1, queue_declare("c-bind-default")), m(1, queue_bind("c-bind-default", "", "k"))],
            replies: 1,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - operation not permitted on the default exchange",
            at: Some((50, 20)),
        },
        Case {
            name: "exclusive consume of a queue with a consumer",
            send: vec![
                m(1, queue_declare("c-excl-consume")),
                consume_with("c-excl-consume", "first", false),
                consume_with("c-excl-consume", "second", true),
            ],
            replies: 2,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - queue 'c-excl-consume' in vhost '/' in exclusive use",
            at: Some((60, 20)),
        },
        Case {
            name: "publish to an internal exchange",
            send: vec![
                m(1, AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    internal: true,
                    ..declare_exchange("c-internal", "fanout")
                }))),
                publish("c-internal", "", b"x", BasicProperties::default()),
            ],
            replies: 1,
            level: Channel,
            code: 403,
            text: "ACCESS_REFUSED - cannot publish to internal exchange 'c-internal' in vhost '/'",
            at: Some((60, 40)),
        },
        // 404 NOT_FOUND
        Case {
            name: "passive declare of a missing queue",
            send: vec![declare_with("c-absent", |d| d.passive = true)],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no queue 'c-absent' in vhost '/'",
            at: Some((50, 10)),
        },
        Case {
            name: "passive declare of a missing exchange",
            send: vec![m(1, AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                passive: true,
                ..declare_exchange("c-absent-ex", "direct")
            })))],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no exchange 'c-absent-ex' in vhost '/'",
            at: Some((40, 10)),
        },
        Case {
            name: "consume from a missing queue",
            send: vec![consume_with("c-absent", "", false)],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no queue 'c-absent' in vhost '/'",
            at: Some((60, 20)),
        },
        Case {
            name: "get from a missing queue",
            send: vec![m(1, get("c-absent", false))],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no queue 'c-absent' in vhost '/'",
            at: Some((60, 70)),
        },
        Case {
            name: "purge a missing queue",
            send: vec![m(1, AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "c-absent".into(),
                nowait: false,
            })))],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no queue 'c-absent' in vhost '/'",
            at: Some((50, 30)),
        },
        Case {
            name: "bind a missing queue",
            send: vec![m(1, queue_bind("c-absent", "amq.direct", "k"))],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no queue 'c-absent' in vhost '/'",
            at: Some((50, 20)),
        },
        Case {
            name: "bind to a missing exchange",
            send: vec![m(1, queue_declare("c-bind-missing")), m(1, queue_bind("c-bind-missing", "c-no-ex", "k"))],
            replies: 1,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no exchange 'c-no-ex' in vhost '/'",
            at: Some((50, 20)),
        },
        Case {
            name: "exchange.bind from a missing source",
            send: vec![exchange_bind("amq.fanout", "c-no-source")],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no exchange 'c-no-source' in vhost '/'",
            at: Some((40, 30)),
        },
        Case {
            name: "publish to a missing exchange",
            send: vec![publish("c-no-ex", "k", b"x", BasicProperties::default())],
            replies: 0,
            level: Channel,
            code: 404,
            text: "NOT_FOUND - no exchange 'c-no-ex' in vhost '/'",
            at: Some((60, 40)),
        },
        // 406 PRECONDITION_FAILED
        Case {
            name: "queue redeclared with other properties",
            send: vec![m(1, queue_declare("c-redeclare")), declare_with("c-redeclare", |d| d.durable = true)],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'c-redeclare' in vhost '/': received 'true' but current is 'false'",
            at: Some((50, 10)),
        },
        Case {
            name: "queue redeclared with other arguments",
            send: vec![
                m(1, queue_declare("c-redeclare-args")),
                declare_with("c-redeclare-args", |d| d.arguments = table(&[("x-max-length", AMQPValue::LongInt(10))])),
            ],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'c-redeclare-args' in vhost '/': received '10' but current is 'none'",
            at: Some((50, 10)),
        },
        Case {
            name: "invalid queue argument",
            send: vec![declare_with("c-bad-arg", |d| d.arguments = table(&[("x-max-length", AMQPValue::LongInt(-1))]))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'c-bad-arg' in vhost '/': {value_negative,-1}",
            at: Some((50, 10)),
        },
        Case {
            name: "unknown exchange type",
            send: vec![m(1, exchange_declare("c-odd", "x-unknown"))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - invalid exchange type 'x-unknown'",
            at: Some((40, 10)),
        },
        Case {
            name: "exchange redeclared with another type",
            send: vec![m(1, exchange_declare("c-typed", "topic")), m(1, exchange_declare("c-typed", "direct"))],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'c-typed' in vhost '/': received 'direct' but current is 'topic'",
            at: Some((40, 10)),
        },
        Case {
            name: "ack of an unknown delivery tag",
            send: vec![m(1, ack(7, false))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - unknown delivery tag 7",
            at: Some((60, 80)),
        },
        Case {
            name: "reject of an unknown delivery tag",
            send: vec![m(1, reject(3, true))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - unknown delivery tag 3",
            at: Some((60, 90)),
        },
        Case {
            name: "nack (multiple) of an unknown delivery tag",
            send: vec![m(1, nack(5, true, true))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - unknown delivery tag 5",
            at: Some((60, 120)),
        },
        Case {
            name: "commit on a channel without tx.select",
            send: vec![m(1, tx_commit())],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - channel is not transactional",
            at: Some((90, 20)),
        },
        Case {
            name: "rollback on a channel without tx.select",
            send: vec![m(1, tx_rollback())],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - channel is not transactional",
            at: Some((90, 30)),
        },
        Case {
            name: "confirm.select on a transactional channel",
            send: vec![m(1, tx_select()), m(1, confirm_select())],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            at: Some((85, 10)),
        },
        Case {
            name: "tx.select on a confirm channel",
            send: vec![m(1, confirm_select()), m(1, tx_select())],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            at: Some((90, 10)),
        },
        Case {
            name: "queue.delete if-empty of a queue with messages",
            send: vec![
                m(1, queue_declare("c-not-empty")),
                publish("", "c-not-empty", b"x", BasicProperties::default()),
                delete_queue("c-not-empty", false, true),
            ],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - queue 'c-not-empty' in vhost '/' not empty",
            at: Some((50, 40)),
        },
        Case {
            name: "queue.delete if-unused of a queue with a consumer",
            send: vec![
                m(1, queue_declare("c-in-use")),
                consume_with("c-in-use", "", false),
                delete_queue("c-in-use", true, false),
            ],
            replies: 2,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - queue 'c-in-use' in vhost '/' in use",
            at: Some((50, 40)),
        },
        Case {
            name: "exchange.delete if-unused of a bound exchange",
            send: vec![
                m(1, exchange_declare("c-used-ex", "direct")),
                m(1, queue_declare("c-used-ex-q")),
                m(1, queue_bind("c-used-ex-q", "c-used-ex", "k")),
                delete_exchange("c-used-ex", true),
            ],
            replies: 3,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - exchange 'c-used-ex' in vhost '/' in use",
            at: Some((40, 20)),
        },
        Case {
            name: "invalid x-match of a headers binding",
            send: vec![
                m(1, exchange_declare("c-headers", "headers")),
                m(1, queue_declare("c-headers-q")),
                m(1, AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: "c-headers-q".into(),
                    exchange: "c-headers".into(),
                    routing_key: "".into(),
                    nowait: false,
                    arguments: table(&[("x-match", long_str("some"))]),
                }))),
            ],
            replies: 2,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - invalid x-match field value ...",
            at: Some((50, 20)),
        },
        Case {
            name: "stream consume without a prefetch",
            send: vec![stream_queue("c-stream"), consume_with("c-stream", "", false)],
            replies: 1,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - consumer prefetch count is not set for stream queue 'c-stream'",
            at: Some((60, 20)),
        },
        Case {
            name: "invalid expiration property",
            send: vec![publish("", "still-usable", b"x", BasicProperties::default().with_expiration("soon".into()))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - invalid expiration 'soon': must be a non-negative integer of milliseconds",
            at: Some((60, 40)),
        },
        Case {
            name: "user_id property of another user",
            send: vec![publish("", "still-usable", b"x", BasicProperties::default().with_user_id("mallory".into()))],
            replies: 0,
            level: Channel,
            code: 406,
            text: "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'",
            at: Some((60, 40)),
        },
    ];
    run(&mut f, cases).await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_close_the_connection_with_code_and_method() {
    use Level::Connection;
    let mut f = Fixture::new();
    let mut bad_end = m(1, queue_declare("c-bad-end"));
    *bad_end.last_mut().unwrap() = 0;
    let deep_header = encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties::default().with_headers(nested(40)),
        },
    ));
    let cases = vec![
        // 501 FRAME_ERROR
        Case {
            name: "frame larger than frame_max",
            send: vec![vec![1, 0, 1, 0x40, 0, 0, 0]],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - frame size 1073741824 exceeds frame_max 131072",
            at: Some((0, 0)),
        },
        Case {
            name: "frame without its end octet",
            send: vec![bad_end],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - frame end octet missing (found 0x00)",
            at: Some((0, 0)),
        },
        Case {
            name: "unknown frame type",
            send: vec![vec![4, 0, 1, 0, 0, 0, 0, 0xCE]],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - unknown frame type 4",
            at: Some((0, 0)),
        },
        Case {
            name: "malformed content header",
            send: vec![
                publish_method(1, "", "q", false, false),
                // class, weight, body size, and no property flags
                vec![
                    2, 0, 1, 0, 0, 0, 12, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xCE,
                ],
            ],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - malformed content header",
            at: Some((0, 0)),
        },
        Case {
            name: "content header of another class",
            send: vec![publish_method(1, "", "q", false, false), header(1, 50, 1)],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - content header for unknown class 50",
            at: Some((0, 0)),
        },
        Case {
            name: "body longer than the header said",
            send: vec![
                publish_method(1, "", "q", false, false),
                header(1, 60, 1),
                body(1, b"xyz"),
            ],
            replies: 0,
            level: Connection,
            code: 501,
            text: "FRAME_ERROR - body exceeds declared size 1",
            at: Some((0, 0)),
        },
        // 502 SYNTAX_ERROR
        Case {
            name: "unknown class",
            send: vec![raw_method(1, &[0x03, 0xe7, 0, 1])],
            replies: 0,
            level: Connection,
            code: 502,
            text: "SYNTAX_ERROR - malformed or unknown method frame (class 999, method 1)",
            at: Some((999, 1)),
        },
        Case {
            name: "method frame too short for its ids",
            send: vec![raw_method(1, &[0, 50])],
            replies: 0,
            level: Connection,
            code: 502,
            text: "SYNTAX_ERROR - malformed or unknown method frame (class 0, method 0)",
            at: Some((0, 0)),
        },
        Case {
            name: "truncated queue.declare",
            send: vec![raw_method(1, &[0, 50, 0, 10, 0, 0, 9, b'q'])],
            replies: 0,
            level: Connection,
            code: 502,
            text: "SYNTAX_ERROR - malformed or unknown method frame (class 50, method 10)",
            at: Some((50, 10)),
        },
        Case {
            name: "arguments nested too deep",
            send: vec![declare_with("c-deep", |d| d.arguments = nested(40))],
            replies: 0,
            level: Connection,
            code: 502,
            text: "SYNTAX_ERROR - field table nesting deeper than 32 levels",
            at: Some((50, 10)),
        },
        Case {
            name: "message headers nested too deep",
            send: vec![publish_method(1, "", "q", false, false), deep_header],
            replies: 0,
            level: Connection,
            code: 502,
            text: "SYNTAX_ERROR - content header: field table nesting deeper than 32 levels",
            at: Some((0, 0)),
        },
        // 503 COMMAND_INVALID
        Case {
            name: "basic.deliver sent by the client",
            send: vec![m(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "t".into(),
                    delivery_tag: 1,
                    redelivered: false,
                    exchange: "".into(),
                    routing_key: "q".into(),
                })),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - server-side basic method sent by client",
            at: Some((60, 60)),
        },
        Case {
            name: "queue.declare-ok sent by the client",
            send: vec![m(
                1,
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: "q".into(),
                    message_count: 0,
                    consumer_count: 0,
                })),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - server-side queue method sent by client",
            at: Some((50, 11)),
        },
        Case {
            name: "exchange.declare-ok sent by the client",
            send: vec![m(
                1,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - server-side exchange method sent by client",
            at: Some((40, 11)),
        },
        Case {
            name: "tx.select-ok sent by the client",
            send: vec![m(
                1,
                AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - server-side tx method sent by client",
            at: Some((90, 11)),
        },
        Case {
            name: "confirm.select-ok sent by the client",
            send: vec![m(
                1,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - server-side confirm method sent by client",
            at: Some((85, 11)),
        },
        Case {
            name: "channel.open-ok sent by the client",
            send: vec![m(
                1,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - unexpected channel method",
            at: Some((20, 11)),
        },
        Case {
            name: "connection.open on an open connection",
            send: vec![m(0, open("/"))],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - unexpected connection method in this state",
            at: Some((10, 40)),
        },
        Case {
            name: "connection.tune-ok on an open connection",
            send: vec![m(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: 0,
                    frame_max: FRAME_MAX,
                    heartbeat: 0,
                })),
            )],
            replies: 0,
            level: Connection,
            code: 503,
            text: "COMMAND_INVALID - unexpected connection method in this state",
            at: Some((10, 31)),
        },
        // 504 CHANNEL_ERROR
        Case {
            name: "method on a channel never opened",
            send: vec![m(5, queue_declare("c-ch5"))],
            replies: 0,
            level: Connection,
            code: 504,
            text: "CHANNEL_ERROR - expected 'channel.open' on channel 5",
            at: Some((50, 10)),
        },
        Case {
            name: "channel.close of a channel never opened",
            send: vec![m(3, channel_close())],
            replies: 0,
            level: Connection,
            code: 504,
            text: "CHANNEL_ERROR - expected 'channel.open' on channel 3",
            at: Some((20, 40)),
        },
        Case {
            name: "content on a channel never opened",
            send: vec![header(7, 60, 1)],
            replies: 0,
            level: Connection,
            code: 504,
            text: "CHANNEL_ERROR - expected 'channel.open' on channel 7",
            at: Some((0, 0)),
        },
        Case {
            name: "second channel.open",
            send: vec![m(
                1,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )],
            replies: 0,
            level: Connection,
            code: 504,
            text: "CHANNEL_ERROR - second 'channel.open' seen on channel 1",
            at: Some((20, 10)),
        },
        Case {
            name: "queue method on channel 0",
            send: vec![m(0, queue_declare("c-ch0"))],
            replies: 0,
            level: Connection,
            code: 504,
            text: "CHANNEL_ERROR - expected a connection method on channel 0",
            at: Some((50, 10)),
        },
        // 505 UNEXPECTED_FRAME
        Case {
            name: "method where a content header was due",
            send: vec![
                publish_method(1, "", "q", false, false),
                m(1, queue_declare("c-pending")),
            ],
            replies: 0,
            level: Connection,
            code: 505,
            text:
                "UNEXPECTED_FRAME - expected content header for class 60, got a method on channel 1",
            at: Some((50, 10)),
        },
        Case {
            name: "content header without basic.publish",
            send: vec![header(1, 60, 1)],
            replies: 0,
            level: Connection,
            code: 505,
            text: "UNEXPECTED_FRAME - content frame on channel 1 without a preceding basic.publish",
            at: Some((0, 0)),
        },
        Case {
            name: "body frame before the content header",
            send: vec![publish_method(1, "", "q", false, false), body(1, b"x")],
            replies: 0,
            level: Connection,
            code: 505,
            text: "UNEXPECTED_FRAME - body frame on channel 1 before the content header",
            at: Some((0, 0)),
        },
        Case {
            name: "second content header",
            send: vec![
                publish_method(1, "", "q", false, false),
                header(1, 60, 5),
                header(1, 60, 5),
            ],
            replies: 0,
            level: Connection,
            code: 505,
            text: "UNEXPECTED_FRAME - second content header on channel 1",
            at: Some((0, 0)),
        },
        // 530 NOT_ALLOWED
        Case {
            name: "consumer tag reused on a channel",
            send: vec![
                m(1, queue_declare("c-tag")),
                consume_with("c-tag", "same", false),
                consume_with("c-tag", "same", false),
            ],
            replies: 2,
            level: Connection,
            code: 530,
            text: "NOT_ALLOWED - attempt to reuse consumer tag 'same'",
            at: Some((60, 20)),
        },
        Case {
            name: "channel above channel_max",
            send: vec![m(
                2048,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )],
            replies: 0,
            level: Connection,
            code: 530,
            text: "NOT_ALLOWED - channel 2048 above channel_max 2047",
            at: Some((20, 10)),
        },
        // 540 NOT_IMPLEMENTED
        Case {
            name: "publish with immediate",
            send: vec![publish_method(1, "", "q", false, true)],
            replies: 0,
            level: Connection,
            code: 540,
            text: "NOT_IMPLEMENTED - immediate=true",
            at: Some((60, 40)),
        },
        Case {
            name: "qos with a prefetch size",
            // basic.qos: prefetch_size 1, prefetch_count 0, global false
            send: vec![raw_method(1, &[0, 60, 0, 10, 0, 0, 0, 1, 0, 0, 0])],
            replies: 0,
            level: Connection,
            code: 540,
            text: "NOT_IMPLEMENTED - prefetch_size!=0 (1)",
            at: Some((60, 10)),
        },
        Case {
            name: "recover without requeue",
            send: vec![m(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
                    requeue: false,
                })),
            )],
            replies: 0,
            level: Connection,
            code: 540,
            text: "NOT_IMPLEMENTED - requeue=false",
            at: Some((60, 110)),
        },
        Case {
            name: "recover-async without requeue",
            send: vec![m(
                1,
                AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                    requeue: false,
                })),
            )],
            replies: 0,
            level: Connection,
            code: 540,
            text: "NOT_IMPLEMENTED - requeue=false",
            at: Some((60, 100)),
        },
        Case {
            name: "basic.get from a stream",
            send: vec![
                stream_queue("c-stream-get"),
                m(1, get("c-stream-get", false)),
            ],
            replies: 1,
            level: Connection,
            code: 540,
            text: "NOT_IMPLEMENTED - basic.get not supported by stream queue 'c-stream-get'",
            at: Some((60, 70)),
        },
    ];
    run(&mut f, cases).await;
    f.finish().await;
}

/// A handshake step that fails, from the protocol header on.
enum Until {
    /// After connection.start: this start-ok (mechanism, response).
    StartOk(&'static str, Vec<u8>),
    /// After a good start-ok and tune: these frames.
    Tuned(Vec<Vec<u8>>),
    /// After tune-ok (frame_max 131072): connection.open of this vhost.
    Open(&'static str),
}

/// (name, where it fails, code, text, class and method)
type HandshakeCase = (&'static str, Until, u16, &'static str, (u16, u16));

#[tokio::test(flavor = "multi_thread")]
async fn handshake_errors_close_the_connection() {
    let mut f = Fixture::new();
    f.broker.add_vhost("elsewhere");
    // a user may be given a blank password; logging in with it is refused (RabbitMQ's rule)
    f.broker
        .users()
        .put("blank", Some(""), None, vec![])
        .unwrap();
    let amqplain = |login: &str, password: &str| {
        // a field table's content, without its length
        let t = table(&[("LOGIN", long_str(login)), ("PASSWORD", long_str(password))]);
        let mut framed = encode_table(&t);
        framed.drain(..4);
        framed
    };
    let mut deep_amqplain = encode_table(&nested(40));
    deep_amqplain.drain(..4);
    let tune_ok = |frame_max: u32| {
        m(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max,
                heartbeat: 0,
            })),
        )
    };
    let cases: Vec<HandshakeCase> = vec![
        (
            "wrong password",
            Until::StartOk("PLAIN", b"\0guest\0wrong".to_vec()),
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN: invalid credentials for user 'guest'",
            (10, 11),
        ),
        (
            "unknown user",
            Until::StartOk("PLAIN", b"\0nobody\0guest".to_vec()),
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN: invalid credentials for user 'nobody'",
            (10, 11),
        ),
        (
            "blank password",
            Until::StartOk("PLAIN", b"\0blank\0".to_vec()),
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN: user 'blank' attempted to log in with a blank password, which is prohibited",
            (10, 11),
        ),
        (
            "PLAIN response without its separators",
            Until::StartOk("PLAIN", b"guest".to_vec()),
            403,
            "ACCESS_REFUSED - malformed PLAIN response",
            (10, 11),
        ),
        (
            "AMQPLAIN with a wrong password",
            Until::StartOk("AMQPLAIN", amqplain("guest", "nope")),
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN: invalid credentials for user 'guest'",
            (10, 11),
        ),
        (
            "AMQPLAIN response that is no table",
            Until::StartOk("AMQPLAIN", vec![5, b'a']),
            403,
            "ACCESS_REFUSED - malformed AMQPLAIN response",
            (10, 11),
        ),
        (
            "AMQPLAIN response nested too deep",
            Until::StartOk("AMQPLAIN", deep_amqplain),
            502,
            "SYNTAX_ERROR - AMQPLAIN response: field table nesting deeper than 32 levels",
            (10, 11),
        ),
        (
            "unsupported mechanism",
            Until::StartOk("EXTERNAL", Vec::new()),
            403,
            "ACCESS_REFUSED - unsupported authentication mechanism 'EXTERNAL'",
            (10, 11),
        ),
        (
            "frame_max below the minimum",
            Until::Tuned(vec![tune_ok(1024)]),
            530,
            "NOT_ALLOWED - frame_max 1024 below the minimum 4096",
            (10, 31),
        ),
        (
            "frame_max above the server's",
            Until::Tuned(vec![tune_ok(1 << 20)]),
            530,
            "NOT_ALLOWED - frame_max 1048576 above the server's 131072",
            (10, 31),
        ),
        (
            "connection.open before tune-ok",
            Until::Tuned(vec![m(0, open("/"))]),
            503,
            "COMMAND_INVALID - unexpected connection method in this state",
            (10, 40),
        ),
        (
            "channel.open before connection.open",
            Until::Tuned(vec![
                tune_ok(FRAME_MAX),
                m(1, AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))),
            ]),
            503,
            "COMMAND_INVALID - channel method before connection.open",
            (20, 10),
        ),
        (
            "queue method on channel 0 before connection.open",
            Until::Tuned(vec![tune_ok(FRAME_MAX), m(0, queue_declare("early"))]),
            504,
            "CHANNEL_ERROR - expected a connection method on channel 0",
            (50, 10),
        ),
        (
            "unknown vhost",
            Until::Open("nowhere"),
            530,
            "NOT_ALLOWED - vhost 'nowhere' not found",
            (10, 40),
        ),
        (
            "vhost the user has no permissions in",
            Until::Open("elsewhere"),
            530,
            "NOT_ALLOWED - access to vhost 'elsewhere' refused for user 'guest'",
            (10, 40),
        ),
    ];
    for (name, until, code, text, at) in cases {
        let mut c = f.connect_raw();
        c.start().await;
        match until {
            Until::StartOk(mechanism, response) => c.start_ok(mechanism, response).await,
            Until::Tuned(frames) => {
                c.start_ok_plain("guest", "guest").await;
                c.expect_tune().await;
                for frame in frames {
                    c.send_raw(&frame).await;
                }
            }
            Until::Open(vhost) => {
                c.start_ok_plain("guest", "guest").await;
                c.expect_tune().await;
                c.tune_ok(0, FRAME_MAX, 0).await;
                c.method(0, open(vhost)).await;
            }
        }
        let close = c.expect_connection_close().await;
        assert_eq!(
            close,
            Close {
                code,
                text: text.into(),
                class_id: at.0,
                method_id: at.1
            },
            "{name}"
        );
    }

    // AMQPLAIN with good credentials opens
    let mut c = f.connect_raw();
    c.start().await;
    c.start_ok("AMQPLAIN", amqplain("guest", "guest")).await;
    c.expect_tune().await;
    c.tune_ok(0, FRAME_MAX, 0).await;
    c.method(0, open("/")).await;
    expect!(c, 0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => ());
    c.close().await;

    // guest only from loopback
    let mut c = f.connect_raw_from(Some(([192, 0, 2, 7], 40000).into()));
    c.start().await;
    c.start_ok_plain("guest", "guest").await;
    let close = c.expect_connection_close().await;
    assert_eq!(
        close,
        Close {
            code: 403,
            text: "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN: user 'guest' can only connect via localhost".into(),
            class_id: 10,
            method_id: 11
        }
    );

    // another protocol's header: ours back, then the end
    let mut c = f.connect_raw();
    c.send_raw(b"HTTP/1.1 200 OK\r\n").await;
    match c.recv().await {
        AMQPFrame::ProtocolHeader(v) => assert_eq!((v.major, v.minor, v.revision), (0, 9, 1)),
        other => panic!("expected the protocol header, got {other:?}"),
    }
    c.expect_eof().await;
    drop(c);
    f.finish().await;
}

fn encode_table(t: &FieldTable) -> Vec<u8> {
    use amq_protocol::types::generation::gen_field_table;
    gen_field_table(t)(amq_protocol::frame::WriteContext::from(Vec::new()))
        .expect("encode a table")
        .write
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_returns_a_mandatory_message_without_a_delivery_tag() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("m-1".into());
    c.publish(
        1,
        "amq.direct",
        "unbound-key",
        b"returned",
        props.clone(),
        true,
    )
    .await;
    let r = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::Return(r)) => r);
    assert_eq!(
        (
            r.reply_code,
            r.reply_text.as_str(),
            r.exchange.as_str(),
            r.routing_key.as_str()
        ),
        (312, "NO_ROUTE", "amq.direct", "unbound-key")
    );
    let (got_props, body) = c.recv_content(1).await;
    assert_eq!((got_props, body.as_slice()), (props, &b"returned"[..]));
    // not mandatory: dropped silently (the next frame is the reply to what follows)
    c.publish(
        1,
        "amq.direct",
        "unbound-key",
        b"dropped",
        BasicProperties::default(),
        false,
    )
    .await;
    // the return took no delivery tag: the first get of the channel has tag 1
    let reply = c.rpc(1, queue_declare("nr")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    c.publish(1, "", "nr", b"kept", BasicProperties::default(), true)
        .await;
    c.method(1, get("nr", false)).await;
    let g = expect!(c, 1, AMQPClass::Basic(basic::AMQPMethod::GetOk(g)) => g);
    assert_eq!(g.delivery_tag, 1);
    assert_eq!(c.recv_content(1).await.1, b"kept");
    c.method(1, ack(1, false)).await;
    assert_eq!(c.queue_counts(1, "nr").await, (0, 0));
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_forces_every_connection_closed() {
    let mut f = Fixture::new();
    let mut running = f.connect().await;
    let reply = running.rpc(1, queue_declare("sq")).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    running.method(1, consume("sq", "c", false)).await;
    expect!(running, 1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => ());
    // one mid-handshake, one that will not answer the close
    let mut handshaking = f.connect_raw();
    handshaking.start().await;
    let mut silent = f.connect().await;
    f.signal_shutdown();
    let forced = Close {
        code: 320,
        text: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into(),
        class_id: 0,
        method_id: 0,
    };
    assert_eq!(running.expect_connection_close().await, forced);
    assert_eq!(handshaking.expect_connection_close().await, forced);
    // without close-ok the server still ends the connection (after a short grace period)
    let close = expect!(silent, 0, AMQPClass::Connection(connection::AMQPMethod::Close(c)) => c);
    assert_eq!(close.reply_code, 320);
    silent.expect_eof().await;
    drop((running, handshaking, silent));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_close_is_connection_forced_with_its_reason() {
    let mut f = Fixture::new();
    let mut c = f.connect().await;
    let mut other = f.connect().await;
    let conns = f.broker.connections();
    assert_eq!(conns.len(), 2);
    let first = conns.iter().min_by_key(|c| c.id).unwrap();
    first.request_close("Closed via management plugin");
    assert_eq!(
        c.expect_connection_close().await,
        Close {
            code: 320,
            text: "CONNECTION_FORCED - Closed via management plugin".into(),
            class_id: 0,
            method_id: 0
        }
    );
    // the other connection is untouched
    let reply = other.rpc(1, queue_declare("after-close")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    drop(c);
    other.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_refuse_with_access_refused() {
    let mut f = Fixture::new();
    let users = f.broker.users();
    users.put("limited", Some("pw"), None, vec![]).unwrap();
    users
        .set_permission(Permission {
            user: "limited".into(),
            vhost: "/".into(),
            configure: "^lim-".into(),
            write: "^lim-".into(),
            read: "^lim-".into(),
        })
        .unwrap();
    users.put("outsider", Some("pw"), None, vec![]).unwrap();

    // no permissions in the vhost at all: the open is refused
    let mut c = f.connect_raw();
    c.start().await;
    c.start_ok_plain("outsider", "pw").await;
    c.expect_tune().await;
    c.tune_ok(0, FRAME_MAX, 0).await;
    c.method(0, open("/")).await;
    assert_eq!(
        c.expect_connection_close().await,
        Close {
            code: 530,
            text: "NOT_ALLOWED - access to vhost '/' refused for user 'outsider'".into(),
            class_id: 10,
            method_id: 40
        }
    );
    drop(c);

    let mut c = f.connect_as("limited", "pw", "/").await;
    c.open_channel(1).await;
    let reply = c.rpc(1, queue_declare("lim-q")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    let refused: Vec<(&str, AMQPClass, &str, (u16, u16))> = vec![
        (
            "declare outside the configure pattern",
            queue_declare("other"),
            "ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'limited'",
            (50, 10),
        ),
        (
            "bind from an exchange outside the read pattern",
            queue_bind("lim-q", "amq.direct", "k"),
            "ACCESS_REFUSED - read access to exchange 'amq.direct' in vhost '/' refused for user 'limited'",
            (50, 20),
        ),
        (
            "publish to the default exchange outside the write pattern",
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "lim-q".into(),
                mandatory: false,
                immediate: false,
            })),
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'limited'",
            (60, 40),
        ),
        (
            "dead-letter exchange outside the write pattern",
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                arguments: table(&[("x-dead-letter-exchange", long_str("amq.fanout"))]),
                ..declare_queue("lim-dlx")
            })),
            "ACCESS_REFUSED - write access to exchange 'amq.fanout' in vhost '/' refused for user 'limited'",
            (50, 10),
        ),
        (
            "delete outside the configure pattern",
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: "some-exchange".into(),
                if_unused: false,
                nowait: false,
            })),
            "ACCESS_REFUSED - configure access to exchange 'some-exchange' in vhost '/' refused for user 'limited'",
            (40, 20),
        ),
    ];
    for (name, method, text, at) in refused {
        c.method(1, method).await;
        let close = c.expect_channel_close(1).await;
        assert_eq!(
            close,
            Close {
                code: 403,
                text: text.into(),
                class_id: at.0,
                method_id: at.1
            },
            "{name}"
        );
        c.open_channel(1).await;
    }
    // read from a queue outside the read pattern (declared by guest)
    let mut admin = f.connect().await;
    let reply = admin.rpc(1, queue_declare("guest-q")).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    c.method(1, get("guest-q", true)).await;
    assert_eq!(
        c.expect_channel_close(1).await,
        Close {
            code: 403,
            text: "ACCESS_REFUSED - read access to queue 'guest-q' in vhost '/' refused for user 'limited'".into(),
            class_id: 60,
            method_id: 70
        }
    );
    admin.close().await;
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exclusive_queue_is_locked_to_other_connections() {
    let mut f = Fixture::new();
    let mut owner = f.connect().await;
    let reply = owner
        .rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                exclusive: true,
                ..declare_queue("locked")
            })),
        )
        .await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    let mut other = f.connect().await;
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'locked' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let attempts: Vec<(&str, AMQPClass, (u16, u16))> = vec![
        (
            "declare",
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                exclusive: true,
                ..declare_queue("locked")
            })),
            (50, 10),
        ),
        (
            "passive declare",
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                passive: true,
                ..declare_queue("locked")
            })),
            (50, 10),
        ),
        ("consume", consume("locked", "", false), (60, 20)),
        ("get", get("locked", false), (60, 70)),
        ("bind", queue_bind("locked", "amq.direct", "k"), (50, 20)),
        (
            "purge",
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "locked".into(),
                nowait: false,
            })),
            (50, 30),
        ),
        (
            "delete",
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "locked".into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
            (50, 40),
        ),
    ];
    for (name, method, at) in attempts {
        other.method(1, method).await;
        assert_eq!(
            other.expect_channel_close(1).await,
            Close {
                code: 405,
                text: locked.into(),
                class_id: at.0,
                method_id: at.1
            },
            "{name}"
        );
        other.open_channel(1).await;
    }
    // the owner still uses it
    owner
        .publish(1, "", "locked", b"mine", BasicProperties::default(), false)
        .await;
    assert_eq!(owner.queue_counts(1, "locked").await, (1, 0));
    // once the owner is gone, the name is free
    owner.close().await;
    let reply = other.rpc(1, queue_declare("locked")).await;
    assert!(
        matches!(&reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) if ok.message_count == 0),
        "{reply:?}"
    );
    other.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_size_limit_closes_the_channel() {
    let mut f = Fixture::with_config(AmqpConfig {
        max_message_size: 100,
        ..AmqpConfig::default()
    });
    let mut c = f.connect().await;
    let reply = c.rpc(1, queue_declare("small")).await;
    assert!(matches!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    c.publish(
        1,
        "",
        "small",
        &[7u8; 100],
        BasicProperties::default(),
        false,
    )
    .await;
    assert_eq!(c.queue_counts(1, "small").await, (1, 0));
    // the body frames after the refused header are dropped with the closing channel
    c.publish(
        1,
        "",
        "small",
        &[7u8; 101],
        BasicProperties::default(),
        false,
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - message size 101 is larger than configured max size 100"
        )
    );
    assert_eq!(
        (close.class_id, close.method_id),
        (60, 40),
        "names basic.publish"
    );
    c.open_channel(1).await;
    assert_eq!(c.queue_counts(1, "small").await, (1, 0));
    c.close().await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_failure_is_internal_error_on_the_connection() {
    let mut f = Fixture::new();
    // a file where the queue's log directory would go: opening the log fails
    let vhost_dir = f.data_dir().join("queues").join("%2f");
    std::fs::create_dir_all(&vhost_dir).unwrap();
    std::fs::write(vhost_dir.join("blocked"), b"not a directory").unwrap();
    let mut c = f.connect().await;
    let reply = c.rpc(1, queue_declare("transient-is-fine")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            durable: true,
            ..declare_queue("blocked")
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 541, "{close:?}");
    assert!(
        close.text.starts_with("INTERNAL_ERROR - storage failure: "),
        "{close:?}"
    );
    assert_eq!((close.class_id, close.method_id), (50, 10));
    drop(c);
    // the broker goes on serving
    let mut c = f.connect().await;
    let reply = c.rpc(1, queue_declare("after-failure")).await;
    assert!(
        matches!(reply, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{reply:?}"
    );
    c.close().await;
    f.finish().await;
}
