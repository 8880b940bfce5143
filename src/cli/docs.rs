//! The files the package installs that are made from the code: `relay(1)`
//! from the command line's definition, `relay.conf(5)` from the key table
//! (`config::KEYS`), the bash, zsh and fish completions, and the Debian
//! copyright file from `LICENSE`.
//!
//! They are written into `packaging/` by the hidden `relay generate-docs
//! packaging` and kept in the repository, so that `cargo deb` packs them as
//! plain files on any machine. A build script could not make them: the key
//! table lives in the library it would have to build first, and cargo-deb
//! runs nothing between the build and packing. A unit test fails as soon as
//! a kept file differs from what this module makes now, so they cannot drift
//! from the code unnoticed.

use std::path::Path;

use anyhow::Context as _;
use clap_complete::Shell;
use roff::{bold, italic, roman, Inline, Roff};

use crate::config::{Applies, Fallback, Secrecy, KEYS};

/// What the manual pages say they belong to.
const SOURCE: &str = concat!("relay ", env!("CARGO_PKG_VERSION"));

/// Every generated file: its path under `packaging/` and its contents.
pub fn files() -> Vec<(&'static str, String)> {
    vec![
        ("man/relay.1", man_page()),
        ("man/relay.conf.5", conf_page()),
        ("completions/relay.bash", completion(Shell::Bash)),
        ("completions/_relay", completion(Shell::Zsh)),
        ("completions/relay.fish", completion(Shell::Fish)),
        ("copyright", copyright()),
    ]
}

/// Writes every generated file under `dir`.
pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    for (path, text) in files() {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The date of the newest entry in the package's changelog, as in
/// "24 Nov 2026": the pages change with each release, not each build.
fn release_date() -> String {
    let changelog = include_str!("../../packaging/changelog");
    let trailer = changelog
        .lines()
        .find(|l| l.starts_with(" -- "))
        .expect("the changelog has an entry");
    // " -- NAME <MAIL>  Tue, 24 Nov 2026 00:00:00 +0000"
    let date = trailer.rsplit_once(">  ").map_or("", |(_, d)| d);
    date.split_whitespace()
        .skip(1)
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line as users see it: without hidden commands (clap's
/// completions would offer them) and with its commands named as users
/// type them (`relay run`), which clap only fills in once built.
fn built_command() -> clap::Command {
    let full = super::command();
    let mut cmd = clap::Command::new("relay")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .subcommand_required(true)
        .disable_help_subcommand(true)
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    cmd.build();
    cmd
}

/// `relay(1)`: the synopsis and description clap_mangen makes from the
/// command line, each command with its options, then what the command line
/// cannot say (exit status, environment, files).
pub fn man_page() -> String {
    let cmd = built_command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .date(release_date())
        .source(SOURCE)
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out).expect("write to memory");
    man.render_name_section(&mut out).expect("write to memory");
    man.render_synopsis_section(&mut out)
        .expect("write to memory");
    man.render_description_section(&mut out)
        .expect("write to memory");
    let mut page = String::from_utf8(out).expect("roff is UTF-8");

    let mut commands = Roff::new();
    commands.control("SH", ["COMMANDS"]);
    page.push_str(&commands.to_roff());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_owned();
        let mut heading = Roff::new();
        heading.control("SS", [name.as_str()]);
        page.push_str(&heading.to_roff());
        let man = clap_mangen::Man::new(sub.clone());
        let mut synopsis = Vec::new();
        man.render_synopsis_section(&mut synopsis)
            .expect("write to memory");
        page.push_str(&without_heading(&synopsis));
        let mut about = Roff::new();
        if let Some(text) = sub.get_long_about().or(sub.get_about()) {
            about.control("PP", []);
            about.text([roman(text.to_string())]);
        }
        page.push_str(&about.to_roff());
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let mut options = Vec::new();
            man.render_options_section(&mut options)
                .expect("write to memory");
            page.push_str(&without_heading(&options));
        }
    }

    let mut rest = Roff::new();
    section(
        &mut rest,
        "EXIT STATUS",
        &[
            (
                None,
                "0: success; for relay run, a clean stop (SIGTERM or Ctrl+C).",
            ),
            (
                None,
                "3: relay status NAME or relay switch: the instance is not running.",
            ),
            (
                None,
                "78: a configuration error, named in one line on stderr; \
                 relay@NAME.service is not restarted.",
            ),
            (None, "2: a usage error."),
            (None, "1: any other failure; the log says why."),
        ],
    );
    section(
        &mut rest,
        "ENVIRONMENT",
        &[
            (
                Some("RELAY_CONFIG_DIR"),
                "Where the instances' configuration files are, instead of /etc/relay.",
            ),
            (
                Some("RELAY_RUNTIME_DIR"),
                "Where the control sockets are, instead of /run/relay (under systemd, RUNTIME_DIRECTORY wins).",
            ),
            (
                Some("KICK_URL, OUT_RES, ..."),
                "A variable named exactly like a configuration key overrides the files; see relay.conf(5).",
            ),
        ],
    );
    section(
        &mut rest,
        "FILES",
        &[
            (
                Some("/etc/relay/NAME.env, /etc/relay/NAME.toml"),
                "The configuration of instance NAME; see relay.conf(5).",
            ),
            (
                Some("/run/relay/NAME.sock"),
                "The control socket of a running instance, for relay status and relay switch.",
            ),
            (
                Some("/lib/systemd/system/relay@.service"),
                "The unit that runs relay run NAME: systemctl start relay@NAME.",
            ),
            (
                Some("/etc/nginx/relay-rtmp.conf"),
                "The nginx-rtmp that receives the live feed (relay-rtmp.service).",
            ),
        ],
    );
    rest.control("SH", ["SEE ALSO"]);
    rest.text([
        bold("relay.conf"),
        roman("(5), "),
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("ffmpeg"),
        roman("(1), /usr/share/doc/relay/README.md"),
    ]);
    page.push_str(&rest.to_roff());
    page
}

/// `relay.conf(5)`: every key of the table with its default, whether a
/// reload applies it at once, and whether it is secret.
pub fn conf_page() -> String {
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "RELAY.CONF",
            "5",
            &release_date(),
            SOURCE,
            "File Formats Manual",
        ],
    );
    page.control("SH", ["NAME"]);
    page.text([roman("relay.conf - the configuration of a relay instance")]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([
        roman("/etc/relay/"),
        italic("NAME"),
        roman(".env, /etc/relay/"),
        italic("NAME"),
        roman(".toml"),
    ]);
    page.control("SH", ["DESCRIPTION"]);
    for paragraph in [
        "relay run NAME (what relay@NAME.service runs) reads NAME.toml and/or NAME.env \
         in /etc/relay, or in $RELAY_CONFIG_DIR; relay run --config FILE reads one file.",
        ".env files hold KEY=VALUE lines. An export in front, # comment lines and a pair \
         of quotes around the value are allowed; there are no escapes and no comments \
         after a value. TOML files use the same names in lower case (kick_url = \"rtmps://...\").",
        "When both files exist, NAME.env overrides NAME.toml, and an environment variable \
         with a key's exact (upper-case) name overrides both. An empty value counts as not set.",
        "An unknown key, a missing required key or a bad value stops relay with exit status \
         78 and one line naming the key and the file. A file that holds a secret must not be \
         readable by every user: root:relay 0640 is the convention.",
        "systemctl reload relay@NAME re-reads the configuration in the same process. What a \
         changed key does is given with each key below.",
    ] {
        page.control("PP", []);
        page.text([roman(paragraph)]);
    }
    page.control("SH", ["KEYS"]);
    for key in &KEYS {
        page.control("TP", []);
        page.text([
            bold(key.name),
            roman(" ("),
            bold(key.toml_name()),
            roman(" in TOML)"),
        ]);
        page.text([roman(key.doc)]);
        page.control("br", []);
        let mut facts: Vec<Inline> = vec![roman("Default: ")];
        facts.push(match key.default {
            Fallback::Required => italic("required"),
            Fallback::Text("") => italic("empty"),
            Fallback::Text(text) => bold(text),
            Fallback::Off => italic("off"),
            Fallback::Derived(text) => bold(text),
        });
        facts.push(roman(format!(". Reload: {}.", reload_text(key.applies))));
        if let Some(secret) = secrecy_text(key.secrecy) {
            facts.push(roman(format!(" {secret}")));
        }
        page.text(facts);
    }
    page.control("SH", ["FILES"]);
    page.text([roman(
        "/etc/relay/example.env: an example with every key, installed with the package.",
    )]);
    page.control("SH", ["SEE ALSO"]);
    page.text([
        bold("relay"),
        roman("(1), "),
        bold("systemctl"),
        roman("(1), /usr/share/doc/relay/README.md"),
    ]);
    page.to_roff()
}

/// A shell's completion script for `relay`.
pub fn completion(shell: Shell) -> String {
    let mut cmd = built_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "relay", &mut out);
    String::from_utf8(out).expect("completions are UTF-8")
}

/// `/usr/share/doc/relay/copyright` in the machine-readable format Debian
/// uses, with the licence text of `LICENSE`.
pub fn copyright() -> String {
    let license = include_str!("../../LICENSE");
    let notice = license
        .lines()
        .find_map(|l| l.strip_prefix("Copyright (c) "))
        .expect("LICENSE has a copyright line");
    let mut out = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: relay\n\
         \n\
         Files: *\n\
         Copyright: {notice}\n\
         License: MIT\n\
         \n\
         License: MIT\n"
    );
    // The text after the notice, as continuation lines (blank lines as " .").
    let text = license
        .split_once(notice)
        .map(|(_, rest)| rest.trim())
        .unwrap_or_default();
    for line in text.lines() {
        if line.trim().is_empty() {
            out.push_str(" .\n");
        } else {
            out.push_str(&format!(" {line}\n"));
        }
    }
    out
}

fn reload_text(applies: Applies) -> &'static str {
    match applies {
        Applies::AtOnce => "applied at once",
        Applies::AtOnceWhileSet => {
            "applied at once when one value replaces another; setting or clearing it restarts the pipeline"
        }
        Applies::OfflineSource => "restarts only the offline source; the output keeps its connection",
        Applies::Destination => "reconnects only the destinations it changes; the encoder and the others run on",
        Applies::Restart => "restarts the pipeline; the output reconnects once",
    }
}

fn secrecy_text(secrecy: Secrecy) -> Option<&'static str> {
    match secrecy {
        Secrecy::Public => None,
        Secrecy::Secret => Some("Secret: never printed or logged."),
        Secrecy::InUrl => Some(
            "May hold a secret (a password, or the stream key after the application name), \
             masked in logs.",
        ),
    }
}

/// A `.SH` section of tagged (or plain) paragraphs.
fn section(roff: &mut Roff, title: &str, items: &[(Option<&str>, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        match tag {
            Some(tag) => {
                roff.control("TP", []);
                roff.text([bold(*tag)]);
            }
            None => {
                roff.control("PP", []);
            }
        }
        roff.text([roman(*text)]);
    }
}

/// A rendered section without its `.SH` line, to nest it under a command.
fn without_heading(rendered: &[u8]) -> String {
    let text = String::from_utf8_lossy(rendered);
    text.lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `packaging/` are what the code makes now.
    #[test]
    fn the_packaged_files_are_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
        for (path, text) in files() {
            let kept = std::fs::read_to_string(dir.join(path)).unwrap_or_default();
            assert!(
                kept == text,
                "packaging/{path} is out of date: run `cargo run -- generate-docs packaging`"
            );
        }
    }

    #[test]
    fn the_configuration_page_has_every_key() {
        let page = conf_page();
        for key in &KEYS {
            assert!(page.contains(&format!("\\fB{}\\fR", key.name)), "{key:?}");
            assert!(page.contains(&key.toml_name()), "{key:?}");
        }
        assert!(
            page.starts_with(".TH RELAY.CONF 5 \"24 Nov 2026\" \"relay "),
            "{page}"
        );
        assert!(page.contains("Default: \\fI1936\\fR") || page.contains("\\fB1936\\fR"));
        assert!(page.contains("Secret: never printed"));
        assert!(page.contains("applied at once"));
    }

    #[test]
    fn the_command_page_has_every_visible_command() {
        let page = man_page();
        assert!(
            page.contains("\n.TH relay 1 \"24 Nov 2026\" \"relay "),
            "{page}"
        );
        for command in ["run", "status", "switch", "zmq", "check", "demo"] {
            assert!(
                page.contains(&format!(".SS \"relay {command}\"")),
                "{command}"
            );
        }
        assert!(!page.contains("generate-docs"));
        assert!(page.contains("\\-\\-json"));
        assert!(page.contains("relay.conf"));
    }

    #[test]
    fn completions_know_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion(shell);
            for command in ["status", "switch", "check"] {
                assert!(script.contains(command), "{shell:?}: {command}");
            }
            assert!(!script.contains("generate-docs"), "{shell:?}");
        }
    }

    #[test]
    fn copyright_carries_the_license() {
        let text = copyright();
        assert!(text.contains("Copyright: 2026 relay maintainers\n"));
        assert!(text.contains("\n Permission is hereby granted"));
        assert!(text.contains("\n .\n"));
    }
}
