//! Where settings come from: flags and `HERALD_*` variables (clap), the
//! TOML file, the declared defaults; and their merge, strongest first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde::Deserialize;

use super::{all, find, Engine, Fallback, Kind, Read, Setting, GROUPS};

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Variable,
    File,
    Default,
}

/// A setting's value as its source wrote it, before typed reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    One(String),
    List(Vec<String>),
    /// `[[issuers]]` tables from the file.
    Issuers(Vec<FileIssuer>),
    /// `[[bridge]]` tables from the file.
    Bridges(Vec<toml::Table>),
}

/// One `[[issuers]]` table: an issuer trusted for draft-08 access tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// `secret:TEXT`, `pem:PATH`, `jwks:PATH` or `jwks:URL`.
    pub key: String,
    /// Accepted algorithms [default: from the key].
    #[serde(default)]
    pub algorithms: Vec<String>,
}

/// The settings given as flags or variables, and `--config`.
#[derive(Debug, Clone, Default)]
pub struct Args {
    config: Option<PathBuf>,
    given: Vec<(&'static str, Source, Raw)>,
}

/// The clap argument of one declared setting.
fn arg(engines: &[&str], s: &Setting) -> Arg {
    let help = match s.default {
        Fallback::Value(v) | Fallback::Unset(v) if v != "none" => {
            format!("{} [default: {v}]", s.help)
        }
        _ => s.help.to_owned(),
    };
    let arg = Arg::new(s.name)
        .long(s.flag())
        .value_name(s.name.to_ascii_uppercase())
        .env(s.variable())
        .hide_env_values(s.secret)
        .help(help);
    let arg = match engines {
        [] => arg,
        [e] => arg.help_heading(format!("Settings of the {e} engine (--engine {e})")),
        several => arg.help_heading(format!("Settings of the {} engines", several.join(" and "))),
    };
    match s.kind {
        Kind::One => arg.action(ArgAction::Set),
        Kind::Switch => arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value("true")
            .value_name("true|false"),
        Kind::List => arg.action(ArgAction::Append).value_delimiter(','),
        Kind::Issuers => arg
            .action(ArgAction::Append)
            .value_delimiter(';')
            .value_name("ISSUER KEY [ALGS]"),
        Kind::Bridges => arg
            .action(ArgAction::Append)
            .value_delimiter(';')
            .value_name("SOURCE ARGS"),
    }
}

impl clap::Args for Args {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd
            .arg(
                Arg::new("config")
                    .long("config")
                    .env("HERALD_CONFIG")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML configuration file; its keys are the settings' names"),
            )
            .after_help(
                "Each setting is a flag, a HERALD_* variable or a key of the --config file, \
                 strongest first. A setting of an engine other than the chosen one is an \
                 error wherever it comes from, a variable left in the environment included. \
                 Durations are written 500ms, 25s, 5m, 2h, 7d, or seconds.\n",
            );
        GROUPS.iter().fold(cmd, |cmd, g| {
            g.settings
                .iter()
                .fold(cmd, |cmd, s| cmd.arg(arg(g.engines, s)))
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Args {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Args {
            config: m.get_one::<PathBuf>("config").cloned(),
            given: Vec::new(),
        };
        for (_, s) in all() {
            let Some(values) = m.get_many::<String>(s.name) else {
                continue;
            };
            let values: Vec<String> = values.cloned().collect();
            let source = match m.value_source(s.name) {
                Some(ValueSource::EnvVariable) => Source::Variable,
                _ => Source::Flag,
            };
            // An empty variable counts as unset, as `FOO= cmd` usually means.
            if source == Source::Variable && values.iter().all(String::is_empty) {
                continue;
            }
            let raw = match s.kind {
                Kind::One | Kind::Switch => Raw::One(values.concat()),
                Kind::List | Kind::Issuers | Kind::Bridges => Raw::List(values),
            };
            args.given.push((s.name, source, raw));
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The TOML file's settings. Unknown keys are refused so that a typo
/// never silently does nothing.
fn load_file(path: &Path) -> anyhow::Result<Vec<(&'static str, Raw)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(&text).map_err(|e| anyhow!("invalid config file {}: {e}", path.display()))
}

fn parse_file(text: &str) -> Result<Vec<(&'static str, Raw)>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let Some((_, s)) = find(&key) else {
            return Err(format!(
                "unknown setting `{key}` (see `herald serve --help` or README.md)"
            ));
        };
        let scalar = |v: toml::Value| match v {
            toml::Value::String(s) => Some(s),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let raw = match s.kind {
            Kind::One | Kind::Switch => scalar(value)
                .map(Raw::One)
                .ok_or_else(|| format!("{key}: expected a string, a number or a boolean"))?,
            Kind::List => match value {
                toml::Value::Array(items) => Raw::List(
                    items
                        .into_iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("{key}: expected an array of strings"))?,
                ),
                _ => return Err(format!("{key}: expected an array of strings")),
            },
            Kind::Issuers => Raw::Issuers(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("[[{key}]]: {}", e.message().trim()))?,
            ),
            Kind::Bridges => Raw::Bridges(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("[[{key}]]: {}", e.message().trim()))?,
            ),
        };
        settings.push((s.name, raw));
    }
    Ok(settings)
}

/// Every setting, merged: flags > variables > the file > defaults.
#[derive(Debug)]
pub struct Settings {
    values: BTreeMap<&'static str, (Source, Raw)>,
}

impl Settings {
    /// Reads the file, merges, and refuses settings of another engine.
    pub fn load(args: Args) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => Vec::new(),
        };
        Self::merge(args, file)
    }

    fn merge(args: Args, file: Vec<(&'static str, Raw)>) -> anyhow::Result<Settings> {
        let mut values = BTreeMap::new();
        for (_, s) in all() {
            if let Fallback::Value(v) = s.default {
                values.insert(s.name, (Source::Default, Raw::One(v.to_owned())));
            }
        }
        for (name, raw) in file {
            values.insert(name, (Source::File, raw));
        }
        // clap already put a flag over its variable.
        for (name, source, raw) in args.given {
            values.insert(name, (source, raw));
        }
        let settings = Settings { values };
        let engine = settings.engine()?;
        for (owners, s) in all() {
            if owners.is_empty() {
                continue;
            }
            let given = settings
                .values
                .get(s.name)
                .is_some_and(|(source, _)| *source != Source::Default);
            if given && !owners.contains(&engine.name()) {
                let owner = match owners.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => owners.join(""),
                };
                let (engines, choose) = if owners.len() == 1 {
                    ("engine", format!("--engine {owner}"))
                } else {
                    ("engines", format!("an engine among {}", owners.join(", ")))
                };
                bail!(
                    "{} ({}) is a setting of the {owner} {engines}; the engine is {} ({}): \
                     remove it or choose {choose}",
                    s.name,
                    settings.origin(s.name),
                    engine.name(),
                    settings.origin("engine"),
                );
            }
        }
        Ok(settings)
    }

    /// The chosen engine: only its settings (and the hub's) may be given.
    pub fn engine(&self) -> anyhow::Result<Engine> {
        self.value("engine")
    }

    /// How the user gave the setting: its flag, its variable, the file, or
    /// its default; for error messages.
    fn origin(&self, name: &str) -> String {
        let (_, s) = find(name).unwrap_or_else(|| panic!("undeclared setting {name}"));
        match self.values.get(name) {
            Some((Source::Flag, _)) => format!("--{}", s.flag()),
            Some((Source::Variable, _)) => s.variable(),
            Some((Source::File, _)) => "config file".to_owned(),
            Some((Source::Default, _)) | None => "default".to_owned(),
        }
    }

    /// The setting as its source wrote it; `None` when unset.
    pub fn raw(&self, name: &str) -> Option<&Raw> {
        assert!(find(name).is_some(), "undeclared setting {name}");
        self.values.get(name).map(|(_, raw)| raw)
    }

    /// The typed value of a one-value setting; `None` when unset.
    pub fn get<T: Read>(&self, name: &str) -> anyhow::Result<Option<T>> {
        match self.raw(name) {
            None => Ok(None),
            Some(Raw::One(text)) => T::read(text)
                .map(Some)
                .map_err(|e| anyhow!("{name} ({}): {e}", self.origin(name))),
            Some(_) => panic!("{name} is not a one-value setting"),
        }
    }

    /// The typed value of a setting that has a default value.
    pub fn value<T: Read>(&self, name: &str) -> anyhow::Result<T> {
        self.get(name)?
            .ok_or_else(|| anyhow!("{name} has no default value"))
    }

    /// A list setting without its empty items; `None` when unset.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        match self.raw(name)? {
            Raw::List(items) => Some(
                items
                    .iter()
                    .filter(|i| !i.trim().is_empty())
                    .cloned()
                    .collect(),
            ),
            _ => panic!("{name} is not a list setting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    /// Parses `herald serve` arguments with `env` as the only variables
    /// (the process environment is left alone: tests run in parallel).
    fn args(flags: &[&str], env: &[(&str, &str)]) -> Args {
        let cmd = <Args as clap::Args>::augment_args(Command::new("serve"));
        // clap reads the process's variables; these are added after it,
        // as clap would: split like on the command line, under a flag.
        let mut argv: Vec<String> = vec!["serve".into()];
        argv.extend(flags.iter().map(|f| (*f).to_owned()));
        let m = cmd.try_get_matches_from(&argv).unwrap();
        let mut a = Args::from_arg_matches(&m).unwrap();
        for (var, value) in env {
            let (_, s) = all()
                .find(|(_, s)| s.variable() == *var)
                .unwrap_or_else(|| panic!("no setting reads {var}"));
            if a.given.iter().any(|(n, _, _)| *n == s.name) {
                continue; // a flag wins over its variable
            }
            let raw = match s.kind {
                Kind::One | Kind::Switch => Raw::One((*value).to_owned()),
                Kind::List => Raw::List(value.split(',').map(str::to_owned).collect()),
                Kind::Issuers | Kind::Bridges => {
                    Raw::List(value.split(';').map(str::to_owned).collect())
                }
            };
            a.given.push((s.name, Source::Variable, raw));
        }
        a
    }

    fn merged(flags: &[&str], env: &[(&str, &str)], file: &str) -> anyhow::Result<Settings> {
        Settings::merge(args(flags, env), parse_file(file).map_err(|e| anyhow!(e))?)
    }

    #[test]
    fn flags_beat_variables_beat_the_file_beat_defaults() {
        let file = "heartbeat = '3s'\nshutdown_grace = '7s'\nmax_selectors = 9\n";
        let env = [("HERALD_HEARTBEAT", "2s"), ("HERALD_SHUTDOWN_GRACE", "6s")];
        let s = merged(&["--heartbeat", "1s"], &env, file).unwrap();
        let secs = |name| s.value::<std::time::Duration>(name).unwrap().as_secs();
        assert_eq!(secs("heartbeat"), 1, "flag over variable and file");
        assert_eq!(secs("shutdown_grace"), 6, "variable over file");
        assert_eq!(
            s.value::<usize>("max_selectors").unwrap(),
            9,
            "file over default"
        );
        assert_eq!(
            s.value::<usize>("max_connections").unwrap(),
            19_000,
            "default"
        );
        assert_eq!(s.get::<u64>("retry").unwrap(), None, "unset");
    }

    #[test]
    fn switches_lists_and_issuers_from_each_source() {
        let s = merged(
            &["--dev", "--cors-origins", "a,b", "--cors-origins", "c"],
            &[],
            "",
        )
        .unwrap();
        assert_eq!(s.get::<bool>("dev").unwrap(), Some(true));
        assert_eq!(s.list("cors_origins").unwrap(), ["a", "b", "c"]);
        let s = merged(
            &["--anonymous", "false"],
            &[("HERALD_ISSUERS", "i k;j k")],
            "",
        )
        .unwrap();
        assert!(!s.value::<bool>("anonymous").unwrap());
        assert_eq!(
            s.raw("issuers"),
            Some(&Raw::List(vec!["i k".into(), "j k".into()]))
        );
        let file = "publish_origins = ['x', '']\n[[issuers]]\nissuer = 'i'\nkey = 'secret:k'\n";
        let s = merged(&[], &[], file).unwrap();
        assert_eq!(s.list("publish_origins").unwrap(), ["x"]);
        assert!(matches!(s.raw("issuers"), Some(Raw::Issuers(i)) if i[0].issuer == "i"));
    }

    #[test]
    fn a_setting_of_another_engine_is_refused_from_every_source() {
        let e = merged(&["--history-size", "5"], &[], "")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "history_size (--history-size) is a setting of the memory engine; the engine is \
             local (default): remove it or choose --engine memory"
        );
        let e = merged(&["--engine", "memory"], &[("HERALD_DATA_DIR", "/d")], "")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("data_dir (HERALD_DATA_DIR) is a setting of the local engine; the engine is memory (--engine)"), "{e}");
        let e = merged(
            &[],
            &[("HERALD_ENGINE", "memory")],
            "retention_max_age = '7d'\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("retention_max_age (config file) is a setting of the local, redis, postgres or nats engines; the engine is memory (HERALD_ENGINE): remove it or choose an engine among local, redis, postgres, nats"), "{e}");
        let e = merged(&["--engine", "redis://h"], &[], "retention_max_bytes = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("retention_max_bytes (config file) is a setting of the local, postgres or nats engines; the engine is redis"), "{e}");
        let s = merged(
            &["--engine", "redis://h", "--namespace", "a"],
            &[],
            "retention_max_age = '1h'\n",
        )
        .unwrap();
        assert_eq!(s.value::<String>("namespace").unwrap(), "a");
        // Its own engine's settings are fine, from anywhere.
        let s = merged(&["--engine", "memory"], &[("HERALD_HISTORY_SIZE", "7")], "").unwrap();
        assert_eq!(s.value::<usize>("history_size").unwrap(), 7);
        let s = merged(
            &[],
            &[],
            "durability = 'async'\nretention_max_updates = 10\n",
        )
        .unwrap();
        assert_eq!(s.get::<u64>("retention_max_updates").unwrap(), Some(10));
    }

    #[test]
    fn a_nats_engine_takes_its_own_settings_only() {
        let s = merged(
            &[],
            &[],
            "engine = 'nats://localhost:4222'\nnats_timeout = '3s'\nretention_max_bytes = 5\n",
        )
        .unwrap();
        assert_eq!(s.value::<String>("nats_timeout").unwrap(), "3s");
        let e = merged(&["--engine", "nats://h"], &[], "redis_timeout = '1s'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "redis_timeout (config file) is a setting of the redis engine; the engine is nats"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let e = parse_file("publisher_jwt = 'x'\nbogus = 1\n").unwrap_err();
        assert!(e.contains("`bogus`"), "{e}");
        assert!(
            parse_file("config = 'x.toml'\n").is_err(),
            "config is a flag only"
        );
        assert!(parse_file("cors_origins = 'x'\n").is_err());
        assert!(parse_file("heartbeat = [1]\n").is_err());
        let e = parse_file("[[issuers]]\nissuer = 'i'\nkey = 'k'\nkeys = 'typo'\n").unwrap_err();
        assert!(e.contains("keys"), "{e}");
    }

    #[test]
    fn typed_errors_name_the_setting_and_its_source() {
        let e = merged(&[], &[("HERALD_HEARTBEAT", "5y")], "")
            .unwrap()
            .value::<std::time::Duration>("heartbeat");
        let e = e.unwrap_err().to_string();
        assert!(
            e.starts_with("heartbeat (HERALD_HEARTBEAT): invalid duration"),
            "{e}"
        );
    }
}
