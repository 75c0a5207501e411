//! Configuration: the declarative document of `leadrelay apply`, the whole current configuration,
//! and the changes the API makes to it, each validated as a whole before it is stored.

mod objects;
mod redact;
mod validate;

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use objects::*;
pub use redact::{redacted_url, secret_parameter, MASK};
pub use validate::{parse_json_path, parse_status_range, validate_http_url, TEMPLATE_FUEL};

use crate::ids::{slug_from_name, unique_slug_from_name};
use crate::time::Millis;

/// The kinds of configuration object that have their own REST collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    Flow,
    Source,
    Destination,
}

impl ConfigKind {
    pub const ALL: [ConfigKind; 3] = [ConfigKind::Flow, ConfigKind::Source, ConfigKind::Destination];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Flow => "flow",
            ConfigKind::Source => "source",
            ConfigKind::Destination => "destination",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declarative configuration file (YAML or JSON), as `leadrelay apply` and `POST /api/v1/config` take it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    #[serde(default)]
    pub flows: Vec<Flow>,
    #[serde(default)]
    pub sources: Vec<Source>,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    // The following lists belong to features that are not built yet. They are part of the
    // document's shape, so they are recognised by name, and refused when non-empty rather
    // than silently ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_definitions: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_lists: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Value>,
}

/// What is wrong with a configuration: every problem found, each naming where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn one(problem: impl Into<String>) -> Self {
        Self { problems: vec![problem.into()] }
    }
}

/// Parses a document from JSON, naming the path of the first problem (`flows[0].fields[1]: unknown field ...`).
pub fn parse_json<T: serde::de::DeserializeOwned + Serialize>(text: &str) -> Result<T, ConfigError> {
    // Windows editors start UTF-8 files with a byte order mark; it is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let deserializer = &mut serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| ConfigError::one(describe_path_error(&error)))?;
    match serde_json::from_str::<Value>(text) {
        Ok(written) => objects_written_as_objects(&written, parsed),
        Err(_) => Ok(parsed),
    }
}

/// Parses a document from a JSON value already in memory.
pub fn parse_value<T: serde::de::DeserializeOwned + Serialize>(value: Value) -> Result<T, ConfigError> {
    let parsed =
        serde_path_to_error::deserialize(&value).map_err(|error| ConfigError::one(describe_path_error(&error)))?;
    objects_written_as_objects(&value, parsed)
}

/// Parses a document from YAML (a superset of JSON), naming the path of the first problem.
pub fn parse_yaml<T: serde::de::DeserializeOwned + Serialize>(text: &str) -> Result<T, ConfigError> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize(deserializer)
        .map_err(|error| ConfigError::one(describe_path_error(&error)))?;
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(written) => objects_written_as_objects(&written, parsed),
        Err(_) => Ok(parsed),
    }
}

/// Refuses an object written as a list. serde fills a struct from a list by position
/// (`success: ["201", null, "x"]` would set `body_regex`), which gets around the names that
/// make every key checked; the parsed value, written back, shows where that happened.
fn objects_written_as_objects<T: Serialize>(written: &Value, parsed: T) -> Result<T, ConfigError> {
    fn find(written: &Value, read: &Value, path: &str) -> Option<String> {
        match (written, read) {
            (Value::Array(_), Value::Object(_)) => Some(path.to_owned()),
            (Value::Object(written), Value::Object(read)) => written.iter().find_map(|(key, value)| {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                find(value, read.get(key)?, &at)
            }),
            (Value::Array(written), Value::Array(read)) => written
                .iter()
                .zip(read)
                .enumerate()
                .find_map(|(index, (value, read))| find(value, read, &format!("{path}[{index}]"))),
            _ => None,
        }
    }
    let read = serde_json::to_value(&parsed).map_err(|error| ConfigError::one(error.to_string()))?;
    match find(written, &read, "") {
        None => Ok(parsed),
        Some(path) if path.is_empty() => {
            Err(ConfigError::one("must be an object of named keys, not a list".to_owned()))
        }
        Some(path) => Err(ConfigError::one(format!("{path}: must be an object of named keys, not a list"))),
    }
}

/// A document as YAML with the shape of its JSON (rule sets as `all:`/`any:` maps, never YAML
/// tags), so that the text applies again as it is and any YAML reader can load it.
pub fn to_yaml<T: serde::Serialize>(document: &T) -> Result<String, String> {
    let value = serde_json::to_value(document).map_err(|error| error.to_string())?;
    serde_yaml_ng::to_string(&value).map_err(|error| error.to_string())
}

fn describe_path_error<E: fmt::Display>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    let inner = error.inner().to_string();
    if path == "." || path.is_empty() {
        return inner;
    }
    // The YAML reader names the enclosing path itself (`flows[0]: unknown field ...`); the
    // full path said first is enough.
    let inner = match inner.split_once(": ") {
        Some((said, rest)) if !said.contains(' ') && path.starts_with(said) => rest.to_owned(),
        _ => inner,
    };
    format!("{path}: {inner}")
}

/// The whole current configuration, keyed by id in creation order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub flows: IndexMap<String, Flow>,
    pub sources: IndexMap<String, Source>,
    pub destinations: IndexMap<String, Destination>,
}

/// One object of any kind, as the REST API creates and replaces them.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigObject {
    Flow(Flow),
    Source(Source),
    Destination(Box<Destination>),
}

impl ConfigObject {
    pub fn kind(&self) -> ConfigKind {
        match self {
            ConfigObject::Flow(_) => ConfigKind::Flow,
            ConfigObject::Source(_) => ConfigKind::Source,
            ConfigObject::Destination(_) => ConfigKind::Destination,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            ConfigObject::Flow(flow) => &flow.id,
            ConfigObject::Source(source) => &source.id,
            ConfigObject::Destination(destination) => &destination.id,
        }
    }

    pub fn parse(kind: ConfigKind, value: Value) -> Result<Self, ConfigError> {
        Ok(match kind {
            ConfigKind::Flow => ConfigObject::Flow(parse_value(value)?),
            ConfigKind::Source => ConfigObject::Source(parse_value(value)?),
            ConfigKind::Destination => ConfigObject::Destination(Box::new(parse_value(value)?)),
        })
    }

    pub fn to_json(&self) -> Value {
        let value = match self {
            ConfigObject::Flow(flow) => serde_json::to_value(flow),
            ConfigObject::Source(source) => serde_json::to_value(source),
            ConfigObject::Destination(destination) => serde_json::to_value(destination),
        };
        value.unwrap_or(Value::Null)
    }

    /// Fills in a generated id (from the name) and a name (from the id) where they are absent.
    /// A `unique` id has a random suffix, for a `POST` that creates a new object each time;
    /// otherwise the same name gives the same id, so that applying a file twice replaces
    /// what the first time created.
    pub fn fill_defaults(&mut self, unique: bool) {
        let kind = self.kind().as_str();
        let (id, name) = match self {
            ConfigObject::Flow(flow) => (&mut flow.id, &mut flow.name),
            ConfigObject::Source(source) => (&mut source.id, &mut source.name),
            ConfigObject::Destination(destination) => (&mut destination.id, &mut destination.name),
        };
        if id.is_empty() {
            *id = if unique { unique_slug_from_name(name, kind) } else { slug_from_name(name, kind) };
        }
        if name.is_empty() {
            *name = id.clone();
        }
    }
}

/// How long a replaced signing secret keeps signing beside the new one: a day.
pub const SECRET_OVERLAP_MS: Millis = 86_400_000;

/// A new Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
pub fn new_signing_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// How a change to one object treats an object of the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// `POST`: the id must be new.
    Create,
    /// `PUT`: the id must exist.
    Replace,
    /// `apply`: either.
    Upsert,
}

/// A change to the configuration, applied to a copy and validated as a whole before it is kept.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigChange {
    Put {
        object: ConfigObject,
        mode: WriteMode,
    },
    Delete {
        kind: ConfigKind,
        id: String,
    },
    Apply(ConfigDocument),
    /// Applies a document and deletes every object it does not name: the configuration
    /// becomes the document (`leadrelay apply --prune`).
    Sync(ConfigDocument),
    /// Disables a destination as it is stored when the change is made (a circuit breaker's
    /// trip), so that an edit another node made a moment before is kept.
    DisableDestination {
        id: String,
    },
}

/// Why a change was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChangeError {
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: ConfigKind, id: String },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: ConfigKind, id: String },
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Config {
    pub fn get(&self, kind: ConfigKind, id: &str) -> Option<ConfigObject> {
        match kind {
            ConfigKind::Flow => self.flows.get(id).cloned().map(ConfigObject::Flow),
            ConfigKind::Source => self.sources.get(id).cloned().map(ConfigObject::Source),
            ConfigKind::Destination => {
                self.destinations.get(id).cloned().map(|d| ConfigObject::Destination(Box::new(d)))
            }
        }
    }

    pub fn list(&self, kind: ConfigKind) -> Vec<ConfigObject> {
        match kind {
            ConfigKind::Flow => self.flows.values().cloned().map(ConfigObject::Flow).collect(),
            ConfigKind::Source => self.sources.values().cloned().map(ConfigObject::Source).collect(),
            ConfigKind::Destination => {
                self.destinations.values().cloned().map(|d| ConfigObject::Destination(Box::new(d))).collect()
            }
        }
    }

    fn contains(&self, kind: ConfigKind, id: &str) -> bool {
        match kind {
            ConfigKind::Flow => self.flows.contains_key(id),
            ConfigKind::Source => self.sources.contains_key(id),
            ConfigKind::Destination => self.destinations.contains_key(id),
        }
    }

    fn insert(&mut self, object: ConfigObject) {
        match object {
            ConfigObject::Flow(flow) => {
                self.flows.insert(flow.id.clone(), flow);
            }
            ConfigObject::Source(source) => {
                self.sources.insert(source.id.clone(), source);
            }
            ConfigObject::Destination(destination) => {
                self.destinations.insert(destination.id.clone(), *destination);
            }
        }
    }

    fn remove(&mut self, kind: ConfigKind, id: &str) {
        match kind {
            ConfigKind::Flow => {
                self.flows.shift_remove(id);
            }
            ConfigKind::Source => {
                self.sources.shift_remove(id);
            }
            ConfigKind::Destination => {
                self.destinations.shift_remove(id);
            }
        }
    }

    /// Applies a change to a copy of this configuration and validates the result as a whole.
    /// Returns the new configuration and the objects whose stored form changed.
    /// Applies a change at `now` (which dates the overlap of a replaced signing secret).
    pub fn change(&self, change: ConfigChange, now: Millis) -> Result<(Config, Vec<ObjectWrite>), ChangeError> {
        let mut next = self.clone();
        let mut writes = Vec::new();
        match change {
            ConfigChange::Put { mut object, mode } => {
                object.fill_defaults(true);
                self.give_signing_secret(&mut object, now);
                let exists = self.contains(object.kind(), object.id());
                match (mode, exists) {
                    (WriteMode::Create, true) => {
                        return Err(ChangeError::AlreadyExists { kind: object.kind(), id: object.id().to_owned() })
                    }
                    (WriteMode::Replace, false) => {
                        return Err(ChangeError::NotFound { kind: object.kind(), id: object.id().to_owned() })
                    }
                    _ => {}
                }
                writes.push(ObjectWrite::Put(object.clone()));
                next.insert(object);
            }
            ConfigChange::Delete { kind, id } => {
                if !self.contains(kind, &id) {
                    return Err(ChangeError::NotFound { kind, id });
                }
                if let Some(user) = self.user_of(kind, &id) {
                    return Err(ChangeError::InUse(format!("{kind} {id:?} is used by {user}; change that first")));
                }
                next.remove(kind, &id);
                writes.push(ObjectWrite::Delete { kind, id });
            }
            ConfigChange::DisableDestination { id } => {
                let Some(destination) = self.destinations.get(&id) else {
                    return Err(ChangeError::NotFound { kind: ConfigKind::Destination, id });
                };
                let mut disabled = destination.clone();
                disabled.enabled = false;
                let object = ConfigObject::Destination(Box::new(disabled));
                writes.push(ObjectWrite::Put(object.clone()));
                next.insert(object);
            }
            ConfigChange::Sync(document) => {
                // An empty file (a truncated copy, the wrong path) would delete everything.
                let empty =
                    document.flows.is_empty() && document.sources.is_empty() && document.destinations.is_empty();
                if empty && self.list_all().next().is_some() {
                    return Err(ConfigError::one(
                        "a pruning apply of a document that names no flow, source or destination would delete every \
                         object; delete them one by one (DELETE on each), or name what should stay",
                    )
                    .into());
                }
                let named = self.apply_document(document, now, &mut next, &mut writes)?;
                let unnamed: Vec<(ConfigKind, String)> =
                    self.list_all().filter(|(kind, id)| !named.contains(&(*kind, id.clone()))).collect();
                for (kind, id) in unnamed {
                    next.remove(kind, &id);
                    writes.push(ObjectWrite::Delete { kind, id });
                }
            }
            ConfigChange::Apply(document) => {
                self.apply_document(document, now, &mut next, &mut writes)?;
            }
        }
        // Every problem of the result is refused, except one the configuration already had:
        // a check added by an upgrade must not block every later change (a circuit breaker's
        // trip included) until someone mends an object nobody is touching.
        if let Err(error) = next.validate() {
            let known = self.validate().err().map(|known| known.problems).unwrap_or_default();
            let new: Vec<String> = error.problems.into_iter().filter(|problem| !known.contains(problem)).collect();
            if !new.is_empty() {
                return Err(ConfigError { problems: new }.into());
            }
        }
        Ok((next, writes))
    }

    /// Every object's kind and id, sources first (they refer to flows), then flows, then
    /// destinations.
    fn list_all(&self) -> impl Iterator<Item = (ConfigKind, String)> + '_ {
        let sources = self.sources.keys().map(|id| (ConfigKind::Source, id.clone()));
        let flows = self.flows.keys().map(|id| (ConfigKind::Flow, id.clone()));
        let destinations = self.destinations.keys().map(|id| (ConfigKind::Destination, id.clone()));
        sources.chain(flows).chain(destinations)
    }

    /// Writes a document's objects into `next`; answers the kind and id of each.
    fn apply_document(
        &self,
        document: ConfigDocument,
        now: Millis,
        next: &mut Config,
        writes: &mut Vec<ObjectWrite>,
    ) -> Result<std::collections::HashSet<(ConfigKind, String)>, ChangeError> {
        document.refuse_unbuilt_sections()?;
        let objects = document
            .flows
            .into_iter()
            .map(ConfigObject::Flow)
            .chain(document.destinations.into_iter().map(|d| ConfigObject::Destination(Box::new(d))))
            .chain(document.sources.into_iter().map(ConfigObject::Source));
        let mut seen = std::collections::HashSet::new();
        for mut object in objects {
            let named = object.id().is_empty();
            object.fill_defaults(false);
            self.give_signing_secret(&mut object, now);
            if !seen.insert((object.kind(), object.id().to_owned())) {
                let hint =
                    if named { " (an object without an id is named after its name: give each an id)" } else { "" };
                return Err(ConfigError::one(format!(
                    "{} {:?} appears twice in the document{hint}",
                    object.kind(),
                    object.id()
                ))
                .into());
            }
            if next.get(object.kind(), object.id()).as_ref() != Some(&object) {
                writes.push(ObjectWrite::Put(object.clone()));
                next.insert(object);
            }
        }
        Ok(seen)
    }

    /// Every webhook is signed: a destination written without a signing secret keeps the one
    /// it has, or gets a new one. A secret that changes stays in force beside the new one for
    /// [`SECRET_OVERLAP_MS`], so that receivers can switch without dropping a message.
    fn give_signing_secret(&self, object: &mut ConfigObject, now: Millis) {
        let ConfigObject::Destination(destination) = object else { return };
        let stored = self.destinations.get(&destination.id);
        let stored_secret = stored.and_then(|stored| stored.signing_secret.clone());
        if destination.signing_secret.is_none() {
            destination.signing_secret = Some(stored_secret.clone().unwrap_or_else(new_signing_secret));
        }
        // Absent keeps the overlap running; an empty list ends it now.
        let mut previous = match destination.previous_signing_secrets.take() {
            Some(given) => given,
            None => stored.and_then(|stored| stored.previous_signing_secrets.clone()).unwrap_or_default(),
        };
        if let Some(old) = stored_secret.filter(|old| Some(old) != destination.signing_secret.as_ref()) {
            previous.push(PreviousSecret { secret: old, until: crate::time::format_millis(now + SECRET_OVERLAP_MS) });
        }
        // Any ISO 8601 time or date (a date runs to its end) is stored in one form; one that
        // cannot be read stays as written, for the check to refuse by name.
        for old in &mut previous {
            if let Ok(until) = crate::time::parse_query_time(&old.until, true) {
                old.until = crate::time::format_millis(until);
            }
        }
        let readable = |old: &PreviousSecret| chrono::DateTime::parse_from_rfc3339(&old.until).is_ok();
        previous.retain(|old| {
            !readable(old) || (old.in_force(now) && Some(&old.secret) != destination.signing_secret.as_ref())
        });
        // Stored as read back: an empty list is no list.
        destination.previous_signing_secrets = (!previous.is_empty()).then_some(previous);
    }

    /// Names an object that refers to the given one, if any.
    fn user_of(&self, kind: ConfigKind, id: &str) -> Option<String> {
        match kind {
            ConfigKind::Flow => self.sources.values().find(|s| s.flow_id == id).map(|s| format!("source {:?}", s.id)),
            ConfigKind::Destination => {
                self.flows.values().find(|f| f.destinations.iter().any(|d| d == id)).map(|f| format!("flow {:?}", f.id))
            }
            ConfigKind::Source => None,
        }
    }

    /// How many objects of this configuration are new or different in it compared to `before`.
    pub fn changed_since(&self, before: &Config) -> usize {
        let written = ConfigKind::ALL
            .iter()
            .flat_map(|kind| self.list(*kind))
            .filter(|object| before.get(object.kind(), object.id()).as_ref() != Some(object))
            .count();
        let deleted = before.list_all().filter(|(kind, id)| !self.contains(*kind, id)).count();
        written + deleted
    }

    /// The document form, for `GET /api/v1/config` and export.
    pub fn to_document(&self) -> ConfigDocument {
        ConfigDocument {
            flows: self.flows.values().cloned().collect(),
            sources: self.sources.values().cloned().collect(),
            destinations: self.destinations.values().cloned().collect(),
            ..ConfigDocument::default()
        }
    }

    /// Rebuilds the configuration from stored objects (in stored order).
    pub fn from_objects(objects: impl IntoIterator<Item = ConfigObject>) -> Self {
        let mut config = Config::default();
        for object in objects {
            config.insert(object);
        }
        config
    }
}

impl ConfigDocument {
    fn refuse_unbuilt_sections(&self) -> Result<(), ConfigError> {
        let sections = [
            ("event_definitions", self.event_definitions.len()),
            ("event_lists", self.event_lists.len()),
            ("actions", self.actions.len()),
            ("users", self.users.len()),
            ("groups", self.groups.len()),
            ("alerts", self.alerts.len()),
        ];
        let problems: Vec<String> = sections
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(name, _)| format!("{name}: not supported by this version of leadrelay yet"))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// One object as it must be written to (or removed from) storage.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectWrite {
    Put(ConfigObject),
    Delete { kind: ConfigKind, id: String },
}

#[cfg(test)]
mod tests;
