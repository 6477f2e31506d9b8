//! Reading a config: the file (TOML, YAML or JSON by its extension), then
//! `STRAIT__*` environment variables over it, then validation.
//!
//! The `config` crate does the merging and the deserializing; its errors are
//! turned here into [`ConfigError`]s that name the key the way the file
//! spells it (`flows[0].topics`, `clusters.east.kafka."sasl.password"`).

use std::collections::BTreeMap;
use std::path::Path;

use config::{Config, FileFormat};

use super::env::EnvOverrides;
use super::error::ConfigError;
use super::file::ConfigFile;
use super::settings::Settings;
use super::validate;

/// The formats a config file may be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.toml`, and any other extension.
    Toml,
    /// `.yaml` or `.yml`.
    Yaml,
    /// `.json`.
    Json,
}

impl Format {
    /// The format a file's extension selects; TOML unless YAML or JSON.
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("yaml" | "yml") => Self::Yaml,
            Some("json") => Self::Json,
            _ => Self::Toml,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
            Self::Json => "JSON",
        }
    }

    fn file_format(self) -> FileFormat {
        match self {
            Self::Toml => FileFormat::Toml,
            Self::Yaml => FileFormat::Yaml,
            Self::Json => FileFormat::Json,
        }
    }
}

/// Reads, merges with the environment (`STRAIT__*`) and validates the config
/// at `path`. Nothing is connected to; secrets are read.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with the given environment variables (only `STRAIT__*` ones are
/// used) instead of the process's. Secrets given as `{ env = "VAR" }` are
/// still read from the process's environment.
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let format = Format::from_path(path);
    parse(&text, format, env).map_err(|e| match e {
        ConfigError::Syntax { format, reason, .. } => ConfigError::Syntax {
            path: path.to_path_buf(),
            format,
            reason,
        },
        other => other,
    })
}

/// Parses and validates config text, with environment overrides; for tests
/// and tools that have no file. Syntax errors name the path `<text>`.
pub fn parse(
    text: &str,
    format: Format,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let env = EnvOverrides::new(env);
    let built = Config::builder()
        .add_source(config::File::from_str(text, format.file_format()))
        .add_source(env.clone())
        .build();
    let origins = env.applied();
    let result = built
        .and_then(|c| c.try_deserialize::<ConfigFile>())
        .map_err(|e| translate(e, format))
        .and_then(validate::settings);
    result.map_err(|e| attribute(e, &origins))
}

/// When the key at fault was set by an environment variable, say so.
fn attribute(error: ConfigError, origins: &BTreeMap<String, String>) -> ConfigError {
    let var = error.key().and_then(|key| {
        origins.get(key).or_else(|| {
            // A problem with a whole table an override created or changed.
            origins
                .iter()
                .find(|(k, _)| k.starts_with(key) && k[key.len()..].starts_with('.'))
                .map(|(_, v)| v)
        })
    });
    match var {
        Some(var) => ConfigError::FromEnv {
            var: var.clone(),
            error: Box::new(error),
        },
        None => error,
    }
}

/// The `config` crate's error, as a [`ConfigError`] that names the key.
fn translate(error: config::ConfigError, format: Format) -> ConfigError {
    without_kafka_values(translate_raw(error, format))
}

/// A value under `clusters.NAME.kafka` may be a password, even one misplaced
/// by an environment variable: drop the "found ..." part that would quote it.
fn without_kafka_values(error: ConfigError) -> ConfigError {
    match error {
        ConfigError::Invalid { key, message } if is_kafka_key(&key) => {
            let message = match message.split_once(", found ") {
                Some((expected, _)) => expected.to_string(),
                None => message,
            };
            ConfigError::Invalid { key, message }
        }
        other => other,
    }
}

fn is_kafka_key(key: &str) -> bool {
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    matches!(parts.as_slice(), ["clusters", _, k, ..] if k.starts_with("kafka"))
}

fn translate_raw(error: config::ConfigError, format: Format) -> ConfigError {
    use config::ConfigError as E;
    match error {
        E::FileParse { cause, .. } => ConfigError::Syntax {
            path: "<text>".into(),
            format: format.name(),
            reason: one_line(&cause.to_string()),
        },
        E::NotFound(key) => ConfigError::Missing {
            key: normalize_key(&key),
        },
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => ConfigError::invalid(
            normalize_key(&key.unwrap_or_default()),
            plain_words(&format!("expected {expected}, found {unexpected}")),
        ),
        E::At { error, key, .. } => {
            let key = normalize_key(&key.unwrap_or_default());
            match *error {
                E::Message(message) => from_message(&key, &message),
                other => ConfigError::invalid(key, one_line(&other.to_string())),
            }
        }
        E::Message(message) => match message
            .strip_prefix("environment variable ")
            .and_then(|m| m.split_once(": "))
        {
            // Raised by EnvOverrides: the variable is the key at fault.
            Some((var, reason)) => ConfigError::invalid(var, reason),
            None => from_message("", &message),
        },
        other => ConfigError::invalid("config", one_line(&other.to_string())),
    }
}

/// The keys of the file's top level.
const TOP_LEVEL_KEYS: &[&str] = &[
    "clusters",
    "flows",
    "shutdown_timeout",
    "http",
    "log",
    "metrics",
];

/// A serde message raised at `parent` (the key of the table being read).
fn from_message(parent: &str, message: &str) -> ConfigError {
    let join = |field: &str| {
        if parent.is_empty() {
            field.to_string()
        } else {
            format!("{parent}.{field}")
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let hint = if !parent.is_empty() && TOP_LEVEL_KEYS.contains(&field) {
                // TOML puts every key after a [table] header into that table.
                Some(format!(
                    "`{field}` is a top-level key: in TOML, write it before the first [table] \
                     or [[table]] header"
                ))
            } else {
                closest(field, &allowed).map(|k| format!("did you mean `{k}`?"))
            };
            return ConfigError::UnknownKey {
                key: join(field),
                allowed: if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                },
                hint,
            };
        }
    }
    let mut message = one_line(message);
    // serde's "invalid type: string "x", expected a sequence": expectation first.
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.rsplit_once(", expected "))
    {
        message = plain_words(&format!("expected {expected}, found {found}"));
    }
    if message.contains("expected a duration") {
        // humantime-serde's message: say what a duration looks like.
        message = message.replace("invalid value: string ", "");
        message = message.replace(
            ", expected a duration",
            " is not a duration; write a number and a unit, such as \"500ms\", \"30s\", \"2m\" or \"1h\"",
        );
    }
    if parent.is_empty() {
        ConfigError::invalid("config", message)
    } else {
        ConfigError::invalid(parent, message)
    }
}

/// serde's type names in the words of a config file.
fn plain_words(message: &str) -> String {
    let mut out = message.to_string();
    // Only the words serde writes around values, never the values themselves.
    for (serde, plain) in [
        ("expected a sequence", "expected a list"),
        (
            "expected an unsigned 64 bit or less integer",
            "expected a whole number, 0 or more",
        ),
        ("expected a map", "expected a table"),
        ("found map", "found a table"),
        ("found sequence", "found a list"),
    ] {
        if let Some(rest) = out.strip_prefix(serde) {
            out = format!("{plain}{rest}");
        }
        if let Some(head) = out.strip_suffix(serde) {
            out = format!("{head}{plain}");
        }
    }
    if let Some(rest) = out.strip_prefix("expected struct ") {
        // "expected struct FlowConfig, found ..." -> "expected a table, found ..."
        out = match rest.split_once(", ") {
            Some((_, found)) => format!("expected a table, {found}"),
            None => "expected a table".to_string(),
        };
    }
    out
}

/// The allowed key a mistyped one most likely meant: at most two edits away.
fn closest<'a>(field: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(field, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `clusters.east.kafka.sasl.password` → `clusters.east.kafka."sasl.password"`,
/// the way the file spells a dotted property name; likewise for topic configs.
fn normalize_key(key: &str) -> String {
    // The `config` crate writes `flows[0]topics` for some errors.
    let mut fixed = String::with_capacity(key.len() + 2);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        fixed.push(c);
        if c == ']' && chars.peek().is_some_and(|n| *n != '.' && *n != '[') {
            fixed.push('.');
        }
    }
    let key = fixed.as_str();
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    match parts.as_slice() {
        ["clusters", name, "kafka", property] => super::cluster::property_key(name, property),
        _ => match key.split_once(".topic_config_overrides.") {
            Some((flow, name)) => format!("{flow}.topic_config_overrides.\"{name}\""),
            None => key.to_string(),
        },
    }
}

/// A parser's multi-line message (with a source excerpt) on one line: the
/// position and the reason.
pub(crate) fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        // Excerpt lines look like `1 | text` or `| ^^^`.
        .filter(|l| {
            let excerpt = l.starts_with('|')
                || l.split_once('|')
                    .is_some_and(|(n, _)| n.trim().parse::<u32>().is_ok());
            !excerpt
        })
        .collect();
    lines.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::from_path(Path::new("a.yml")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("a.YAML")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("a.json")), Format::Json);
        assert_eq!(Format::from_path(Path::new("a.toml")), Format::Toml);
        assert_eq!(Format::from_path(Path::new("strait.conf")), Format::Toml);
    }

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("topic", &["topics", "source"]), Some("topics"));
        assert_eq!(closest("zzzzzz", &["topics", "source"]), None);
    }

    #[test]
    fn keys_quote_dotted_names() {
        assert_eq!(
            normalize_key("clusters.east.kafka.sasl.password"),
            "clusters.east.kafka.\"sasl.password\""
        );
        assert_eq!(
            normalize_key("flows[0].topic_config_overrides.retention.ms"),
            "flows[0].topic_config_overrides.\"retention.ms\""
        );
        assert_eq!(normalize_key("flows[0].topics"), "flows[0].topics");
        assert_eq!(normalize_key("flows[0]topics"), "flows[0].topics");
        assert_eq!(normalize_key("flows[0].topics[1]"), "flows[0].topics[1]");
    }
}
