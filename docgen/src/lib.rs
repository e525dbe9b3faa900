//! Man pages and shell completions of each scistream-rs binary, made from
//! the binary's own clap definition so that `--help`, the man page and the
//! completions never disagree.
//!
//! Every binary calls [`from_env`] first thing in `main`. With
//! `SCISTREAM_GENERATE=man:DIR` it writes its man pages (one per command
//! and subcommand, `NAME.1`, `NAME-SUB.1`) into `DIR`; with
//! `SCISTREAM_GENERATE=completions:DIR` its bash, zsh and fish completions
//! (`DIR/bash/NAME`, `DIR/zsh/_NAME`, `DIR/fish/NAME.fish`); then it exits.
//! `tools/dist.sh` uses this to build the Debian package.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

/// The environment variable that asks a binary for its documentation.
pub const ENV: &str = "SCISTREAM_GENERATE";

/// What went wrong writing documentation.
#[derive(Debug)]
pub struct GenerateError(String);

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GenerateError {}

/// When [`ENV`] is set, writes what it asks for and returns the exit code
/// the binary should exit with; `None` (run normally) when it is not set.
pub fn from_env(command: impl FnOnce() -> Command) -> Option<ExitCode> {
    let request = std::env::var_os(ENV)?;
    let request = request.to_string_lossy().into_owned();
    let result = match request.split_once(':') {
        Some(("man", dir)) => man_pages(command(), Path::new(dir)),
        Some(("completions", dir)) => completions(command(), Path::new(dir)),
        _ => Err(GenerateError(format!(
            "{ENV}={request}: expected man:DIR or completions:DIR"
        ))),
    };
    Some(match result {
        Ok(written) => {
            for p in written {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    })
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, GenerateError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| GenerateError(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&path, bytes)
        .map_err(|e| GenerateError(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// One man page (section 1) per command and subcommand; the paths written.
pub fn man_pages(command: Command, dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    let name = command.get_name().to_owned();
    page(&command, name.clone(), name, dir, &mut written)?;
    Ok(written)
}

/// `name` is the page's (`s2uc-check-auth`), `usage` what a user types
/// (`s2uc check-auth`).
fn page(
    command: &Command,
    name: String,
    usage: String,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), GenerateError> {
    let named = command.clone().name(name.clone()).bin_name(usage.clone());
    let mut text = Vec::new();
    clap_mangen::Man::new(named)
        .render(&mut text)
        .map_err(|e| GenerateError(format!("cannot render the man page of {name}: {e}")))?;
    written.push(write(dir.join(format!("{name}.1")), &text)?);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = sub.get_name();
        page(
            sub,
            format!("{name}-{sub_name}"),
            format!("{usage} {sub_name}"),
            dir,
            written,
        )?;
    }
    Ok(())
}

/// bash, zsh and fish completions; the paths written.
pub fn completions(command: Command, dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let mut command = command;
    let name = command.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command, name.clone(), &mut text);
        written.push(write(dir.join(file), &text)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        Command::new("s2x")
            .about("a sample")
            .arg(clap::Arg::new("rate").long("rate").help("the rate"))
            .subcommand(Command::new("inbound_request").about("use case 1"))
            .subcommand(Command::new("hidden").hide(true))
    }

    #[test]
    fn a_page_per_visible_command_with_its_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = man_pages(sample(), dir.path()).expect("man pages");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["s2x.1", "s2x-inbound_request.1"]);
        let top = std::fs::read_to_string(&written[0]).expect("read");
        assert!(
            top.contains("\\-\\-rate") && top.contains("the rate"),
            "{top}"
        );
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = completions(sample(), dir.path()).expect("completions");
        assert_eq!(written.len(), 3);
        let bash = std::fs::read_to_string(dir.path().join("bash/s2x")).expect("bash");
        assert!(
            bash.contains("inbound_request") && bash.contains("--rate"),
            "{bash}"
        );
        assert!(dir.path().join("zsh/_s2x").is_file());
        assert!(dir.path().join("fish/s2x.fish").is_file());
    }
}
