//! `serve --config-file FILE`: serve's settings from a YAML file whose keys are serve's flag
//! names (as etcd's own `--config-file`), e.g. `endpoints: [http://10.0.0.1:2379]`,
//! `listen-addr: 0.0.0.0:23790`, `no-console: true`. A flag on the command line wins over its
//! environment variable, which wins over the file, which wins over the default.
//!
//! The file is read before the command line is parsed: each of its settings that the command
//! line and the environment leave unset becomes a flag appended to the command line, so that
//! clap checks every value as it checks the flag's own (and `--endpoints` may come from the
//! file alone).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{ArgAction, Command};
use yaml_rust2::{Yaml, YamlLoader};

/// The flag that names the file.
pub const FLAG: &str = "config-file";
/// The environment variable that names the file.
pub const ENV: &str = "ETCDGATE_CONFIG_FILE";

/// The command line with the file's settings appended as flags, and the file, if `serve` was
/// given one; `args` unchanged otherwise (and for `serve --help`).
pub fn with_settings_from_file(cli: &Command, args: Vec<OsString>) -> anyhow::Result<(Vec<OsString>, Option<PathBuf>)> {
    let serving = args.get(1).is_some_and(|command| command == "serve");
    let helping = args.iter().skip(2).any(|arg| arg == "--help" || arg == "-h");
    if !serving || helping {
        return Ok((args, None));
    }
    let Some(file) = file_named(&args[2..]) else { return Ok((args, None)) };
    let serve = cli.find_subcommand("serve").context("etcdgate has no serve command")?;
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading --{FLAG} {}", file.display()))?;
    let flags = flags_from(serve, &args[2..], &text).with_context(|| format!("--{FLAG} {}", file.display()))?;
    let mut args = args;
    args.extend(flags);
    Ok((args, Some(file)))
}

/// The file named by `--config-file` among serve's arguments, else by the environment.
fn file_named(serve_args: &[OsString]) -> Option<PathBuf> {
    let mut args = serve_args.iter();
    while let Some(arg) = args.next() {
        match flag_given(&arg.to_string_lossy(), FLAG) {
            Some(Some(value)) => return Some(PathBuf::from(value)),
            Some(None) => return args.next().map(PathBuf::from),
            None => {}
        }
    }
    std::env::var_os(ENV).filter(|value| !value.is_empty()).map(PathBuf::from)
}

/// Whether `arg` is the flag `--name`: `Some(Some(value))` for `--name=value`, `Some(None)` for
/// `--name` (its value, if it takes one, is the next argument).
fn flag_given<'a>(arg: &'a str, name: &str) -> Option<Option<&'a str>> {
    let rest = arg.strip_prefix("--")?.strip_prefix(name)?;
    if rest.is_empty() {
        Some(None)
    } else {
        rest.strip_prefix('=').map(Some)
    }
}

/// The flags for the file's settings that neither `given` (serve's command-line arguments) nor
/// the environment set.
fn flags_from(serve: &Command, given: &[OsString], text: &str) -> anyhow::Result<Vec<OsString>> {
    let documents = YamlLoader::load_from_str(text).map_err(|error| anyhow::anyhow!("not YAML: {error}"))?;
    let settings = match documents.as_slice() {
        [] => return Ok(Vec::new()),
        [Yaml::Hash(settings)] => settings,
        [Yaml::Null] => return Ok(Vec::new()),
        [_] => bail!("the file must be a mapping of serve's flag names to values (`listen-addr: 127.0.0.1:23790`)"),
        _ => bail!("the file holds more than one YAML document"),
    };
    let mut flags = Vec::new();
    for (key, value) in settings {
        let Yaml::String(name) = key else { bail!("setting names are serve's flag names, not {key:?}") };
        let Some(arg) = serve.get_arguments().find(|arg| arg.get_long() == Some(name.as_str()) && name != FLAG) else {
            bail!("unknown setting `{name}`: the settings are serve's flags without the leading -- (see `etcdgate serve --help`)");
        };
        let on_command_line = given.iter().any(|given| flag_given(&given.to_string_lossy(), name).is_some());
        let in_environment = arg.get_env().and_then(std::env::var_os).is_some_and(|value| !value.is_empty());
        if on_command_line || in_environment {
            continue;
        }
        let values = match value {
            Yaml::Array(values) => values.iter().collect(),
            value => vec![value],
        };
        for value in values {
            let value = scalar(name, value)?;
            match arg.get_action() {
                ArgAction::SetTrue => match value.as_str() {
                    "true" => flags.push(OsString::from(format!("--{name}"))),
                    "false" => {}
                    other => bail!("`{name}` is a switch: true or false, not `{other}`"),
                },
                _ => flags.push(OsString::from(format!("--{name}={value}"))),
            }
        }
    }
    Ok(flags)
}

/// A setting's value as it would be written on the command line.
fn scalar(name: &str, value: &Yaml) -> anyhow::Result<String> {
    Ok(match value {
        Yaml::String(text) | Yaml::Real(text) => text.clone(),
        Yaml::Integer(number) => number.to_string(),
        Yaml::Boolean(switch) => switch.to_string(),
        Yaml::Null => bail!("`{name}` has no value"),
        _ => bail!("`{name}` takes a value or a list of values, not a mapping"),
    })
}

