//! The `leadrelay` binary: parses the command line and wires the engine, the server and the
//! commands together. No business logic lives here.

#![forbid(unsafe_code)]

mod commands;
mod demo;

// The allocator is the system's (glibc) on purpose: with 10,000 slow deliveries in flight (one
// HTTP/1.1 connection each, their buffers mostly untouched) it peaks 40–80 MiB lower than
// mimalloc or jemalloc, which is what keeps that case under 256 MB (`benches/deliver.rs`).
// mimalloc ingested about 10 % faster; memory won.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// leadrelay: a self-hosted lead event hub.
///
/// Takes leads in over HTTP, parses, de-duplicates and filters them, records every step in an
/// immutable, hash-chained event log, and keeps a register of every transfer.
#[derive(Parser)]
#[command(name = "leadrelay", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store lives; every command that touches it takes this.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    /// Database URL: `sqlite://PATH` (embedded, the default) or `postgres://…`.
    #[arg(long, env = "LEADRELAY_DATABASE_URL", default_value = "sqlite://leadrelay.db")]
    database_url: String,
}

/// Filters of the event log, as the events API names them.
#[derive(clap::Args, Clone, Default)]
struct EventFilters {
    /// Only this lead's events.
    #[arg(long)]
    lead_id: Option<String>,
    /// Only events of this type, e.g. `source.accepted`.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events with this register status: new, success, skip or error.
    #[arg(long)]
    status: Option<String>,
    /// Only events of the leads of this source.
    #[arg(long)]
    source_id: Option<String>,
    /// Only events about this destination (its deliveries, skips and retries).
    #[arg(long)]
    destination_id: Option<String>,
    /// Only events of the leads of this flow.
    #[arg(long)]
    flow_id: Option<String>,
    /// From this time (ISO 8601) or date (`2024-01-15`), inclusive.
    #[arg(long)]
    start: Option<String>,
    /// Up to this time or date (a date means its whole day), inclusive.
    #[arg(long)]
    end: Option<String>,
    /// A rule set (JSON) over event fields and the lead as `lead.…`, e.g.
    /// '{"all":[{"field":"lead.state","op":"eq","value":"TX"}]}'.
    #[arg(long)]
    rules: Option<String>,
    /// Only these top-level fields, comma-separated (`id,type,timestamp,lead_id`).
    #[arg(long)]
    include: Option<String>,
    /// All top-level fields but these, comma-separated (`lead,data`).
    #[arg(long)]
    exclude: Option<String>,
}

/// A network in CIDR notation; spaces around it (`10.0.0.0/8, 192.168.0.0/16`) are ignored.
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a network such as 10.1.2.0/24 (or one address)"))
}

/// A body limit no real submission falls under: 0 would refuse every body.
fn parse_body_limit(text: &str) -> Result<usize, String> {
    let limit: usize = text.trim().parse().map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if limit < 1024 {
        return Err(format!("{limit} bytes would refuse ordinary submissions: give at least 1024"));
    }
    Ok(limit)
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (intake, API) until SIGTERM or Ctrl-C.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Address to listen on.
        #[arg(long, env = "LEADRELAY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// A configuration file (YAML or JSON) to apply at start.
        #[arg(long, env = "LEADRELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Let destinations, enhancements and postbacks reach loopback and private addresses
        /// (cloud metadata addresses stay refused unless listed with --allow-network).
        #[arg(long, env = "LEADRELAY_ALLOW_PRIVATE_DESTINATIONS", value_parser = clap::builder::BoolishValueParser::new())]
        allow_private_destinations: bool,
        /// A network outbound calls may reach whatever its class, such as a CRM at
        /// 10.1.2.0/24; repeat the flag or separate networks with commas.
        #[arg(long = "allow-network", env = "LEADRELAY_ALLOW_NETWORKS", value_delimiter = ',', value_name = "CIDR",
              value_parser = parse_network)]
        allow_networks: Vec<ipnet::IpNet>,
        /// Largest accepted request body, in bytes (at least 1024).
        #[arg(long, env = "LEADRELAY_MAX_BODY_BYTES", default_value_t = 1 << 20, value_parser = parse_body_limit)]
        max_body_bytes: usize,
    },
    /// A ready local playground: the server on a temporary SQLite file, a sample flow with two
    /// sources and two destinations, a stand-in CRM and buyer on 127.0.0.1, and a steady stream
    /// of sample leads. Prints the URL and a token to sign in with. Works offline.
    Demo {
        /// Where the web UI and the API listen (127.0.0.1:0 picks a free port).
        #[arg(long, env = "LEADRELAY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Sample leads per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Keep the demo's database when it stops (it is removed by default).
        #[arg(long)]
        keep: bool,
    },
    /// Apply a declarative configuration file (YAML or JSON) in one transaction.
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The file to apply; `-` reads standard input.
        file: PathBuf,
        /// Also delete every flow, source and destination the file does not name, so that the
        /// configuration becomes the file (refused, changing nothing, when a deleted object is
        /// still in use or a destination has transfers waiting).
        #[arg(long)]
        prune: bool,
    },
    /// Print events of the log as JSON lines, newest first (one page; see --cursor).
    Events {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        filters: EventFilters,
        /// How many events, 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `desc` (newest first) or `asc`.
        #[arg(long, default_value = "desc")]
        sort: String,
        /// Continue after a page: the cursor printed (to standard error) after the last one.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Write every matching event, oldest first, as NDJSON or CSV.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        filters: EventFilters,
        /// `ndjson` or `csv` (spreadsheet formulas neutralised).
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check the event log's hash chain; exits non-zero naming the first bad event.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// What the token may do: admin, operator, viewer or source.
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    commands::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { store, listen, config, allow_private_destinations, allow_networks, max_body_bytes } => {
                let options = commands::ServeOptions {
                    database_url: store.database_url,
                    listen,
                    config,
                    allow_private_destinations,
                    allow_networks,
                    max_body_bytes,
                };
                commands::serve(options).await
            }
            Command::Demo { listen, rate, keep } => demo::demo(demo::DemoOptions { listen, rate, keep }).await,
            Command::Apply { store, file, prune } => commands::apply(&store.database_url, &file, prune).await,
            Command::Verify { store } => commands::verify(&store.database_url).await,
            Command::Events { store, filters, limit, sort, cursor } => {
                let query = commands::event_query(&filters, limit, &sort, cursor.as_deref())?;
                let fields = commands::projection(&filters)?;
                commands::events(&store.database_url, query, &fields).await
            }
            Command::Export { store, filters, format, output } => {
                let query = commands::event_query(&filters, leadrelay_store::MAX_PAGE, "asc", None)?;
                let fields = commands::projection(&filters)?;
                commands::export(&store.database_url, query, &fields, &format, output.as_deref()).await
            }
            Command::Token { command: TokenCommand::Create { store, name, role } } => {
                commands::token_create(&store.database_url, &name, &role).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_body_limits_are_read_as_people_write_them() {
        assert_eq!(parse_network(" 192.168.0.0/16").unwrap(), "192.168.0.0/16".parse::<ipnet::IpNet>().unwrap());
        assert_eq!(parse_network("10.1.2.3").unwrap(), "10.1.2.3/32".parse::<ipnet::IpNet>().unwrap());
        assert!(parse_network("10.0.0.0/33").unwrap_err().contains("not a network"));
        assert_eq!(parse_body_limit("1048576").unwrap(), 1 << 20);
        assert!(parse_body_limit("0").unwrap_err().contains("at least 1024"));
        assert!(parse_body_limit("lots").is_err());
    }
}
