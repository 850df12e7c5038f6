//! `eddy queues|exchanges|topics|groups|users|vhosts|connections|permissions|definitions …`:
//! admin verbs over the management API, printed as tables (or the API's JSON with `--json`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the API is and who asks.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The management API [default: http://127.0.0.1:15672]
    #[arg(
        long,
        env = "EDDY_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    /// The user to log in to the API as
    #[arg(
        long = "api-user",
        env = "EDDY_USER",
        default_value = "guest",
        global = true
    )]
    api_user: String,
    /// Their password
    #[arg(
        long = "api-password",
        env = "EDDY_PASSWORD",
        default_value = "guest",
        global = true
    )]
    api_password: String,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    /// With an https:// --url: the CA (PEM) that signed the server's certificate
    #[arg(long, env = "EDDY_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
}

/// `eddy queues …`
#[derive(Subcommand, Debug)]
pub enum Queues {
    /// Queues with depth, consumers, rates and the queueing view.
    List {
        /// Only this vhost
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Declare a queue.
    Declare {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Not durable
        #[arg(long)]
        transient: bool,
    },
    /// Delete a queue.
    Delete {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Drop a queue's ready messages.
    Purge {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `eddy topics …`
#[derive(Subcommand, Debug)]
pub enum Topics {
    /// Topics with partitions and messages.
    List,
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// Delete a topic.
    Delete { name: String },
}

/// `eddy users …`
#[derive(Subcommand, Debug)]
pub enum Users {
    /// Users and their tags.
    List,
    /// Add (or replace) a user.
    Add {
        name: String,
        #[arg(long)]
        password: String,
        /// Comma-separated: administrator, monitoring, management, policymaker
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete a user.
    Delete { name: String },
    /// Change a user's password (tags kept).
    Passwd {
        name: String,
        #[arg(long)]
        password: String,
    },
}

/// `eddy vhosts …`
#[derive(Subcommand, Debug)]
pub enum Vhosts {
    /// Vhosts.
    List,
    /// Add a vhost.
    Add { name: String },
    /// Delete a vhost and everything in it.
    Delete { name: String },
}

/// `eddy permissions …`
#[derive(Subcommand, Debug)]
pub enum Permissions {
    /// Every user's permissions.
    List,
    /// Set a user's configure/write/read patterns in a vhost.
    Set {
        user: String,
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// Remove a user's permissions in a vhost.
    Clear {
        user: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `eddy definitions …`
#[derive(Subcommand, Debug)]
pub enum Definitions {
    /// Write users, vhosts, permissions, exchanges, queues, bindings and topics to FILE (- for
    /// standard output).
    Export { file: String },
    /// Load a definitions file (RabbitMQ's format, or one exported here).
    Import { file: String },
}

/// `eddy cluster …`
#[derive(Subcommand, Debug)]
pub enum Cluster {
    /// Every node (up, addresses) and each Raft group on the node asked (leader, term, commit
    /// index, followers' lag).
    Status,
    /// Add a node to the cluster: start it first (`eddy serve --node-id ID --cluster-peers`
    /// naming the cluster's nodes and itself), then add it; it catches up and becomes a voter.
    AddNode {
        /// Its node id.
        id: u64,
    },
    /// Remove a node from the cluster (refused while it holds partition replicas).
    RemoveNode {
        /// Its node id.
        id: u64,
    },
}

/// `eddy cluster status`
pub fn cluster(conn: &Conn, cmd: Cluster) -> Result<()> {
    match cmd {
        Cluster::AddNode { id } => {
            conn.call("PUT", &format!("/api/cluster/nodes/{id}"), None)?;
            println!("node {id} added");
            Ok(())
        }
        Cluster::RemoveNode { id } => {
            conn.call("DELETE", &format!("/api/cluster/nodes/{id}"), None)?;
            println!("node {id} removed");
            Ok(())
        }
        Cluster::Status => {
            let status = conn.get("/api/cluster")?;
            if conn.json {
                print(conn, &status, &[]);
                return Ok(());
            }
            println!("nodes (as node {} sees them):", status["node_id"]);
            print(
                conn,
                &status["nodes"],
                &[
                    ("id", "/id"),
                    ("up", "/up"),
                    ("cluster", "/cluster"),
                    ("kafka", "/kafka"),
                    ("amqp", "/amqp"),
                    ("http", "/http"),
                ],
            );
            println!();
            let groups: Vec<Value> = status["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut g| {
                    let lag: Vec<String> = g["followers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|f| format!("{}:{}", f["id"], f["lag"]))
                        .collect();
                    g["follower_lag"] = json!(lag.join(" "));
                    g
                })
                .collect();
            println!("raft groups on node {}:", status["node_id"]);
            print(
                conn,
                &Value::Array(groups),
                &[
                    ("group", "/group"),
                    ("state", "/state"),
                    ("leader", "/leader"),
                    ("term", "/term"),
                    ("commit", "/commit_index"),
                    ("replicas", "/replicas"),
                    ("follower:lag", "/follower_lag"),
                ],
            );
            Ok(())
        }
    }
}

/// `eddy X list` for read-only resources.
#[derive(Subcommand, Debug)]
pub enum ListOnly {
    /// List them.
    List,
}

/// A byte stream, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Conn {
    /// One request; the JSON answer (Null for an empty body). API errors become errors with
    /// the API's reason.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (tls, rest) = match (
            self.url.strip_prefix("http://"),
            self.url.strip_prefix("https://"),
        ) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => bail!(
                "--url {}: expected http://HOST:PORT or https://HOST:PORT",
                self.url
            ),
        };
        let (host, base) = match rest.split_once('/') {
            Some((h, b)) => (h, format!("/{}", b.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        let name = host
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let host = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            host.to_owned()
        } else {
            format!("{host}:{}", if tls { 443 } else { 80 })
        };
        let tcp = TcpStream::connect(&host)
            .with_context(|| format!("cannot reach the management API at {}", self.url))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut s: Box<dyn ReadWrite> = if tls {
            Box::new(self.tls(tcp, &name)?)
        } else {
            Box::new(tcp)
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.api_user, self.api_password));
        let req = format!(
            "{method} {base}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        if let Err(e) = s.read_to_end(&mut raw) {
            // a TLS peer that closes without close_notify, after the whole response
            if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
                return Err(e.into());
            }
        }
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("a malformed HTTP response")?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a malformed HTTP status line")?;
        let text = &raw[split + 4..];
        let v: Value = if text.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(text).context("the API answered with something not JSON")?
        };
        if status >= 400 {
            let reason = v["reason"].as_str().unwrap_or("").to_owned();
            bail!("{method} {path}: HTTP {status}: {reason}");
        }
        Ok(v)
    }

    /// A TLS session over `tcp`, the server checked against `--cacert`.
    fn tls(
        &self,
        tcp: TcpStream,
        name: &str,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        use rustls_pki_types::pem::PemObject;
        let ca = self
            .cacert
            .as_ref()
            .context("an https:// --url needs --cacert FILE (the CA that signed the server)")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots
                .add(c.with_context(|| format!("{} is not PEM", ca.display()))?)
                .with_context(|| format!("a certificate in {}", ca.display()))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name} is not a host name or address"))?;
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }

    fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    fn done(&self, what: String) {
        if !self.json {
            println!("{what}");
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Print `rows` (JSON objects) as a table of `cols` (header, JSON pointer), or as JSON.
fn print(conn: &Conn, rows: &Value, cols: &[(&str, &str)]) {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|(_, p)| cell(r.pointer(p).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|(h, _)| h.len()).collect();
    for r in &table {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(cols.iter().map(|(h, _)| h.to_string()).collect());
    for r in table {
        line(r);
    }
}

/// `eddy queues …`
pub fn queues(conn: &Conn, cmd: Queues) -> Result<()> {
    match cmd {
        Queues::List { vhost } => {
            let path = match vhost {
                Some(v) => format!("/api/queues/{}", enc(&v)),
                None => "/api/queues".into(),
            };
            let rows = conn.get(&path)?;
            print(
                conn,
                &rows,
                &[
                    ("vhost", "/vhost"),
                    ("name", "/name"),
                    ("type", "/type"),
                    ("ready", "/messages_ready"),
                    ("unacked", "/messages_unacknowledged"),
                    ("consumers", "/consumers"),
                    ("publish/s", "/message_stats/publish_details/rate"),
                    ("λ/s", "/queueing/arrival_rate"),
                    ("μ/s", "/queueing/service_rate"),
                    ("ρ", "/queueing/utilisation"),
                    ("W s", "/queueing/mean_time_in_queue_seconds"),
                    ("drain s", "/queueing/drain_seconds"),
                ],
            );
        }
        Queues::Declare {
            name,
            vhost,
            transient,
        } => {
            conn.call(
                "PUT",
                &format!("/api/queues/{}/{}", enc(&vhost), enc(&name)),
                Some(&json!({"durable": !transient})),
            )?;
            conn.done(format!("queue {name} declared"));
        }
        Queues::Delete { name, vhost } => {
            conn.call(
                "DELETE",
                &format!("/api/queues/{}/{}", enc(&vhost), enc(&name)),
                None,
            )?;
            conn.done(format!("queue {name} deleted"));
        }
        Queues::Purge { name, vhost } => {
            conn.call(
                "DELETE",
                &format!("/api/queues/{}/{}/contents", enc(&vhost), enc(&name)),
                None,
            )?;
            conn.done(format!("queue {name} purged"));
        }
    }
    Ok(())
}

/// `eddy exchanges list`
pub fn exchanges(conn: &Conn) -> Result<()> {
    let rows = conn.get("/api/exchanges")?;
    print(
        conn,
        &rows,
        &[
            ("vhost", "/vhost"),
            ("name", "/name"),
            ("type", "/type"),
            ("durable", "/durable"),
            ("auto_delete", "/auto_delete"),
        ],
    );
    Ok(())
}

/// `eddy topics …`
pub fn topics(conn: &Conn, cmd: Topics) -> Result<()> {
    match cmd {
        Topics::List => {
            let mut rows = conn.get("/api/topics")?;
            if let Some(a) = rows.as_array_mut() {
                for t in a {
                    let n = t["partitions"].as_array().map_or(0, Vec::len);
                    t["partition_count"] = json!(n);
                }
            }
            print(
                conn,
                &rows,
                &[
                    ("name", "/name"),
                    ("partitions", "/partition_count"),
                    ("messages", "/messages"),
                ],
            );
        }
        Topics::Create { name, partitions } => {
            conn.call(
                "PUT",
                &format!("/api/topics/{}", enc(&name)),
                Some(&json!({"partitions": partitions})),
            )?;
            conn.done(format!("topic {name} created with {partitions} partitions"));
        }
        Topics::Delete { name } => {
            conn.call("DELETE", &format!("/api/topics/{}", enc(&name)), None)?;
            conn.done(format!("topic {name} deleted"));
        }
    }
    Ok(())
}

/// `eddy groups list`
pub fn groups(conn: &Conn) -> Result<()> {
    let groups = conn.get("/api/groups")?;
    if conn.json {
        return {
            print(conn, &groups, &[]);
            Ok(())
        };
    }
    let mut rows = Vec::new();
    for g in groups.as_array().cloned().unwrap_or_default() {
        for o in g["offsets"].as_array().cloned().unwrap_or_default() {
            rows.push(json!({
                "group": g["group"], "topic": o["topic"], "partition": o["partition"],
                "committed": o["committed"], "end": o["end_offset"], "lag": o["lag"],
            }));
        }
    }
    print(
        conn,
        &Value::Array(rows),
        &[
            ("group", "/group"),
            ("topic", "/topic"),
            ("partition", "/partition"),
            ("committed", "/committed"),
            ("end", "/end"),
            ("lag", "/lag"),
        ],
    );
    Ok(())
}

/// `eddy connections list`
pub fn connections(conn: &Conn) -> Result<()> {
    let rows = conn.get("/api/connections")?;
    print(
        conn,
        &rows,
        &[
            ("name", "/name"),
            ("protocol", "/protocol"),
            ("user", "/user"),
            ("vhost", "/vhost"),
            ("channels", "/channels"),
            ("recv_oct", "/recv_oct"),
            ("send_oct", "/send_oct"),
        ],
    );
    Ok(())
}

/// `eddy users …`
pub fn users(conn: &Conn, cmd: Users) -> Result<()> {
    match cmd {
        Users::List => {
            let rows = conn.get("/api/users")?;
            print(conn, &rows, &[("name", "/name"), ("tags", "/tags")]);
        }
        Users::Add {
            name,
            password,
            tags,
        } => {
            conn.call(
                "PUT",
                &format!("/api/users/{}", enc(&name)),
                Some(&json!({"password": password, "tags": tags})),
            )?;
            conn.done(format!("user {name} added"));
        }
        Users::Delete { name } => {
            conn.call("DELETE", &format!("/api/users/{}", enc(&name)), None)?;
            conn.done(format!("user {name} deleted"));
        }
        Users::Passwd { name, password } => {
            let u = conn.get(&format!("/api/users/{}", enc(&name)))?;
            conn.call(
                "PUT",
                &format!("/api/users/{}", enc(&name)),
                Some(&json!({"password": password, "tags": u["tags"]})),
            )?;
            conn.done(format!("password of {name} changed"));
        }
    }
    Ok(())
}

/// `eddy vhosts …`
pub fn vhosts(conn: &Conn, cmd: Vhosts) -> Result<()> {
    match cmd {
        Vhosts::List => {
            let rows = conn.get("/api/vhosts")?;
            print(conn, &rows, &[("name", "/name"), ("messages", "/messages")]);
        }
        Vhosts::Add { name } => {
            conn.call("PUT", &format!("/api/vhosts/{}", enc(&name)), None)?;
            conn.done(format!("vhost {name} added"));
        }
        Vhosts::Delete { name } => {
            conn.call("DELETE", &format!("/api/vhosts/{}", enc(&name)), None)?;
            conn.done(format!("vhost {name} deleted"));
        }
    }
    Ok(())
}

/// `eddy permissions …`
pub fn permissions(conn: &Conn, cmd: Permissions) -> Result<()> {
    match cmd {
        Permissions::List => {
            let rows = conn.get("/api/permissions")?;
            print(
                conn,
                &rows,
                &[
                    ("user", "/user"),
                    ("vhost", "/vhost"),
                    ("configure", "/configure"),
                    ("write", "/write"),
                    ("read", "/read"),
                ],
            );
        }
        Permissions::Set {
            user,
            vhost,
            configure,
            write,
            read,
        } => {
            conn.call(
                "PUT",
                &format!("/api/permissions/{}/{}", enc(&vhost), enc(&user)),
                Some(&json!({"configure": configure, "write": write, "read": read})),
            )?;
            conn.done(format!("permissions of {user} in {vhost} set"));
        }
        Permissions::Clear { user, vhost } => {
            conn.call(
                "DELETE",
                &format!("/api/permissions/{}/{}", enc(&vhost), enc(&user)),
                None,
            )?;
            conn.done(format!("permissions of {user} in {vhost} cleared"));
        }
    }
    Ok(())
}

/// `eddy definitions …`
pub fn definitions(conn: &Conn, cmd: Definitions) -> Result<()> {
    match cmd {
        Definitions::Export { file } => {
            let d = conn.get("/api/definitions")?;
            let text = serde_json::to_string_pretty(&d)? + "\n";
            if file == "-" {
                print!("{text}");
            } else {
                std::fs::write(&file, text).with_context(|| format!("writing {file}"))?;
                eprintln!("definitions written to {file}");
            }
        }
        Definitions::Import { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let d: Value = serde_json::from_str(&text)
                .with_context(|| format!("{file} is not a JSON definitions file"))?;
            conn.call("POST", "/api/definitions", Some(&d))?;
            conn.done(format!("definitions imported from {file}"));
        }
    }
    Ok(())
}
