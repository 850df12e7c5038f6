//! The `eddy` binary: configuration (flags, `EDDY_*` environment, TOML), the `serve` command
//! that wires the broker to its listeners, and `bench`. Only this crate reads configuration.

mod admin;
mod alloc;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eddy_broker::Broker;

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
    /// The cluster as a node sees it: `eddy cluster status`.
    Cluster {
        #[command(flatten)]
        conn: admin::Conn,
        #[command(subcommand)]
        cmd: admin::Cluster,
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

/// `eddy serve`'s flags: each sets one key of [`settings::Settings`] (the table
/// [`settings::FLAGS`]), and is also an `EDDY_*` environment variable. `--help` shows each
/// one's default and key, filled in from the settings' defaults.
#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// TOML configuration file: sections [amqp] [kafka] [http] [tls] [storage] [limits] and
    /// [[users]] name/password/loopback_only; `--print-config` shows every key
    #[arg(long, env = "EDDY_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective settings (defaults, file, environment and flags) as TOML that
    /// --config takes, and exit
    #[arg(long)]
    print_config: bool,
    /// Directory for metadata and message logs
    #[arg(long, env = "EDDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// AMQP 0-9-1 listener address
    #[arg(long, env = "EDDY_AMQP")]
    amqp: Option<SocketAddr>,
    /// Kafka listener address
    #[arg(long, env = "EDDY_KAFKA")]
    kafka: Option<SocketAddr>,
    /// Management API, web console and /metrics listener address
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
    /// AMQPS listener address (with TLS)
    #[arg(long, env = "EDDY_AMQPS")]
    amqps: Option<SocketAddr>,
    /// Kafka TLS listener address (SSL / SASL_SSL, with TLS)
    #[arg(long, env = "EDDY_KAFKA_TLS")]
    kafka_tls: Option<SocketAddr>,
    /// HTTPS listener address (with TLS)
    #[arg(long, env = "EDDY_HTTPS")]
    https: Option<SocketAddr>,
    /// Address Kafka clients are told to connect to (Metadata), HOST:PORT [default: the
    /// --kafka address]
    #[arg(long, env = "EDDY_KAFKA_ADVERTISED")]
    kafka_advertised: Option<String>,
    /// Partitions of topics created automatically (a producer or Metadata request naming an
    /// unknown topic); 0 turns automatic creation off
    #[arg(long, env = "EDDY_KAFKA_AUTO_CREATE_PARTITIONS")]
    kafka_auto_create_partitions: Option<usize>,
    /// Close a Kafka connection that sends no request and takes no response byte for this
    /// long (ms); 0 never closes one
    #[arg(long, env = "EDDY_KAFKA_IDLE_TIMEOUT_MS")]
    kafka_idle_timeout_ms: Option<u64>,
    /// When writes are fsynced; a publisher confirm is sent only after it
    #[arg(long, env = "EDDY_FSYNC", value_enum)]
    fsync: Option<settings::Fsync>,
    /// With --fsync batch: the longest a write waits for its fsync
    #[arg(long, env = "EDDY_FSYNC_INTERVAL_MS")]
    fsync_interval_ms: Option<u64>,
    /// Block publishers while queued message bytes exceed this: bytes, or a share of memory
    /// such as 40%
    #[arg(long, env = "EDDY_MEMORY_HIGH_WATERMARK")]
    memory_high_watermark: Option<settings::Watermark>,
    /// Block publishers while free disk space is below this many bytes
    #[arg(long, env = "EDDY_DISK_FREE_LIMIT")]
    disk_free_limit: Option<u64>,
    /// Most connections open at once on each listener (AMQP, Kafka, HTTP and their TLS
    /// twins); one more is closed at once
    #[arg(long, env = "EDDY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most connections open at once on each listener from one client address
    #[arg(long, env = "EDDY_MAX_CONNECTIONS_PER_ADDRESS")]
    max_connections_per_address: Option<usize>,
    /// File descriptors kept from AMQP and Kafka connections for logs, metadata and the
    /// management listener (the process's limit is raised to its hard limit at start)
    #[arg(long, env = "EDDY_DESCRIPTOR_RESERVE")]
    descriptor_reserve: Option<usize>,
    /// Heartbeat interval proposed to AMQP clients, seconds; 0 disables
    #[arg(long, env = "EDDY_HEARTBEAT")]
    heartbeat: Option<u16>,
    /// Largest AMQP frame accepted (at least 4096)
    #[arg(long, env = "EDDY_FRAME_MAX")]
    frame_max: Option<u32>,
    /// Queue log segment size in bytes
    #[arg(long, env = "EDDY_SEGMENT_BYTES")]
    segment_bytes: Option<u64>,
    /// Roll a queue log segment once it is this old (ms), so acknowledged data is reclaimed
    /// on quiet queues too
    #[arg(long, env = "EDDY_SEGMENT_MS")]
    segment_ms: Option<u64>,
    /// This node's id in a cluster (with --cluster-listen and --cluster-peers)
    #[arg(long, env = "EDDY_NODE_ID")]
    node_id: Option<u64>,
    /// Inter-node listener address of this cluster node, HOST:PORT
    #[arg(long, env = "EDDY_CLUSTER_LISTEN")]
    cluster_listen: Option<String>,
    /// Every member of the cluster, this node too: ID@HOST:PORT,… (the addresses this node
    /// dials the others at)
    #[arg(long, env = "EDDY_CLUSTER_PEERS")]
    cluster_peers: Option<String>,
    /// Replicas of a new topic's partitions when a client does not say [default: min(3,
    /// nodes)]
    #[arg(long, env = "EDDY_DEFAULT_REPLICATION_FACTOR")]
    default_replication_factor: Option<usize>,
}

/// The serve subcommand with each flag's help followed by its default and its key in the
/// configuration file.
fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommand("serve", |mut serve| {
        for (id, key) in settings::FLAGS {
            serve = serve.mut_arg(*id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                let default = match settings::default_of(key) {
                    Some(d) if !help.contains("[default:") => format!(" [default: {d}]"),
                    _ => String::new(),
                };
                a.help(format!("{help}{default} [config: {key}]"))
            });
        }
        serve
    })
}

/// The flags and environment variables `eddy serve` was given, as (flag id, raw value).
fn given(matches: &clap::ArgMatches) -> Result<Vec<(&'static str, String)>> {
    let Some(("serve", m)) = matches.subcommand() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (id, _) in settings::FLAGS {
        let Some(v) = m.get_raw(id).and_then(|mut v| v.next()) else {
            continue;
        };
        // the settings are text (TOML): a path that is not UTF-8 is refused, never mangled
        let v = v.to_str().with_context(|| {
            format!(
                "--{} (or its EDDY_ variable) is not UTF-8: {v:?}",
                id.replace('_', "-")
            )
        })?;
        out.push((*id, v.to_owned()));
    }
    Ok(out)
}

fn main() -> Result<()> {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    let overrides = given(&matches)?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
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
        Command::Cluster { conn, cmd } => return admin::cluster(&conn, cmd),
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
        Command::Serve(args) => {
            let settings = settings::Settings::load(args.config.as_deref(), &overrides)?;
            if args.print_config {
                print!("{}", settings.to_toml()?);
                return Ok(());
            }
            rt.block_on(serve(settings))
        }
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

async fn serve(settings: settings::Settings) -> Result<()> {
    let data_dir = settings.storage.data_dir.clone();
    let config = settings.broker();
    let fsync = config.fsync;
    let tls = match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => Some(eddy_net::tls_acceptor(
            cert,
            key,
            settings.tls.client_ca.as_deref(),
        )?),
        _ => None,
    };
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let housekeeping = broker.spawn_housekeeping();
    let bind = async |name: &str, addr: SocketAddr, tls: Option<eddy_net::TlsAcceptor>| {
        eddy_net::Listener::bind(name, addr, tls)
            .await
            .with_context(|| format!("binding the {name} listener on {addr}"))
    };
    let amqp_listener = bind("amqp", settings.amqp.listen, None).await?;
    let kafka_listener = bind("kafka", settings.kafka.listen, None).await?;
    let http_listener = bind("http", settings.http.listen, None).await?;
    let mut kafka_cfg = settings.kafka(kafka_listener.local_addr()?);
    let info = eddy_cluster::NodeInfo {
        kafka: Some(format!(
            "{}:{}",
            kafka_cfg.advertised_host, kafka_cfg.advertised_port
        )),
        amqp: Some(amqp_listener.local_addr()?.to_string()),
        http: Some(http_listener.local_addr()?.to_string()),
        ..Default::default()
    };
    let cluster = match settings.cluster_config(info)? {
        None => None,
        Some(cfg) => {
            tracing::info!(node = cfg.node_id, listen = %cfg.listen, peers = cfg.peers.len(), "joining the cluster");
            kafka_cfg.node_id = cfg.node_id as i32;
            let c = eddy_cluster::Cluster::start(cfg, broker.clone(), broker.syncer())
                .await
                .context("starting the cluster node")?;
            Some(c)
        }
    };
    let mut listeners = vec![amqp_listener, kafka_listener, http_listener];
    if let Some(acceptor) = &tls {
        let a = settings.amqp.tls_listen;
        let k = settings.kafka.tls_listen;
        let h = settings.http.tls_listen;
        listeners.push(bind("amqps", a, Some(acceptor.clone())).await?);
        listeners.push(bind("kafka-tls", k, Some(acceptor.clone())).await?);
        listeners.push(bind("https", h, Some(acceptor.clone())).await?);
    }
    // the management API reports every listener (RabbitMQ's protocol names)
    let mut reported = Vec::new();
    for l in &listeners {
        let protocol = match l.name() {
            "amqps" => "amqp/ssl",
            "kafka-tls" => "kafka/ssl",
            other => other,
        };
        reported.push((protocol.to_owned(), l.local_addr()?));
        tracing::info!(listener = l.name(), address = %l.local_addr()?, "listening");
    }
    tracing::info!(data_dir = %data_dir.display(), fsync = ?fsync, "eddy started");
    let history = Arc::new(eddy_http::stats::History::default());
    let sampler = history.spawn(broker.clone());
    let api = Arc::new(eddy_http::Api {
        broker: broker.clone(),
        history,
        listeners: reported,
        jobs: Default::default(),
        cluster: cluster.clone(),
    });
    let amqp = eddy_amqp::Amqp::new(broker.clone(), settings.amqp());
    let kafka = eddy_kafka::Kafka::in_cluster(broker.clone(), kafka_cfg, cluster.clone());
    let http = eddy_http::Http::new(api);
    let limits = settings.listener_limits();
    // AMQP and Kafka connections draw from one descriptor budget; the management listener
    // does not, so that operators get in while clients hold all the budget allows
    let descriptors = eddy_net::Descriptors::of_process(settings.limits.descriptor_reserve);
    tracing::info!(
        budget = descriptors.limit(),
        "file descriptors AMQP and Kafka connections may hold"
    );
    let client_limits = eddy_net::Limits {
        descriptors: Some(descriptors),
        ..limits.clone()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for l in listeners {
        let stopped = stopped.clone();
        let clients = client_limits.clone();
        match l.name() {
            "amqp" | "amqps" => servers.spawn(eddy_net::serve(l, amqp.clone(), clients, stopped)),
            "kafka" => servers.spawn(eddy_net::serve(l, kafka.clone(), clients, stopped)),
            "kafka-tls" => {
                // its clients are told to come back to it
                let at = l.local_addr()?;
                let k = kafka.advertising(at.ip().to_string(), at.port());
                servers.spawn(eddy_net::serve(l, k, clients, stopped))
            }
            _ => servers.spawn(eddy_net::serve(l, http.clone(), limits.clone(), stopped)),
        };
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    // connections are closed (AMQP: 320 CONNECTION_FORCED) before the logs are
    if tokio::time::timeout(Duration::from_secs(10), servers.join_all())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close in time");
    }
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    housekeeping.abort();
    sampler.abort();
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
