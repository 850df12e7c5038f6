//! A running job reports itself to Eddy's management API (`PUT /api/jobs/<name>`), so the
//! console and `/api/jobs` show it: state, workers, the latest complete checkpoint, records
//! read and written, and their rates. Reports go every [`EVERY`] over plain HTTP/1.1; a
//! broker that is not there is tolerated (the job does not depend on being watched).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::now_ms;

/// How often a report goes out.
pub const EVERY: Duration = Duration::from_secs(2);

/// Counters every worker of a process adds to.
#[derive(Default)]
pub(crate) struct JobStats {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    /// The latest complete checkpoint's epoch + 1 (0: none yet).
    pub(crate) checkpoint: AtomicU64,
}

impl JobStats {
    pub(crate) fn checkpointed(&self, epoch: u64) {
        self.checkpoint
            .fetch_max(epoch.saturating_add(1), Ordering::Relaxed);
    }
}

/// Where reports go.
#[derive(Clone, Debug)]
pub struct ReportTo {
    /// `host:port` of the management API (http only).
    pub addr: String,
    /// Basic credentials.
    pub user: String,
    /// Basic credentials.
    pub password: String,
}

impl ReportTo {
    /// From `http://host:port` (credentials from `EDDY_USER` / `EDDY_PASSWORD`, default
    /// guest/guest).
    pub fn parse(url: &str) -> Result<ReportTo, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--report {url}: only http:// URLs"))?;
        let addr = rest.trim_end_matches('/').to_owned();
        if !addr.contains(':') || addr.contains('/') {
            return Err(format!("--report {url}: expected http://HOST:PORT"));
        }
        Ok(ReportTo {
            addr,
            user: std::env::var("EDDY_USER").unwrap_or_else(|_| "guest".into()),
            password: std::env::var("EDDY_PASSWORD").unwrap_or_else(|_| "guest".into()),
        })
    }

    fn put(&self, path: &str, body: &str) -> Result<u16, String> {
        use base64::Engine;
        let sock = self
            .addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let mut s =
            TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).map_err(|e| e.to_string())?;
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "a malformed HTTP response".to_owned())
    }
}

/// Percent-encode a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The reporting thread of one process.
pub(crate) struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    to: ReportTo,
    path: String,
    stats: Arc<JobStats>,
    fixed: serde_json::Value,
}

impl Reporter {
    /// Start reporting `name` (with `fixed` fields in every report).
    pub(crate) fn start(
        to: ReportTo,
        name: &str,
        stats: Arc<JobStats>,
        fixed: serde_json::Value,
    ) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/api/jobs/{}", segment(name));
        let (s, t, p, st, f) = (
            stop.clone(),
            to.clone(),
            path.clone(),
            stats.clone(),
            fixed.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("eddy-job-report".into())
            .spawn(move || {
                let mut last = (Instant::now(), 0u64, 0u64);
                let mut warned = false;
                while !s.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let (i, o) = (
                        st.records_in.load(Ordering::Relaxed),
                        st.records_out.load(Ordering::Relaxed),
                    );
                    let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    let body = report(
                        &f,
                        &st,
                        "running",
                        (i - last.1) as f64 / secs,
                        (o - last.2) as f64 / secs,
                    );
                    last = (now, i, o);
                    match t.put(&p, &body) {
                        Ok(c) if c < 300 => warned = false,
                        Ok(c) if !warned => {
                            tracing::warn!(
                                "the management API refused the job's report (HTTP {c})"
                            );
                            warned = true;
                        }
                        Err(e) if !warned => {
                            tracing::debug!("cannot report the job to {}: {e}", t.addr);
                            warned = true;
                        }
                        _ => {}
                    }
                    // sleep in small steps so a finished job does not wait
                    let until = Instant::now() + EVERY;
                    while Instant::now() < until && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .ok();
        Reporter {
            stop,
            thread,
            to,
            path,
            stats,
            fixed,
        }
    }

    /// Stop, with a last report of the final state.
    pub(crate) fn finish(mut self, state: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let body = report(&self.fixed, &self.stats, state, 0.0, 0.0);
        let _ = self.to.put(&self.path, &body);
    }
}

fn report(
    fixed: &serde_json::Value,
    st: &JobStats,
    state: &str,
    in_rate: f64,
    out_rate: f64,
) -> String {
    let cp = st.checkpoint.load(Ordering::Relaxed);
    let mut v = fixed.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), state.into());
        o.insert(
            "records_in".into(),
            st.records_in.load(Ordering::Relaxed).into(),
        );
        o.insert(
            "records_out".into(),
            st.records_out.load(Ordering::Relaxed).into(),
        );
        o.insert("records_in_rate".into(), in_rate.into());
        o.insert("records_out_rate".into(), out_rate.into());
        let last = if cp == 0 || cp == u64::MAX {
            serde_json::Value::Null
        } else {
            (cp - 1).into()
        };
        o.insert("last_checkpoint".into(), last);
        o.insert("updated_at".into(), now_ms().into());
    }
    v.to_string()
}
