//! What the HTTP front end refuses from careless or hostile clients, each tested in process
//! over an in-memory connection: framing with both `Content-Length` and `Transfer-Encoding`
//! (the connection closes after the response), queue names over 255 bytes and bodies that are
//! no JSON object (400); and that `/metrics` shows a management user only what the API shows
//! it.

mod common;

use common::*;

// ---------------------------------------------------------------- framing

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_closes_after_the_response() {
    let f = Fixture::new();
    let mut c = f.connect();
    // Transfer-Encoding decides the body (RFC 9112 6.1): the 2 chunked bytes, not 50; what
    // follows in the same write is not taken as another request
    c.send(
        format!(
            "PUT /api/vhosts/smuggled HTTP/1.1\r\nHost: h\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: 50\r\n\
             Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n\
             GET /api/overview HTTP/1.1\r\nHost: h\r\n\r\n",
            basic("guest", "guest")
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await.expect("a response");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_closed().await;
    // a Transfer-Encoding that does not end in chunked leaves the length unknown: 400
    let mut c = f.connect();
    c.send(
        b"POST /api/definitions HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    )
    .await;
    let r = c.response().await.expect("a response");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.reason().contains("Transfer-Encoding"), "{}", r.text());
    c.expect_closed().await;
    // two different Content-Lengths: 400
    let mut c = f.connect();
    c.send(b"PUT /api/vhosts/x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}")
        .await;
    let r = c.response().await.expect("a response");
    assert_eq!(r.status, 400, "{}", r.text());
    c.expect_closed().await;
}

// ---------------------------------------------------------------- clear errors

#[tokio::test(flavor = "multi_thread")]
async fn long_names_and_bodies_that_are_no_object_are_400() {
    let f = Fixture::new();
    let long = "q".repeat(256);
    for (path, body) in [
        (format!("/api/queues/%2F/{long}"), "{}"),
        (format!("/api/exchanges/%2F/{long}"), r#"{"type":"direct"}"#),
    ] {
        let r = f.call(&json_request("PUT", &path, body)).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.reason().contains("255"), "{}", r.text());
    }
    assert!(f.broker.vhost("/").unwrap().queue(&long).is_none());
    // 255 bytes of a multi-byte name are fine, 256 are not
    let fits = "é".repeat(127) + "q";
    let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let r = f
        .call(&json_request(
            "PUT",
            &format!("/api/queues/%2F/{}", enc(&fits)),
            "{}",
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = f
        .call(&json_request(
            "PUT",
            &format!("/api/queues/%2F/{}", enc(&"é".repeat(128))),
            "{}",
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // a definitions import names its queues in the body
    let r = f
        .call(&json_request(
            "POST",
            "/api/definitions",
            &format!(r#"{{"queues":[{{"name":"{long}","vhost":"/"}}]}}"#),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(f.broker.vhost("/").unwrap().queue(&long).is_none());
    // JSON that is not an object
    for body in ["[1, 2]", "\"durable\"", "null", "42", "true"] {
        for (method, path) in [
            ("PUT", "/api/queues/%2F/shaped"),
            ("POST", "/api/definitions"),
            ("PUT", "/api/users/shaped"),
            ("POST", "/api/exchanges/%2F/amq.default/publish"),
        ] {
            let r = f.call(&json_request(method, path, body)).await;
            assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
            assert!(
                r.reason().contains("must be a JSON object"),
                "{method} {path} {body}: {}",
                r.text()
            );
        }
    }
    assert!(f.broker.vhost("/").unwrap().queue("shaped").is_none());
    assert!(f.broker.users().get("shaped").is_none());
}

// ---------------------------------------------------------------- who sees what

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_a_user_what_the_api_shows_it() {
    let f = Fixture::new();
    let declare = |vhost: &str, name: &str| {
        f.broker
            .vhost(vhost)
            .unwrap()
            .declare_queue(
                eddy_broker::QueueDeclare {
                    name: name.into(),
                    ..Default::default()
                },
                0,
            )
            .unwrap();
    };
    f.broker.declare_vhost("secret").unwrap();
    f.broker.declare_vhost("mine").unwrap();
    declare("secret", "secret-q");
    declare("/", "default-q");
    declare("mine", "mine-q");
    f.broker
        .create_topic("hidden-topic", 1, Default::default())
        .unwrap();
    // a management user with permissions in `mine` only
    f.add_user("mgr", "pw", &["management"], Some("mine"));
    let as_mgr = format!("Authorization: {}\r\n", basic("mgr", "pw"));
    let api = f.call(&request("GET", "/api/queues", &as_mgr, "")).await;
    let names: Vec<String> = api
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["mine-q"]);
    let r = f.call(&request("GET", "/metrics", &as_mgr, "")).await;
    assert_eq!(r.status, 200);
    let m = r.text();
    assert!(m.contains(r#"queue="mine-q""#), "{m}");
    for hidden in [
        "secret-q",
        "default-q",
        "secret",
        "hidden-topic",
        "eddy_uptime_seconds",
        "eddy_memory_used_bytes",
    ] {
        assert!(
            !m.contains(hidden),
            "{hidden} in a management user's metrics:\n{m}"
        );
    }
    // a monitoring user (and an administrator) sees everything
    f.add_user("mon", "pw", &["monitoring"], None);
    for (user, pw) in [("mon", "pw"), ("guest", "guest")] {
        let r = f
            .call(&request(
                "GET",
                "/metrics",
                &format!("Authorization: {}\r\n", basic(user, pw)),
                "",
            ))
            .await;
        let m = r.text();
        for shown in [
            r#"queue="secret-q""#,
            r#"queue="default-q""#,
            r#"queue="mine-q""#,
            r#"topic="hidden-topic""#,
            "eddy_uptime_seconds",
        ] {
            assert!(m.contains(shown), "{user}: no {shown}");
        }
    }
}
