//! `s2cs --config FILE`: a TOML file whose keys are the long options
//! (either spelling), read before the command line so that flags given
//! there win. `--print-config` shows the effective configuration (secrets
//! redacted); `--check-config` validates it.
//!
//! ```toml
//! listener-ip = "198.51.100.7"
//! port-range = "5100-5200"
//! server_crt = "/etc/scistream/gw.crt"
//! server_key = "/etc/scistream/gw.key"
//! peer-ca = "/etc/scistream/facilities-ca.pem"
//! client_id = "..."                       # the secret: client_secret-file or S2CS_CLIENT_SECRET
//! allow-targets = ["10.0.1.0/24:7000-7100"]
//! ```

use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;
use clap::parser::ValueSource;

use crate::config::Config;

/// Options that hold secrets: never printed.
const SECRET_KEYS: &[&str] = &["client_secret"];

/// Options that only make sense on the command line.
const CLI_ONLY: &[&str] = &["config", "print_config", "check_config", "help", "version"];

fn normalise(key: &str) -> String {
    key.replace('-', "_")
}

/// The long names (normalised) of every option, with the name to pass.
fn options() -> Vec<(String, String, bool)> {
    let cmd = Config::command();
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_owned();
            let takes_value = a.get_action().takes_values();
            Some((a.get_id().as_str().to_owned(), long, takes_value))
        })
        .collect()
}

fn find_option(key: &str) -> Option<(String, bool)> {
    let cmd = Config::command();
    let k = normalise(key);
    cmd.get_arguments().find_map(|a| {
        let long = a.get_long()?;
        let names = std::iter::once(long).chain(a.get_all_aliases().unwrap_or_default());
        names
            .map(normalise)
            .any(|n| n == k)
            .then(|| (long.to_owned(), a.get_action().takes_values()))
    })
}

/// The command-line arguments a config file stands for.
pub fn file_args(path: &Path) -> Result<Vec<OsString>, String> {
    let where_ = |what: String| format!("config file {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| where_(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| where_(e.to_string()))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let Some((long, takes_value)) = find_option(key) else {
            return Err(where_(format!(
                "unknown key '{key}' (keys are s2cs's long options, see s2cs --help)"
            )));
        };
        if CLI_ONLY.contains(&normalise(&long).as_str()) {
            return Err(where_(format!(
                "'{key}' belongs on the command line, not in the file"
            )));
        }
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(where_(format!(
                    "key '{key}': {other} is not a string or a number"
                ))),
            }
        };
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    args.push(OsString::from(format!("--{long}")));
                }
            }
            toml::Value::Boolean(_) => {
                return Err(where_(format!("key '{key}' takes a value, not true/false")));
            }
            _ if !takes_value => {
                return Err(where_(format!(
                    "key '{key}' is a switch: write {key} = true"
                )));
            }
            toml::Value::Array(items) => {
                for v in items {
                    args.push(OsString::from(format!("--{long}={}", scalar(v)?)));
                }
            }
            v => args.push(OsString::from(format!("--{long}={}", scalar(v)?))),
        }
    }
    // Each value on its own, so a bad one is reported as the file's.
    let mut probe = vec![OsString::from("s2cs")];
    probe.extend(args.iter().cloned());
    Config::try_parse_from_args(&probe).map_err(|e| where_(first_line(&e.to_string())))?;
    Ok(args)
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_owned()
}

/// The command line with the config file's arguments first (flags win).
pub fn merged_args(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut path = None;
    let mut iter = argv.iter().skip(1);
    while let Some(a) = iter.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = iter.next().cloned();
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(OsString::from(p));
        }
    }
    let Some(path) = path else { return Ok(argv) };
    let file = file_args(Path::new(&path))?;
    let mut out = Vec::with_capacity(argv.len() + file.len());
    out.extend(argv.first().cloned());
    out.extend(file);
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

/// The effective configuration as TOML, with where each value came from;
/// secrets redacted.
pub fn print(argv: &[OsString]) -> Result<String, String> {
    let matches = Config::command()
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    let mut out = String::from("# s2cs effective configuration (secrets redacted)\n");
    for (id, long, _) in options() {
        if CLI_ONLY.contains(&id.as_str()) {
            continue;
        }
        let Some(values) = matches.get_raw(&id) else {
            continue;
        };
        let values: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = match matches.value_source(&id) {
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "set",
        };
        let shown: Vec<String> = if SECRET_KEYS.contains(&id.as_str()) {
            values.iter().map(|_| "\"<redacted>\"".to_owned()).collect()
        } else {
            values.iter().map(|v| format!("{v:?}")).collect()
        };
        let value = match (
            shown.len(),
            matches!(
                Config::command()
                    .get_arguments()
                    .find(|a| a.get_id() == id.as_str())
                    .map(|a| a.get_action().takes_values()),
                Some(true)
            ),
        ) {
            (_, false) => "true".to_owned(),
            (1, true) if !is_list(&id) => shown[0].clone(),
            _ => format!("[{}]", shown.join(", ")),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    Ok(out)
}

fn is_list(id: &str) -> bool {
    matches!(id, "s2ds_args" | "admins" | "allow_targets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn parse(argv: &[&str]) -> Result<Config, String> {
        let merged = merged_args(argv.iter().map(OsString::from).collect())?;
        Config::try_parse_from(merged).map_err(|e| e.to_string())
    }

    #[test]
    fn the_file_sets_and_flags_win() {
        let f = write("port = 6000\nlisten_ip = 1\n");
        let e = parse(&["s2cs", "--config", f.path().to_str().unwrap()]).unwrap_err();
        assert!(e.contains("unknown key 'listen_ip'"), "{e}");
        let f = write(
            "port = 6000\nport_range = \"7000-7010\"\ninsecure = true\nadmins = [\"a\", \"b\"]\nhello-timeout = \"90s\"\n",
        );
        let p = f.path().to_str().unwrap();
        let c = parse(&["s2cs", "--config", p]).unwrap();
        assert_eq!(
            (c.port, c.port_range.clone(), c.insecure),
            (6000, 7000..=7010, true)
        );
        assert_eq!(c.admins, vec!["a", "b"]);
        assert_eq!(c.hello_timeout.as_secs(), 90);
        let c = parse(&["s2cs", &format!("--config={p}"), "--port", "6001"]).unwrap();
        assert_eq!(c.port, 6001, "the flag wins");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("port = \"many\"\n", "--port"),
            ("port-range = \"9-1\"\n", "empty"),
            ("insecure = \"yes\"\n", "switch"),
            ("port = true\n", "takes a value"),
            ("config = \"x\"\n", "command line"),
            ("port = [\n", "config file"),
        ] {
            let f = write(text);
            let e = parse(&["s2cs", "--config", f.path().to_str().unwrap()]).unwrap_err();
            assert!(
                e.contains(needle) && e.contains("config file"),
                "{text}: {e}"
            );
        }
        let e = parse(&["s2cs", "--config", "/nonexistent.toml"]).unwrap_err();
        assert!(e.contains("/nonexistent.toml"), "{e}");
    }

    #[test]
    fn print_redacts_secrets_and_says_where_values_come_from() {
        let argv: Vec<OsString> = ["s2cs", "--client_secret", "hunter2", "--port", "6000"]
            .iter()
            .map(OsString::from)
            .collect();
        let text = print(&argv).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("client_secret = \"<redacted>\"  # set"),
            "{text}"
        );
        assert!(text.contains("port = \"6000\"  # set"), "{text}");
        assert!(
            text.contains("hello-timeout = \"180s\"  # default"),
            "{text}"
        );
        // What it prints reads back as a config file.
        let body: String = text
            .lines()
            .filter(|l| !l.contains("<redacted>"))
            .map(|l| format!("{l}\n"))
            .collect();
        let f = write(&body);
        let c = parse(&["s2cs", "--config", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.port, 6000);
    }
}
