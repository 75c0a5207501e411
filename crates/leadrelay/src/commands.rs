//! The commands: each opens the store named by its URL, does one job, and closes it.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use leadrelay_delivery::guard::EgressPolicy;
use leadrelay_domain::config::{parse_json, parse_yaml, ConfigChange, ConfigDocument};
use leadrelay_domain::event::{EventType, RegisterStatus};
use leadrelay_domain::ids::TokenId;
use leadrelay_domain::rules::RuleSet;
use leadrelay_domain::time::now_millis;
use leadrelay_domain::time::parse_query_time;
use leadrelay_server::{hash_token, new_token_value, AppState, Settings};
use leadrelay_store::{Cursor, CursorList, EventLines, EventQuery, NewToken, Role, SortOrder, Store, MAX_PAGE};
use leadrelay_store_postgres::{PostgresOptions, PostgresStore};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEADRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    // Colours only for a person at a terminal, never into a log file.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colours).with_writer(std::io::stderr).init();
}

/// The URL without its password, for messages and logs.
pub fn redacted_database_url(database_url: &str) -> String {
    let Ok(mut url) = url::Url::parse(database_url) else { return database_url.to_owned() };
    let secret_parameter =
        |name: &str| name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword");
    if url.password().is_none() && !url.query_pairs().any(|(name, _)| secret_parameter(&name)) {
        return database_url.to_owned();
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(name, _)| secret_parameter(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_parameter(&name) { "***".to_owned() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Opens a store that must exist already: commands that only read never create an empty
/// database where a mistyped path points, and report on it as if it were the real one.
pub async fn open_existing_store(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = missing_sqlite_file(database_url)? {
        bail!("no database at {}: check --database-url (or LEADRELAY_DATABASE_URL)", path.display());
    }
    if is_postgres(database_url) {
        let initialised = PostgresStore::is_initialised(database_url)
            .await
            .with_context(|| format!("while opening {}", redacted_database_url(database_url)))?;
        if !initialised {
            bail!(
                "{} holds no leadrelay database (run `leadrelay serve` or `leadrelay apply` on it first): check \
                 --database-url (or LEADRELAY_DATABASE_URL)",
                redacted_database_url(database_url)
            );
        }
    }
    open_store(database_url).await
}

fn is_postgres(database_url: &str) -> bool {
    database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")
}

/// The file of a `sqlite:` URL when it does not exist yet.
fn missing_sqlite_file(database_url: &str) -> anyhow::Result<Option<std::path::PathBuf>> {
    if !database_url.starts_with("sqlite:") {
        return Ok(None);
    }
    let path = sqlite_file(database_url)?;
    Ok((!path.exists()).then_some(path))
}

/// The file of a `sqlite:` URL; one without a file (in memory, or no path) is refused, since
/// what it stored would vanish with the process.
fn sqlite_file(database_url: &str) -> anyhow::Result<std::path::PathBuf> {
    match leadrelay_store_sqlite::database_file(database_url)? {
        Some(path) => Ok(path),
        None => bail!(
            "{database_url:?} names no database file: use sqlite://PATH (for example sqlite://leadrelay.db); an \
             in-memory database would lose everything when the process ends"
        ),
    }
}

/// Opens the store for a command that may be the first to run on a new machine (`apply`,
/// `token create`), creating an SQLite file that does not exist yet and saying so, so that a
/// mistyped `--database-url` does not pass unnoticed.
pub async fn open_or_create_store(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let new_file = missing_sqlite_file(database_url)?;
    let store = open_store(database_url).await?;
    if let Some(path) = new_file {
        eprintln!("created a new database at {} (none was there)", path.display());
    }
    Ok(store)
}

/// Opens the engine the URL's scheme names.
pub async fn open_store(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    open_store_as(database_url, SqliteOptions::default()).await
}

/// Opens the store for the process that serves it (`serve`, `demo`): on SQLite it takes the
/// file's server lock, refusing to start beside another server, and frees what a server that
/// died left claimed. Only a server does this, so that a command run beside it (`apply`,
/// `verify`, …) never makes its deliveries in flight due again.
pub async fn open_server_store(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    open_store_as(database_url, SqliteOptions::serving()).await
}

async fn open_store_as(database_url: &str, sqlite: SqliteOptions) -> anyhow::Result<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        sqlite_file(database_url)?;
        let store =
            SqliteStore::open(database_url, sqlite).await.with_context(|| format!("while opening {database_url}"))?;
        Ok(store)
    } else if is_postgres(database_url) {
        let store = PostgresStore::open(database_url, PostgresOptions::default())
            .await
            .with_context(|| format!("while opening {}", redacted_database_url(database_url)))?;
        Ok(store)
    } else {
        bail!(
            "unknown database URL {:?}: use sqlite://PATH (for example sqlite://leadrelay.db) or \
             postgres://USER@HOST/DATABASE",
            redacted_database_url(database_url)
        )
    }
}

pub struct ServeOptions {
    pub database_url: String,
    pub listen: String,
    pub config: Option<std::path::PathBuf>,
    pub allow_private_destinations: bool,
    pub allow_networks: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
}

async fn ensure_admin_token(store: &dyn Store) -> anyhow::Result<()> {
    let Ok(value) = std::env::var("LEADRELAY_ADMIN_TOKEN") else { return Ok(()) };
    if value.trim().len() < 16 {
        bail!("LEADRELAY_ADMIN_TOKEN must be at least 16 characters long");
    }
    let token = NewToken {
        id: TokenId::generate().into_string(),
        name: "LEADRELAY_ADMIN_TOKEN".to_owned(),
        role: Role::Admin,
        hash: hash_token(value.trim()),
        created_at: now_millis(),
    };
    let hash = token.hash;
    if let Some(existing) = store.find_token(&hash).await.context("while reading tokens")? {
        if existing.role != Role::Admin {
            tracing::warn!(
                token_id = %existing.id, name = %existing.name, role = existing.role.as_str(),
                "LEADRELAY_ADMIN_TOKEN is the value of an existing token, which now becomes an admin token"
            );
        }
    }
    store.ensure_token(token).await.context("while storing LEADRELAY_ADMIN_TOKEN")?;
    // Changing the variable rotates the token: what an earlier value created stops working.
    for earlier in store.list_tokens().await.context("while reading tokens")? {
        if earlier.name == "LEADRELAY_ADMIN_TOKEN" && earlier.hash != hash {
            store.delete_token(&earlier.id).await.context("while revoking the earlier LEADRELAY_ADMIN_TOKEN")?;
            tracing::info!(token_id = %earlier.id, "revoked the token of an earlier LEADRELAY_ADMIN_TOKEN value");
        }
    }
    Ok(())
}

/// The largest configuration file `apply` reads: thousands of objects fit many times over.
const MAX_CONFIG_BYTES: u64 = 32 << 20;

fn read_document(file: &Path) -> anyhow::Result<ConfigDocument> {
    use std::io::Read;
    let reader: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("while reading {}", file.display()))?)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("while reading {}", file.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{} is larger than {} MiB: not a configuration file", file.display(), MAX_CONFIG_BYTES >> 20);
    }
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", file.display()))?;
    let is_json = file.extension().is_some_and(|extension| extension == "json");
    let document = if is_json { parse_json(&text) } else { parse_yaml(&text) };
    document.with_context(|| format!("{} is not a valid configuration", file.display()))
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from now on, and answers a future that completes at
/// the first of them. The handlers are installed before the caller announces that it listens:
/// a signal that arrived between the two would otherwise kill the process with its default
/// action instead of stopping it gracefully.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("while listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("while listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
    })
}

pub async fn serve(options: ServeOptions) -> anyhow::Result<ExitCode> {
    let store = open_server_store(&options.database_url).await?;
    ensure_admin_token(store.as_ref()).await?;
    if let Some(file) = &options.config {
        let document = read_document(file)?;
        store
            .change_config(ConfigChange::Apply(document))
            .await
            .with_context(|| format!("while applying {}", file.display()))?;
    }
    if options.allow_private_destinations {
        tracing::warn!("outbound calls may reach loopback and private addresses (--allow-private-destinations)");
    }
    for network in &options.allow_networks {
        tracing::warn!(%network, "outbound calls may reach this network (--allow-network)");
    }
    let egress =
        EgressPolicy { allow_private: options.allow_private_destinations, allow_list: options.allow_networks.clone() };
    let settings = Settings { max_body_bytes: options.max_body_bytes, egress, ..Settings::default() };
    let state = AppState::new(store.clone(), settings).await.context("while loading the configuration")?;
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("while binding {}", options.listen))?;
    let address = listener.local_addr().context("while reading the bound address")?;
    let shutdown = shutdown_signal()?;
    tracing::info!(%address, database = %redacted_database_url(&options.database_url), "listening");
    // A plain line on standard output, so scripts (and tests) learn the bound port.
    println!("leadrelay listening on http://{address}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    leadrelay_server::serve(listener, state, shutdown).await.context("while serving")?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn apply(database_url: &str, file: &Path, prune: bool) -> anyhow::Result<ExitCode> {
    let document = read_document(file)?;
    let store = open_or_create_store(database_url).await?;
    let before = store.load_config().await?;
    let change = if prune { ConfigChange::Sync(document) } else { ConfigChange::Apply(document) };
    let result = store.change_config(change).await;
    store.close().await;
    let after = result.with_context(|| format!("{} was not applied", file.display()))?;
    let counts = |config: &leadrelay_domain::config::Config| {
        (config.flows.len(), config.sources.len(), config.destinations.len())
    };
    let changed = after.changed_since(&before);
    let (flows, sources, destinations) = counts(&after);
    println!(
        "applied {}: {changed} objects changed; now {flows} flows, {sources} sources, {destinations} destinations",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(database_url: &str) -> anyhow::Result<ExitCode> {
    let store = open_existing_store(database_url).await?;
    let report = store.verify_chain().await;
    store.close().await;
    let report = report.context("while verifying the event log")?;
    match report.first_broken {
        None => {
            println!("OK: {} events verified, the chain is intact", report.events_checked);
            Ok(ExitCode::SUCCESS)
        }
        Some(broken) if broken.event_id.is_empty() => {
            // The rows check out one by one; where the log ends disagrees with its head.
            println!("BROKEN at the end of the log: {}; {} events verified", broken.problem, report.events_checked);
            Ok(ExitCode::from(1))
        }
        Some(broken) => {
            println!(
                "BROKEN at event {} (seq {}): {}; {} events before it verified",
                broken.event_id, broken.seq, broken.problem, report.events_checked
            );
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn token_create(database_url: &str, name: &str, role: &str) -> anyhow::Result<ExitCode> {
    let Some(role) = Role::parse(role) else { bail!("unknown role {role:?}: use admin, operator, viewer or source") };
    if name.trim().is_empty() || name.len() > 200 {
        bail!("--name must be 1 to 200 characters, as the API asks");
    }
    let store = open_or_create_store(database_url).await?;
    let value = new_token_value();
    let token = NewToken {
        id: TokenId::generate().into_string(),
        name: name.to_owned(),
        role,
        hash: hash_token(&value),
        created_at: now_millis(),
    };
    let result = store.create_token(token).await;
    store.close().await;
    result.context("while storing the token")?;
    println!("{value}");
    Ok(ExitCode::SUCCESS)
}

/// Turns command-line filters into a store query, refusing bad values by name.
pub fn event_query(
    filters: &crate::EventFilters,
    limit: usize,
    sort: &str,
    cursor: Option<&str>,
) -> anyhow::Result<EventQuery> {
    let event_type = filters
        .event_type
        .as_deref()
        .map(|text| EventType::parse(text).with_context(|| format!("--type: unknown event type {text:?}")))
        .transpose()?;
    let status = filters
        .status
        .as_deref()
        .map(|text| {
            RegisterStatus::parse(text)
                .with_context(|| format!("--status: {text:?} is not new, success, skip or error"))
        })
        .transpose()?;
    let time = |text: &Option<String>, end: bool, flag: &str| {
        text.as_deref()
            .map(|text| parse_query_time(text, end).map_err(|error| anyhow::anyhow!("{flag}: {error}")))
            .transpose()
    };
    if !(1..=MAX_PAGE).contains(&limit) {
        bail!("--limit: must be from 1 to {MAX_PAGE}");
    }
    let sort = match sort {
        "asc" => SortOrder::Asc,
        "desc" => SortOrder::Desc,
        other => bail!("--sort: {other:?} is not asc or desc"),
    };
    let cursor = cursor
        .map(|text| {
            Cursor::decode_for(text, CursorList::Events, sort).map_err(|problem| anyhow::anyhow!("--cursor: {problem}"))
        })
        .transpose()?;
    Ok(EventQuery {
        lead_id: filters.lead_id.clone(),
        event_type,
        status,
        source_id: filters.source_id.clone(),
        destination_id: filters.destination_id.clone(),
        flow_id: filters.flow_id.clone(),
        start: time(&filters.start, false, "--start")?,
        end: time(&filters.end, true, "--end")?,
        rules: filters
            .rules
            .as_deref()
            .map(|text| -> anyhow::Result<RuleSet> {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|error| anyhow::anyhow!("--rules: not valid JSON: {error}"))?;
                let rules = RuleSet::from_json(&value).map_err(|error| anyhow::anyhow!("--rules: {error}"))?;
                leadrelay_store::check_event_rules(&rules).map_err(|error| anyhow::anyhow!("--rules: {error}"))?;
                Ok(rules)
            })
            .transpose()?,
        typed_rules: Default::default(),
        limit,
        sort,
        cursor,
    })
}

/// The top-level fields `--include` and `--exclude` leave.
pub fn projection(filters: &crate::EventFilters) -> anyhow::Result<Vec<&'static str>> {
    leadrelay_store::event_projection(filters.include.as_deref(), filters.exclude.as_deref())
        .map_err(|error| anyhow::anyhow!("--{error}"))
}

/// The `--rules` read against the stored flows' field types, as their filters read them.
async fn type_rules(store: &dyn Store, query: &mut EventQuery) -> anyhow::Result<()> {
    if query.rules.is_some() {
        let config = store.load_config().await.context("while reading the configuration")?;
        query.type_rules(&config).map_err(|problem| anyhow::anyhow!("--rules: {problem}"))?;
    }
    Ok(())
}

pub async fn events(database_url: &str, mut query: EventQuery, fields: &[&'static str]) -> anyhow::Result<ExitCode> {
    let store = open_existing_store(database_url).await?;
    if let Err(error) = type_rules(store.as_ref(), &mut query).await {
        store.close().await;
        return Err(error);
    }
    let page = leadrelay_store::events_page(store.as_ref(), &query, 20_000).await;
    store.close().await;
    let page = page.context("while reading events")?;
    let lines = EventLines::from_events(&page.items, fields);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(lines.ndjson.as_bytes()).context("while writing events")?;
    stdout.flush().context("while writing events")?;
    if let Some(cursor) = page.next_cursor {
        eprintln!("more events: --cursor {}", cursor.encode_for(CursorList::Events, query.sort));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(
    database_url: &str,
    mut query: EventQuery,
    fields: &[&'static str],
    format: &str,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if !matches!(format, "ndjson" | "csv") {
        bail!("--format: {format:?} is not ndjson or csv");
    }
    let store = open_existing_store(database_url).await?;
    if let Err(error) = type_rules(store.as_ref(), &mut query).await {
        store.close().await;
        return Err(error);
    }
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("while creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let result = write_export(store.clone(), query, fields, format, &mut out).await;
    store.close().await;
    let count = result?;
    out.flush().context("while writing the export")?;
    eprintln!("exported {count} events");
    Ok(ExitCode::SUCCESS)
}

async fn write_export(
    store: Arc<dyn Store>,
    query: EventQuery,
    fields: &[&'static str],
    format: &str,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    use futures::StreamExt;
    let mut count = 0;
    if format == "csv" {
        out.write_all(&leadrelay_server::export::csv_header(fields))?;
        let mut pages = leadrelay_store::export_events(store, query).chunks(500);
        while let Some(chunk) = pages.next().await {
            let events = chunk.into_iter().collect::<Result<Vec<_>, _>>().context("while reading events")?;
            out.write_all(&leadrelay_server::export::encode_csv(&events, fields)?)?;
            count += events.len();
        }
    } else {
        let mut pages = leadrelay_store::export_event_lines(store, query, fields.to_vec());
        while let Some(page) = pages.next().await {
            let page = page.context("while reading events")?;
            out.write_all(page.ndjson.as_bytes())?;
            count += page.count;
        }
    }
    Ok(count)
}
