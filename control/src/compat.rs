//! SciStream 1.2's `s2cs` command line, as its users and tools type it.
//!
//! SciStream's `s2cs` takes its options through Python Fire: booleans as
//! `--verbose`, `--verbose=True`, `--v`, `--ssl=False`; first-letter short
//! flags (`-l IP`, `-t TYPE`); and `--type` to choose the proxy it runs as
//! its data server. [`translate`] turns such a command line into this
//! `s2cs`'s options before they are parsed, and says what each foreign flag
//! meant here, so that a gateway started from an old unit file or script
//! behaves as its admin expects (docs/COMPAT.md lists every difference).

use std::ffi::OsString;

/// SciStream's names for its data servers (`--type`), any case.
pub const DATA_SERVER_TYPES: [&str; 6] = [
    "S2DS",
    "Haproxy",
    "HaproxySubprocess",
    "Nginx",
    "StunnelSubprocess",
    "Docker",
];

/// A command line in this `s2cs`'s terms, and what was translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The arguments to parse.
    pub argv: Vec<OsString>,
    /// One line per translated flag, to log at start.
    pub notes: Vec<String>,
}

fn truth(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Translates SciStream's flags; everything else passes unchanged.
pub fn translate(argv: Vec<OsString>) -> Result<Translated, String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut notes = Vec::new();
    let mut it = argv.into_iter().peekable();
    if let Some(program) = it.next() {
        out.push(program);
    }
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str().map(str::to_owned) else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(it);
            break;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f.to_owned(), Some(v.to_owned())),
            _ => (text.clone(), None),
        };
        // A boolean Fire flag: `--x`, `--x=True`, `--x False`.
        let boolean =
            |it: &mut std::iter::Peekable<std::vec::IntoIter<OsString>>| -> Result<bool, String> {
                if let Some(v) = &inline {
                    return truth(v).ok_or_else(|| format!("{flag}={v}: expected True or False"));
                }
                if let Some(v) = it.peek().and_then(|n| n.to_str()).and_then(truth) {
                    it.next();
                    return Ok(v);
                }
                Ok(true)
            };
        match flag.as_str() {
            "--verbose" | "--v" => {
                if boolean(&mut it)? {
                    out.push("--verbose".into());
                }
                if flag == "--v" || inline.is_some() {
                    notes.push(format!("{text}: SciStream's spelling of --verbose"));
                }
            }
            "--ssl" => {
                if !boolean(&mut it)? {
                    out.push("--insecure".into());
                    notes.push(format!(
                        "{text}: SciStream's spelling of --insecure (the control service runs without TLS)"
                    ));
                }
            }
            "--type" | "-t" => {
                let value = value_of(inline, &mut it).ok_or_else(|| {
                    format!(
                        "{flag} needs a value: one of {}",
                        DATA_SERVER_TYPES.join(", ")
                    )
                })?;
                notes.push(data_server_note(&value)?);
            }
            "-l" => {
                let value = value_of(inline, &mut it)
                    .ok_or("-l needs an address (SciStream's --listener_ip)")?;
                out.push("--listener-ip".into());
                out.push(value.into());
            }
            _ => out.push(arg),
        }
    }
    Ok(Translated { argv: out, notes })
}

/// A flag's value: given inline (`--flag=value`) or as the next argument.
fn value_of(
    inline: Option<String>,
    it: &mut std::iter::Peekable<std::vec::IntoIter<OsString>>,
) -> Option<String> {
    inline.or_else(|| it.next().and_then(|v| v.into_string().ok()))
}

/// SciStream's `--type` (its choice of data server): a known one is noted
/// as not needed here, an unknown one refused.
fn data_server_note(value: &str) -> Result<String, String> {
    let Some(known) = DATA_SERVER_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(value))
    else {
        return Err(format!(
            "--type {value}: not one of SciStream's data servers ({})",
            DATA_SERVER_TYPES.join(", ")
        ));
    };
    Ok(format!(
        "--type {known} (SciStream's choice of data server): here the data server is always s2ds, \
         which forwards the streams itself (TLS 1.3 between the gateways unless --data-tls off); \
         no {known} process is started"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Translated, String> {
        translate(args.iter().map(OsString::from).collect())
    }

    fn argv(r: &Translated) -> Vec<String> {
        r.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn scistream_command_lines_translate() {
        let r = t(&[
            "s2cs",
            "--server_crt=gw.crt",
            "--server_key=gw.key",
            "--verbose",
            "--listener_ip=10.0.0.1",
            "--type=StunnelSubprocess",
        ])
        .unwrap();
        assert_eq!(
            argv(&r),
            [
                "s2cs",
                "--server_crt=gw.crt",
                "--server_key=gw.key",
                "--verbose",
                "--listener_ip=10.0.0.1"
            ]
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("StunnelSubprocess") && n.contains("s2ds"))
        );
        let r = t(&[
            "s2cs",
            "--verbose=True",
            "--ssl=False",
            "-l",
            "127.0.0.1",
            "-t",
            "haproxy",
        ])
        .unwrap();
        assert_eq!(
            argv(&r),
            [
                "s2cs",
                "--verbose",
                "--insecure",
                "--listener-ip",
                "127.0.0.1"
            ]
        );
        let r = t(&[
            "s2cs",
            "--v",
            "--verbose=False",
            "--ssl",
            "True",
            "--port",
            "5000",
        ])
        .unwrap();
        assert_eq!(argv(&r), ["s2cs", "--verbose", "--port", "5000"]);
        let r = t(&["s2cs", "--v=True", "--ssl", "False"]).unwrap();
        assert_eq!(argv(&r), ["s2cs", "--verbose", "--insecure"]);
    }

    #[test]
    fn bad_values_are_named() {
        let e = t(&["s2cs", "--type", "Squid"]).unwrap_err();
        assert!(
            e.contains("Squid") && e.contains("StunnelSubprocess"),
            "{e}"
        );
        assert!(
            t(&["s2cs", "--verbose=maybe"])
                .unwrap_err()
                .contains("True or False")
        );
        assert!(t(&["s2cs", "-t"]).is_err());
    }

    #[test]
    fn other_arguments_pass_unchanged() {
        let r = t(&["s2cs", "--port-range", "5100-5200", "-v", "--", "--type"]).unwrap();
        assert_eq!(
            argv(&r),
            ["s2cs", "--port-range", "5100-5200", "-v", "--", "--type"]
        );
        assert!(r.notes.is_empty());
    }
}
