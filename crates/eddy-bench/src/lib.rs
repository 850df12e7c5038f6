//! Load generators for Eddy and its peers (in progress: the AMQP generator lands next).

/// Arguments of `eddy bench amqp`.
#[derive(clap::Args, Debug, Clone)]
pub struct AmqpBenchArgs {
    /// Broker URI
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
}

/// Results of a run.
#[derive(Debug)]
pub struct AmqpReport;

/// Run the AMQP benchmark.
pub async fn run_amqp(_args: AmqpBenchArgs) -> anyhow::Result<AmqpReport> {
    anyhow::bail!("the AMQP benchmark is not built yet")
}
