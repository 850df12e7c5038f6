//! One HTTP/1.1 connection: requests read with bounds and deadlines (keep-alive, chunked
//! bodies, `Expect: 100-continue`), each admitted on its head before a body is read
//! (credentials, a body only where one is expected and only JSON, no foreign origin on a
//! change), responses written in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::api::{self, Api};
use crate::router;
use crate::server::{self, read_body, read_request, write_response, ReadError, Request};

/// How long a keep-alive connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);
/// How long a request's head, and then its body, may take to arrive once begun, and a
/// response to be taken by the client.
const TRANSFER: Duration = Duration::from_secs(30);

/// Serve one connection (plain or TLS) until the client closes it.
/// On shutdown an idle connection closes at once and a busy one after its response.
pub(crate) async fn serve_connection(api: Arc<Api>, conn: eddy_net::Conn) {
    let peer = conn.peer;
    let mut shutdown = conn.shutdown;
    let (rd, mut wr) = conn.stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        if *shutdown.borrow() {
            let _ = tokio::time::timeout(TRANSFER, wr.shutdown()).await;
            return;
        }
        // the first byte may take IDLE; the rest of the head, TRANSFER
        tokio::select! {
            r = tokio::time::timeout(IDLE, rd.fill_buf()) => match r {
                Ok(Ok(b)) if !b.is_empty() => {}
                _ => return,
            },
            // a dropped sender is a shutdown too
            r = shutdown.changed() => if r.is_err() { return } else { continue },
        }
        let bad = |status: u16, why: String| {
            api::ApiError {
                status,
                error: "bad_request",
                reason: why,
            }
            .response()
        };
        let mut req = match tokio::time::timeout(TRANSFER, read_request(&mut rd, peer)).await {
            Err(_) | Ok(Ok(None)) | Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Bad(status, why))) => {
                let _ = write_response(&mut wr, &bad(status, why), false, true).await;
                return;
            }
            Ok(Ok(Some(r))) => r,
        };
        // credentials, where a body may come, its type and the origin are checked before a
        // body is read: no one without a login makes the server hold a body, and no path that
        // takes none reads one
        let has_body = req.body_framing != server::Framing::Length(0);
        let user = match router::admit(&api, &req) {
            Ok(user) => user,
            Err(refusal) => {
                // an unread body would be taken for the next request
                let close = has_body || req.must_close || asks_close(&req);
                let head = req.method == "HEAD";
                let written =
                    tokio::time::timeout(TRANSFER, write_response(&mut wr, &refusal, head, close))
                        .await;
                if close || !matches!(written, Ok(Ok(()))) {
                    let _ = tokio::time::timeout(TRANSFER, wr.shutdown()).await;
                    return;
                }
                continue;
            }
        };
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
            && wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        match tokio::time::timeout(TRANSFER, read_body(&mut rd, &mut req)).await {
            Err(_) | Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Bad(status, why))) => {
                let _ = write_response(&mut wr, &bad(status, why), false, true).await;
                return;
            }
            Ok(Ok(())) => {}
        }
        let close = req.must_close || asks_close(&req);
        let head = req.method == "HEAD";
        let resp = router::route(&api, req, user).await;
        let written =
            tokio::time::timeout(TRANSFER, write_response(&mut wr, &resp, head, close)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        if close {
            // over TLS this sends close_notify, so the client sees a clean end
            let _ = tokio::time::timeout(TRANSFER, wr.shutdown()).await;
            return;
        }
    }
}

/// Whether the client asked for the connection to close after this request.
fn asks_close(req: &Request) -> bool {
    req.header("connection")
        .is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}
