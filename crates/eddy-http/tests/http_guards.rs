//! What the HTTP front end refuses from careless or hostile clients, each tested in process
//! over an in-memory connection: a body where none is expected (refused unread, after the
//! login), a body that is not `application/json` (415), a state-changing request from a
//! foreign `Origin` (403), framing with both `Content-Length` and `Transfer-Encoding` (the
//! connection closes after the response), queue names over 255 bytes and bodies that are no
//! JSON object (400), blank passwords; that the console cannot be framed; and that `/metrics`
//! shows a management user only what the API shows it.

mod common;

use common::*;

// ---------------------------------------------------------------- bodies and logins

#[tokio::test(flavor = "multi_thread")]
async fn a_body_where_none_is_expected_is_refused_unread() {
    let f = Fixture::new();
    let guest = format!("Authorization: {}\r\n", basic("guest", "guest"));
    // each announces 64 MiB and sends none of it: an answer within the deadline means nothing
    // waited for the body
    let big = "Content-Length: 67108864\r\n";
    for (what, head, status) in [
        (
            "GET /metrics with a body, logged in",
            format!("GET /metrics HTTP/1.1\r\n{guest}{big}\r\n"),
            400,
        ),
        (
            "GET /metrics with a body, no login",
            format!("GET /metrics HTTP/1.1\r\n{big}\r\n"),
            401,
        ),
        (
            "POST /metrics with a chunked body, no login",
            "POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            401,
        ),
        (
            "GET /api/overview with a body",
            format!("GET /api/overview HTTP/1.1\r\n{guest}{big}\r\n"),
            400,
        ),
        (
            "DELETE of a queue with a body",
            format!("DELETE /api/queues/%2F/q HTTP/1.1\r\n{guest}{big}\r\n"),
            400,
        ),
        (
            "a body to the console's page",
            format!("POST / HTTP/1.1\r\n{big}\r\n"),
            400,
        ),
        (
            "a body to a page that does not exist",
            format!("PUT /nowhere HTTP/1.1\r\n{big}\r\n"),
            400,
        ),
        (
            "a body to the API without a login",
            format!("PUT /api/queues/%2F/q HTTP/1.1\r\n{big}\r\n"),
            401,
        ),
    ] {
        let mut c = f.connect();
        c.send(head.as_bytes()).await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status == 400 {
            assert!(
                r.reason().contains("takes no request body"),
                "{what}: {}",
                r.text()
            );
        }
        // the body was not read, so the connection cannot go on
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        c.expect_closed().await;
    }
    // without a body the same paths answer, and keep the connection
    let mut c = f.connect();
    c.send(&request("GET", "/metrics", &guest, "")).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 200);
    c.send(&request("GET", "/", "", "")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    // a failed login without a body keeps the connection too
    c.send(&request("GET", "/metrics", "", "")).await;
    assert_eq!(c.response().await.unwrap().status, 401);
    c.send(&request("GET", "/api/whoami", &guest, "")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_must_be_json() {
    let f = Fixture::new();
    let guest = format!("Authorization: {}\r\n", basic("guest", "guest"));
    // what a page on another site can send without asking first: a new administrator
    let evil = r#"{"users":[{"name":"mallory","password":"pw","tags":"administrator"}]}"#;
    for (what, ct) in [
        ("text/plain", "Content-Type: text/plain\r\n"),
        (
            "a form",
            "Content-Type: application/x-www-form-urlencoded\r\n",
        ),
        ("no Content-Type", ""),
        (
            "JSON's type as a parameter only",
            "Content-Type: text/plain; x=application/json\r\n",
        ),
    ] {
        let r = f
            .call(&request(
                "POST",
                "/api/definitions",
                &format!("{guest}{ct}"),
                evil,
            ))
            .await;
        assert_eq!(r.status, 415, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "unsupported_media_type");
        assert!(r.reason().contains("application/json"), "{}", r.text());
        assert!(f.broker.users().get("mallory").is_none(), "{what}");
    }
    // a form's POST with no fields has an empty body, and still its type
    let r = f
        .call(&request(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            &format!("{guest}Content-Type: application/x-www-form-urlencoded\r\n"),
            "",
        ))
        .await;
    assert_eq!(r.status, 415, "{}", r.text());
    // JSON's type, with or without a charset and in any case, is taken
    let r = f
        .call(&request(
            "POST",
            "/api/definitions",
            &format!("{guest}Content-Type: Application/JSON; charset=utf-8\r\n"),
            r#"{"vhosts":[{"name":"typed"}]}"#,
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(f.broker.vhost("typed").is_some());
    // no body and no type (curl -X PUT) is fine
    let r = f
        .call(&request("PUT", "/api/vhosts/bare", &guest, ""))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_changing_request_from_a_foreign_origin_is_refused() {
    let f = Fixture::new();
    let evil = r#"{"users":[{"name":"mallory","password":"pw","tags":"administrator"}]}"#;
    let with_origin = |method: &str, path: &str, origin: &str, body: &str| {
        let mut raw = json_request(method, path, body);
        let at = raw.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        raw.splice(at..at, format!("Origin: {origin}\r\n").into_bytes());
        raw
    };
    for origin in [
        "http://evil.example",
        "http://127.0.0.1:8080",
        "https://127.0.0.1:15673",
        "null",
    ] {
        let r = f
            .call(&with_origin("POST", "/api/definitions", origin, evil))
            .await;
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
        assert!(r.reason().contains("cross-origin"), "{}", r.text());
        assert!(f.broker.users().get("mallory").is_none());
    }
    f.broker
        .vhost("/")
        .unwrap()
        .declare_queue(
            eddy_broker::QueueDeclare {
                name: "kept".into(),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let r = f
        .call(&with_origin(
            "DELETE",
            "/api/queues/%2F/kept",
            "http://evil.example",
            "",
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(f.broker.vhost("/").unwrap().queue("kept").is_some());
    // reading from anywhere is left to the browser's same-origin policy
    let r = f
        .call(&with_origin(
            "GET",
            "/api/overview",
            "http://evil.example",
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    // the console's own origin (default port or not, as a proxy in front names it), and no
    // Origin at all (curl, the CLI), are let through
    for origin in ["http://127.0.0.1:15672", "HTTP://127.0.0.1:15672"] {
        let r = f
            .call(&with_origin(
                "PUT",
                "/api/vhosts/from-console",
                origin,
                "{}",
            ))
            .await;
        assert!(matches!(r.status, 201 | 204), "{origin}: {}", r.text());
    }
    let r = f
        .call(
            format!(
                "PUT /api/vhosts/proxied HTTP/1.1\r\nHost: 10.0.0.5:15672\r\n\
                 X-Forwarded-Host: broker.example.com\r\nOrigin: https://broker.example.com\r\n\
                 Authorization: {}\r\nContent-Length: 0\r\n\r\n",
                basic("guest", "guest")
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = f
        .call(
            format!(
                "PUT /api/vhosts/plain HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:80\r\n\
                 Authorization: {}\r\nContent-Length: 0\r\n\r\n",
                basic("guest", "guest")
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = f
        .call(&json_request("POST", "/api/definitions", evil))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(f.broker.users().get("mallory").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_cannot_be_framed() {
    let f = Fixture::new();
    let r = f.call(&request("GET", "/", "", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // the API's answers too
    let r = f.call(&json_request("GET", "/api/overview", "")).await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
}

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

#[tokio::test(flavor = "multi_thread")]
async fn a_blank_password_never_logs_in() {
    let f = Fixture::new();
    // as RabbitMQ, the API takes a blank password, but it logs no one in
    let r = f
        .call(&json_request(
            "PUT",
            "/api/users/blank",
            r#"{"password":"","tags":"administrator"}"#,
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = f
        .call(&request(
            "GET",
            "/api/overview",
            &format!("Authorization: {}\r\n", basic("blank", "")),
            "",
        ))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.reason().contains("blank password"), "{}", r.text());
    let r = f
        .call(&request(
            "GET",
            "/metrics",
            &format!("Authorization: {}\r\n", basic("blank", "")),
            "",
        ))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
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
