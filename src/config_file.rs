//! `ferry serve --config FILE`: the node's settings as lines of `name
//! value`, as Redis's configuration file has them. A name is a flag of
//! `ferry serve` without its `--` (`fsync always`, `maxclients 5000`);
//! Redis's `appendfsync` stands for `fsync`, and Redis's older names for
//! its own ([`RENAMED`]: `min-slaves-to-write`) for theirs. Blank lines and lines that
//! begin with `#` are skipped; a value in double quotes may hold spaces and
//! `\"`, `\\`, `\n` escapes. The command line, then the environment
//! (`FERRY_*`), come before the file. CONFIG REWRITE writes what CONFIG SET
//! changed back into the file ([`rewrite`]).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The flag that names the file.
pub const CONFIG_FLAG: &str = "config";
/// The environment variable that names the file when the flag does not.
pub const CONFIG_ENV: &str = "FERRY_CONFIG";

/// Names a Redis user may write for a flag whose name differs.
const ALIASES: &[(&str, &str)] = &[("appendfsync", "fsync")];

/// Redis's older names of parameters (before 5.0's "replica"), which it
/// still takes and shows (CONFIG GET, CONFIG SET, its file), with their
/// names now.
pub const RENAMED: &[(&str, &str)] = &[
    ("min-slaves-max-lag", "min-replicas-max-lag"),
    ("min-slaves-to-write", "min-replicas-to-write"),
    ("slave-read-only", "replica-read-only"),
    ("slave-serve-stale-data", "replica-serve-stale-data"),
];

/// A parameter's name now, for an older name of it ([`RENAMED`]).
pub fn current_name(param: &str) -> &str {
    RENAMED
        .iter()
        .find(|(old, _)| *old == param)
        .map_or(param, |(_, now)| now)
}

/// The flag a configuration parameter (CONFIG GET's name) is set by.
pub fn flag_name(param: &str) -> &str {
    let param = current_name(param);
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == param)
        .map_or(param, |(_, flag)| flag)
}

/// The file a node runs with, for CONFIG REWRITE: where it is, and the
/// defaults of the flags (a setting at its default is not added).
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    defaults: Vec<(String, String)>,
    /// Flags the command line or the environment gave at start: they come
    /// before the file at the next start too.
    given_elsewhere: Vec<String>,
}

impl ConfigFile {
    /// The file at `path` (made absolute) of `serve`, the clap command of
    /// `ferry serve`.
    pub fn new(path: &Path, serve: &clap::Command) -> std::io::Result<ConfigFile> {
        let defaults = serve
            .get_arguments()
            .filter_map(|a| {
                let default = a.get_default_values().first()?;
                Some((
                    a.get_long()?.to_string(),
                    default.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        let args: Vec<OsString> = std::env::args_os().collect();
        let after_serve = args
            .iter()
            .position(|a| a == "serve")
            .map_or(0, |at| at + 1);
        let given_elsewhere = serve
            .get_arguments()
            .filter(|a| given_elsewhere(&args[after_serve..], a))
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        Ok(ConfigFile {
            path: std::path::absolute(path)?,
            defaults,
            given_elsewhere,
        })
    }

    /// Whether the command line or the environment gave the flag `name` at
    /// start (a value CONFIG REWRITE writes for it will not count then).
    pub fn given_elsewhere(&self, name: &str) -> bool {
        self.given_elsewhere.iter().any(|n| n == name)
    }

    /// The default of the flag `name`, if it has one.
    pub fn default_of(&self, name: &str) -> Option<&str> {
        self.defaults
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_str())
    }
}

/// One setting of the file: its line (from 1), name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub line: usize,
    pub name: String,
    pub value: String,
}

/// The settings of `text`, names as flags ([`flag_name`]), in order.
///
/// # Errors
///
/// A line with a name and no value, or an unbalanced quote, with its
/// number.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let mut settings = Vec::new();
    for (at, line) in text.lines().enumerate() {
        let Some((name, value)) = split(line).map_err(|why| format!("line {}: {why}", at + 1))?
        else {
            continue;
        };
        settings.push(Setting {
            line: at + 1,
            name: flag_name(name.trim_start_matches("--")).to_string(),
            value,
        });
    }
    Ok(settings)
}

/// The name and value of one line (`None`: blank or a comment).
fn split(line: &str) -> Result<Option<(&str, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((name, rest)) = line.split_once(char::is_whitespace) else {
        return Err(format!("'{line}' has no value"));
    };
    let rest = rest.trim();
    let Some(quoted) = rest.strip_prefix('"') else {
        return Ok(Some((name, rest.to_string())));
    };
    let mut value = String::new();
    let mut chars = quoted.chars();
    loop {
        match chars.next() {
            None => return Err(format!("unbalanced quotes in the value of '{name}'")),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some('n') => value.push('\n'),
                Some(c @ ('"' | '\\')) => value.push(c),
                Some(c) => {
                    value.push('\\');
                    value.push(c);
                }
                None => return Err(format!("unbalanced quotes in the value of '{name}'")),
            },
            Some(c) => value.push(c),
        }
    }
    if !chars.as_str().trim().is_empty() {
        return Err(format!("text after the closing quote of '{name}'"));
    }
    Ok(Some((name, value)))
}

/// `value` as the file writes it: bare if it reads back the same, else
/// in double quotes.
pub fn quote(value: &str) -> String {
    let bare = !value.is_empty()
        && !value.starts_with(['"', '#'])
        && !value.chars().any(|c| c.is_whitespace() || c == '\\');
    if bare {
        return value.to_string();
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where the file is, from `args` (the command line, program first) or
/// the environment, if `ferry serve` runs with one.
fn file_of(args: &[OsString]) -> Option<PathBuf> {
    let serve = args.iter().position(|a| a == "serve")?;
    let flag = format!("--{CONFIG_FLAG}");
    let mut rest = args[serve + 1..].iter();
    while let Some(arg) = rest.next() {
        let arg = arg.to_string_lossy();
        if arg == flag {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

/// `args` with the settings of the configuration file of `ferry serve`
/// (if it runs with one) that neither the command line nor the environment
/// gives, as `--name=value` right after `serve`; `serve` is the clap
/// command of `ferry serve`, which knows the flags and their variables.
///
/// # Errors
///
/// The file cannot be read, or names a setting `ferry serve` lacks, with
/// the file and line.
pub fn expand_args(args: Vec<OsString>, serve: &clap::Command) -> Result<Vec<OsString>, String> {
    let Some(path) = file_of(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("reading the config file {}: {e}", path.display()))?;
    let settings = parse(&text).map_err(|why| format!("{}: {why}", path.display()))?;
    let at = args
        .iter()
        .position(|a| a == "serve")
        .expect("file_of found it")
        + 1;
    let mut inserted: Vec<(String, OsString)> = Vec::new();
    for s in settings {
        let known = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(s.name.as_str()) && s.name != CONFIG_FLAG);
        let Some(arg) = known else {
            return Err(format!(
                "{}: line {}: unknown setting '{}' (the settings are the flags of ferry serve, without their --)",
                path.display(),
                s.line,
                s.name
            ));
        };
        if given_elsewhere(&args[at..], arg) {
            continue;
        }
        // A later line sets it again: the last one counts, as in Redis
        // (one that adds to the earlier ones, as a line per class of
        // client-output-buffer-limit, keeps them).
        if !matches!(arg.get_action(), clap::ArgAction::Append) {
            inserted.retain(|(name, _)| *name != s.name);
        }
        inserted.push((s.name.clone(), format!("--{}={}", s.name, s.value).into()));
    }
    let mut out = args;
    out.splice(at..at, inserted.into_iter().map(|(_, arg)| arg));
    Ok(out)
}

/// Whether `arg` is given on the command line (`args`, after `serve`) or
/// in the environment: either comes before the file.
fn given_elsewhere(args: &[OsString], arg: &clap::Arg) -> bool {
    let Some(name) = arg.get_long() else {
        return false;
    };
    let flag = format!("--{name}");
    let on_line = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    on_line || arg.get_env().is_some_and(|v| std::env::var_os(v).is_some())
}

/// `text` (a configuration file) with each of `settings` (flag name, and
/// value or `None` for none) set: its first line rewritten in place (later
/// ones dropped, a `None` drops them all), or, if it has none and `append`
/// says so, a line added at the end. Comments and other lines stay.
pub fn rewrite(text: &str, settings: &[(&str, Option<String>, bool)]) -> String {
    let mut out = String::new();
    let mut written = vec![false; settings.len()];
    for line in text.lines() {
        let named = split(line)
            .ok()
            .flatten()
            .map(|(name, _)| flag_name(name.trim_start_matches("--")).to_string());
        let found = named.and_then(|n| settings.iter().position(|(name, ..)| *name == n));
        match found {
            Some(i) => {
                if let (false, (name, Some(value), _)) = (written[i], &settings[i]) {
                    out.push_str(&format!("{name} {}\n", quote(value)));
                }
                written[i] = true;
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (name, value, append)) in settings.iter().enumerate() {
        if let (false, true, Some(value)) = (written[i], append, value) {
            out.push_str(&format!("{name} {}\n", quote(value)));
        }
    }
    out
}

/// Replaces the file at `path` with `text` whole or not at all (a new file
/// beside it, synced, renamed over it, the directory synced), keeping the
/// permissions of the file there before, if any: it may hold a password.
///
/// # Errors
///
/// Any step's.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.new.{}", std::process::id()));
    let permissions = match std::fs::metadata(path) {
        Ok(meta) => Some(meta.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_redis_s_do() {
        let text = "# a comment\n\n  fsync always\nappendfsync no\n--maxclients 7\nrequirepass \"a \\\"b\\\" \\\\ c\"\nmin-slaves-to-write 1\n";
        let got = parse(text).unwrap();
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("fsync", "always"),
                ("fsync", "no"),
                ("maxclients", "7"),
                ("requirepass", "a \"b\" \\ c"),
                ("min-replicas-to-write", "1")
            ]
        );
        assert_eq!(got[1].line, 4);
        assert_eq!(
            parse("timeout\n").unwrap_err(),
            "line 1: 'timeout' has no value"
        );
        assert!(
            parse("requirepass \"open\n")
                .unwrap_err()
                .contains("unbalanced")
        );
        assert!(
            parse("requirepass \"a\" b\n")
                .unwrap_err()
                .contains("after")
        );
    }

    #[test]
    fn quoted_values_read_back_the_same() {
        for value in [
            "plain",
            "",
            "two words",
            "#hash",
            "\"q\"",
            "back\\slash",
            "new\nline",
        ] {
            let text = format!("requirepass {}\n", quote(value));
            assert_eq!(parse(&text).unwrap()[0].value, value, "{text:?}");
        }
        assert_eq!(quote("plain"), "plain");
    }

    #[test]
    fn a_rewrite_changes_only_the_settings_it_is_given() {
        let text =
            "# keep me\nfsync everysec\nmaxclients 10\ntimeout 1\nmaxclients 11\nrequirepass old\n";
        let out = rewrite(
            text,
            &[
                ("fsync", Some("always".into()), false),
                ("maxclients", Some("99".into()), false),
                ("requirepass", None, false),
                ("slowlog-max-len", Some("5".into()), true),
                ("tcp-keepalive", Some("300".into()), false),
            ],
        );
        assert_eq!(
            out,
            "# keep me\nfsync always\nmaxclients 99\ntimeout 1\nslowlog-max-len 5\n"
        );
        // Redis's name for a flag is rewritten under the flag's.
        assert_eq!(
            rewrite(
                "appendfsync no\n",
                &[("fsync", Some("always".into()), true)]
            ),
            "fsync always\n"
        );
    }
}

#[cfg(test)]
mod flags {
    /// Every parameter CONFIG REWRITE writes is a flag of `ferry serve`
    /// (else a restart on the file would refuse it).
    #[test]
    fn every_rewritten_parameter_is_a_flag_of_serve() {
        use clap::CommandFactory;
        let command = crate::Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        for param in crate::commands::rewritable_params() {
            let flag = super::flag_name(param);
            assert!(
                serve.get_arguments().any(|a| a.get_long() == Some(flag)),
                "{param} ({flag}) is not a flag of ferry serve"
            );
        }
    }
}
