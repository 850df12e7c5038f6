//! The `eddy` binary: configuration (flags, `EDDY_*` environment, TOML), the `serve` command
//! that wires the broker to its listeners, and `bench`. Only this crate reads configuration.

mod admin;
mod alloc;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use eddy_broker::{Broker, BrokerConfig, FsyncPolicy};
use serde::Deserialize;

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

#[derive(Parser, Debug)]
#[command(name = "eddy", version, about = "Eddy: a message broker (AMQP 0-9-1, Kafka) on a durable log", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker. With no flags: data in ./data, AMQP on 127.0.0.1:5672, Kafka on 127.0.0.1:9092, guest/guest from loopback only.
    ///
    /// Precedence: flags > EDDY_* environment variables > --config TOML file > defaults.
    Serve(Box<ServeArgs>),
    /// Run a packaged stream job (`eddy run wordcount --input-topic lines --window 5
    /// --output-topic word-counts`). Engine flags: -w N worker threads, -n N processes, -p I
    /// this process, -h FILE hosts (one host:port per process), --checkpoint-dir DIR (resume
    /// from its latest checkpoint), --checkpoint-interval MS, --report URL (the management
    /// API the job reports to; default http://127.0.0.1:15672) or --no-report.
    ///
    /// Jobs: wordcount — count words: --input-file FILE | --input-topic TOPIC [--from-latest]
    /// [--bounded] | --input-queue QUEUE [--amqp URI] [--until-idle SECONDS]; [--window SECONDS] (tumbling event-time windows; without it, running
    /// counts); [--output-topic TOPIC] (exactly-once with --checkpoint-dir; else printed);
    /// [--bootstrap HOST:PORT] (default 127.0.0.1:9092); [--job-name NAME] (default wordcount).
    Run {
        /// The job's name.
        job: String,
        /// Engine flags and the job's own.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Queues over the management API: list (depth, rates, the queueing view), declare,
    /// delete, purge.
    Queues {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Queues,
    },
    /// Exchanges over the management API.
    Exchanges {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::ListOnly,
    },
    /// Topics over the management API: list, create NAME --partitions N, delete.
    Topics {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Topics,
    },
    /// Consumer groups with their committed offsets and lag.
    Groups {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::ListOnly,
    },
    /// Open connections.
    Connections {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::ListOnly,
    },
    /// Users: list, add NAME --password P [--tags T], delete, passwd.
    Users {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Users,
    },
    /// Vhosts: list, add, delete.
    Vhosts {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Vhosts,
    },
    /// Permissions: list, set USER --vhost V --configure RE --write RE --read RE, clear.
    Permissions {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Permissions,
    },
    /// Definitions (RabbitMQ's format plus topics): export FILE, import FILE.
    Definitions {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Definitions,
    },
    /// Load generators that run against Eddy or any peer speaking the same protocol.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// AMQP 0-9-1 publish/consume throughput and latency (works against RabbitMQ too).
    Amqp(eddy_bench::AmqpBenchArgs),
    /// Kafka produce/consume throughput and latency (works against any Kafka broker).
    Kafka(eddy_bench::KafkaBenchArgs),
    /// Nexmark queries (q0 q1 q2 q5 q7) on the stream engine with checkpoints on: events/s and
    /// events/s per core.
    Nexmark(eddy_bench::NexmarkBenchArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Fsync {
    /// fsync before every confirm (group commit: concurrent writers share one fsync)
    Always,
    /// fsync at most every --fsync-interval-ms; confirms wait for it
    Batch,
    /// never fsync on the publish path (confirms after the write to the OS)
    Never,
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// TOML configuration file (keys: data_dir, amqp, fsync, fsync_interval_ms, memory_high_watermark, disk_free_limit, heartbeat, frame_max, segment_bytes, segment_ms, kafka, kafka_advertised, kafka_auto_create_partitions, [[users]] name/password)
    #[arg(long, env = "EDDY_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for metadata and message logs [default: ./data]
    #[arg(long, env = "EDDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// AMQP 0-9-1 listener address [default: 127.0.0.1:5672]
    #[arg(long, env = "EDDY_AMQP")]
    amqp: Option<SocketAddr>,
    /// Kafka listener address [default: 127.0.0.1:9092]
    #[arg(long, env = "EDDY_KAFKA")]
    kafka: Option<SocketAddr>,
    /// Management API, web console and /metrics listener address [default: 127.0.0.1:15672]
    #[arg(long, env = "EDDY_HTTP")]
    http: Option<SocketAddr>,
    /// TLS certificate chain (PEM); with --tls-key, turns on AMQPS, Kafka over TLS and HTTPS
    #[arg(long, env = "EDDY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "EDDY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that TLS clients' certificates must chain to; without it no client
    /// certificate is asked for
    #[arg(long, env = "EDDY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// AMQPS listener address (with TLS) [default: 127.0.0.1:5671]
    #[arg(long, env = "EDDY_AMQPS")]
    amqps: Option<SocketAddr>,
    /// Kafka TLS listener address (SSL / SASL_SSL, with TLS) [default: 127.0.0.1:9093]
    #[arg(long, env = "EDDY_KAFKA_TLS")]
    kafka_tls: Option<SocketAddr>,
    /// HTTPS listener address (with TLS) [default: 127.0.0.1:15671]
    #[arg(long, env = "EDDY_HTTPS")]
    https: Option<SocketAddr>,
    /// Address Kafka clients are told to connect to (Metadata) [default: the --kafka address]
    #[arg(long, env = "EDDY_KAFKA_ADVERTISED")]
    kafka_advertised: Option<String>,
    /// Partitions of topics created automatically (a producer or Metadata request naming an
    /// unknown topic); 0 turns automatic creation off [default: 1]
    #[arg(long, env = "EDDY_KAFKA_AUTO_CREATE_PARTITIONS")]
    kafka_auto_create_partitions: Option<usize>,
    /// When writes are fsynced; a publisher confirm is sent only after it [default: always]
    #[arg(long, env = "EDDY_FSYNC", value_enum)]
    fsync: Option<Fsync>,
    /// With --fsync batch: the longest a write waits for its fsync [default: 5]
    #[arg(long, env = "EDDY_FSYNC_INTERVAL_MS")]
    fsync_interval_ms: Option<u64>,
    /// Block publishers while queued message bytes exceed this [default: 40% of RAM]
    #[arg(long, env = "EDDY_MEMORY_HIGH_WATERMARK")]
    memory_high_watermark: Option<u64>,
    /// Block publishers while free disk space is below this many bytes [default: 50000000]
    #[arg(long, env = "EDDY_DISK_FREE_LIMIT")]
    disk_free_limit: Option<u64>,
    /// Heartbeat interval proposed to clients, seconds; 0 disables [default: 60]
    #[arg(long, env = "EDDY_HEARTBEAT")]
    heartbeat: Option<u16>,
    /// Largest AMQP frame accepted [default: 131072]
    #[arg(long, env = "EDDY_FRAME_MAX")]
    frame_max: Option<u32>,
    /// Queue log segment size in bytes [default: 67108864]
    #[arg(long, env = "EDDY_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// Roll a queue log segment once it is this old (ms), so acknowledged data is reclaimed
    /// on quiet queues too [default: 3600000]
    #[arg(long, env = "EDDY_SEGMENT_MS")]
    segment_ms: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    amqp: Option<SocketAddr>,
    fsync: Option<Fsync>,
    fsync_interval_ms: Option<u64>,
    memory_high_watermark: Option<u64>,
    disk_free_limit: Option<u64>,
    heartbeat: Option<u16>,
    frame_max: Option<u32>,
    segment_bytes: Option<u64>,
    segment_ms: Option<u64>,
    kafka: Option<SocketAddr>,
    http: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    amqps: Option<SocketAddr>,
    kafka_tls: Option<SocketAddr>,
    https: Option<SocketAddr>,
    kafka_advertised: Option<String>,
    kafka_auto_create_partitions: Option<usize>,
    users: Option<Vec<UserConfig>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    name: String,
    password: String,
    #[serde(default)]
    loopback_only: bool,
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Command::Bench {
        what: BenchCommand::Nexmark(args),
    } = cli.command
    {
        eddy_bench::run_nexmark(args)?;
        return Ok(());
    }
    if !matches!(cli.command, Command::Serve(_)) {
        // a command-line tool piped into `head` ends quietly, as other Unix tools do
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let cli = match cli.command {
        Command::Run { job, args } => {
            // no async runtime: the engine runs its own worker threads
            return eddy_stream::jobs::run(&job, args).with_context(|| format!("job {job}"));
        }
        Command::Queues { conn, cmd } => return admin::queues(&conn, cmd),
        Command::Exchanges { conn, .. } => return admin::exchanges(&conn),
        Command::Topics { conn, cmd } => return admin::topics(&conn, cmd),
        Command::Groups { conn, .. } => return admin::groups(&conn),
        Command::Connections { conn, .. } => return admin::connections(&conn),
        Command::Users { conn, cmd } => return admin::users(&conn, cmd),
        Command::Vhosts { conn, cmd } => return admin::vhosts(&conn, cmd),
        Command::Permissions { conn, cmd } => return admin::permissions(&conn, cmd),
        Command::Definitions { conn, cmd } => return admin::definitions(&conn, cmd),
        other => Cli { command: other },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(*args)),
        Command::Bench {
            what: BenchCommand::Amqp(args),
        } => rt.block_on(async move {
            eddy_bench::run_amqp(args).await?;
            Ok(())
        }),
        Command::Bench {
            what: BenchCommand::Kafka(args),
        } => rt.block_on(eddy_bench::run_kafka(args)),
        _ => unreachable!("handled above"),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config file {}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./data"));
    let kafka_addr = args
        .kafka
        .or(file.kafka)
        .unwrap_or_else(|| "127.0.0.1:9092".parse().expect("valid default"));
    let http_addr = args
        .http
        .or(file.http)
        .unwrap_or_else(|| "127.0.0.1:15672".parse().expect("valid default"));
    let kafka_advertised = args.kafka_advertised.or(file.kafka_advertised);
    let auto_partitions = args
        .kafka_auto_create_partitions
        .or(file.kafka_auto_create_partitions)
        .unwrap_or(1);
    let amqp_addr = args
        .amqp
        .or(file.amqp)
        .unwrap_or_else(|| "127.0.0.1:5672".parse().expect("valid default"));
    let fsync = match args.fsync.or(file.fsync).unwrap_or(Fsync::Always) {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Batch => FsyncPolicy::Batch(Duration::from_millis(
            args.fsync_interval_ms
                .or(file.fsync_interval_ms)
                .unwrap_or(5),
        )),
        Fsync::Never => FsyncPolicy::Never,
    };
    let mut config = BrokerConfig {
        data_dir: data_dir.clone(),
        fsync,
        memory_high_watermark: args
            .memory_high_watermark
            .or(file.memory_high_watermark)
            .unwrap_or(total_memory() * 2 / 5),
        disk_free_limit: args
            .disk_free_limit
            .or(file.disk_free_limit)
            .unwrap_or(50_000_000),
        segment_bytes: args
            .segment_bytes
            .or(file.segment_bytes)
            .unwrap_or(64 << 20),
        segment_ms: Some(args.segment_ms.or(file.segment_ms).unwrap_or(3_600_000)),
        ..BrokerConfig::default()
    };
    if let Some(users) = file.users {
        config.users = users
            .iter()
            .map(|u| (u.name.clone(), u.password.clone()))
            .collect();
        config.loopback_users = users
            .iter()
            .filter(|u| u.loopback_only || u.name == "guest")
            .map(|u| u.name.clone())
            .collect();
    }
    let amqp_cfg = eddy_amqp::AmqpConfig {
        heartbeat: args.heartbeat.or(file.heartbeat).unwrap_or(60),
        frame_max: args
            .frame_max
            .or(file.frame_max)
            .unwrap_or(131072)
            .max(4096),
        ..eddy_amqp::AmqpConfig::default()
    };
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let housekeeping = broker.spawn_housekeeping();
    let listener = tokio::net::TcpListener::bind(amqp_addr)
        .await
        .with_context(|| format!("binding AMQP listener on {amqp_addr}"))?;
    tracing::info!(amqp = %amqp_addr, data_dir = %data_dir.display(), fsync = ?fsync, "eddy started");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let kafka_listener = tokio::net::TcpListener::bind(kafka_addr)
        .await
        .with_context(|| format!("binding Kafka listener on {kafka_addr}"))?;
    let kafka_bound = kafka_listener.local_addr()?;
    let (adv_host, adv_port) = match &kafka_advertised {
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .with_context(|| format!("--kafka-advertised {a}: expected HOST:PORT"))?;
            (
                h.to_owned(),
                p.parse()
                    .with_context(|| format!("--kafka-advertised {a}: bad port"))?,
            )
        }
        None => (kafka_bound.ip().to_string(), kafka_bound.port()),
    };
    let kafka_cfg = eddy_kafka::KafkaConfig {
        advertised_host: adv_host,
        advertised_port: adv_port,
        auto_create_topics: auto_partitions > 0,
        default_partitions: auto_partitions.max(1),
        ..eddy_kafka::KafkaConfig::default()
    };
    tracing::info!(kafka = %kafka_bound, "kafka listener started");
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP (management) listener on {http_addr}"))?;
    let http_bound = http_listener.local_addr()?;
    let history = Arc::new(eddy_http::stats::History::default());
    let sampler = history.spawn(broker.clone());
    tracing::info!(http = %http_bound, "management API, console and /metrics started");
    // TLS listeners, with one certificate
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => {
            let client_ca = args.tls_client_ca.or(file.tls_client_ca);
            Some(tls::acceptor(&cert, &key, client_ca.as_deref())?)
        }
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let bind = async |addr: SocketAddr, what: &str| {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {what} listener on {addr}"))
    };
    let (amqps, kafka_tls, https) = match &tls {
        None => (None, None, None),
        Some(acceptor) => {
            let a = args
                .amqps
                .or(file.amqps)
                .unwrap_or_else(|| "127.0.0.1:5671".parse().expect("valid"));
            let k = args
                .kafka_tls
                .or(file.kafka_tls)
                .unwrap_or_else(|| "127.0.0.1:9093".parse().expect("valid"));
            let h = args
                .https
                .or(file.https)
                .unwrap_or_else(|| "127.0.0.1:15671".parse().expect("valid"));
            let (a, k, h) = (
                bind(a, "AMQPS").await?,
                bind(k, "Kafka TLS").await?,
                bind(h, "HTTPS").await?,
            );
            let k_bound = k.local_addr()?;
            tracing::info!(amqps = %a.local_addr()?, kafka_tls = %k_bound, https = %h.local_addr()?, "TLS listeners started");
            (
                Some(eddy_amqp::TlsListener {
                    listener: a,
                    acceptor: acceptor.clone(),
                }),
                Some(eddy_kafka::TlsListener {
                    listener: k,
                    acceptor: acceptor.clone(),
                    advertised_host: k_bound.ip().to_string(),
                    advertised_port: k_bound.port(),
                }),
                Some((h, acceptor.clone())),
            )
        }
    };
    let mut listeners = vec![
        ("amqp".to_owned(), listener.local_addr()?),
        ("kafka".to_owned(), kafka_bound),
        ("http".to_owned(), http_bound),
    ];
    if let (Some(a), Some(k), Some((h, _))) = (&amqps, &kafka_tls, &https) {
        listeners.push(("amqp/ssl".into(), a.listener.local_addr()?));
        listeners.push(("kafka/ssl".into(), k.listener.local_addr()?));
        listeners.push(("https".into(), h.local_addr()?));
    }
    let api = Arc::new(eddy_http::Api {
        broker: broker.clone(),
        history,
        listeners,
        jobs: Default::default(),
    });
    let http_server = tokio::spawn(eddy_http::serve(http_listener, https, api, stopped.clone()));
    let server = tokio::spawn(eddy_amqp::serve(
        listener,
        amqps,
        broker.clone(),
        amqp_cfg,
        stopped.clone(),
    ));
    let kafka_server = tokio::spawn(eddy_kafka::serve(
        kafka_listener,
        kafka_tls,
        broker.clone(),
        kafka_cfg,
        stopped,
    ));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    // connections are closed (AMQP: 320 CONNECTION_FORCED) before the logs are
    let both = async {
        let _ = server.await;
        let _ = kafka_server.await;
    };
    if tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .is_err()
    {
        tracing::warn!("connections did not close in time");
    }
    housekeeping.abort();
    sampler.abort();
    http_server.abort();
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.shutdown()).await.ok();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
