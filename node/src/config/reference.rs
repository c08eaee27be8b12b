//! docs/CONFIG.md is the reference of the config file's keys, for people: a table per
//! section, one row per key with its type, default and meaning. `ferry config-example` is
//! made from those tables, and the tests check them against the structs that read the file
//! (every key documented, every documented key read, every documented default the default).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

/// docs/CONFIG.md, compiled in.
const CONFIG_MD: &str = include_str!("../../../docs/CONFIG.md");

/// Width of the example's comment lines.
const WIDTH: usize = 95;

/// One key's row of a table of docs/CONFIG.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row<'a> {
    /// The key.
    pub(super) key: &'a str,
    /// The default column as written (markdown).
    pub(super) default: &'a str,
    /// The meaning column (markdown).
    pub(super) meaning: &'a str,
}

impl Row<'_> {
    /// The default as a TOML value, when the column starts with one in backticks (`"10s"`,
    /// `1024`, `[]`); `None` for `none` (the key is absent) or a description.
    pub(super) fn literal(&self) -> Option<&str> {
        let rest = self.default.strip_prefix('`')?;
        let value = rest.get(..rest.find('`')?)?;
        toml::from_str::<toml::Table>(&format!("key = {value}"))
            .is_ok()
            .then_some(value)
    }
}

/// A `## ` section of docs/CONFIG.md with a key table: its title and rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Section<'a> {
    pub(super) title: &'a str,
    pub(super) rows: Vec<Row<'a>>,
}

/// The key tables of docs/CONFIG.md (those whose header is `| key | type | default |
/// meaning |`), by section.
pub(super) fn sections() -> Vec<Section<'static>> {
    let mut sections: Vec<Section<'static>> = Vec::new();
    let mut title = "";
    for line in CONFIG_MD.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            title = heading;
            continue;
        }
        if line.trim_end() == "| key | type | default | meaning |" {
            sections.push(Section {
                title,
                rows: Vec::new(),
            });
            continue;
        }
        let Some(cells) = line
            .strip_prefix("| `")
            .and_then(|line| line.strip_suffix(" |"))
        else {
            continue;
        };
        let mut cells = cells.splitn(4, " | ");
        let (Some(key), Some(_type), Some(default), Some(meaning)) =
            (cells.next(), cells.next(), cells.next(), cells.next())
        else {
            continue;
        };
        if let (Some(section), Some(key)) = (sections.last_mut(), key.strip_suffix('`')) {
            section.rows.push(Row {
                key,
                default,
                meaning,
            });
        }
    }
    sections
}

/// A commented config file with every key at its default (`ferry config-example`), made from
/// the tables of docs/CONFIG.md: each key's meaning as a comment, then the key at its
/// default, or commented out when its default is not a value (`data_dir`, `key_file`, keys
/// that are unset by default).
pub fn example() -> String {
    let mut out = String::from(
        "# ferry config file: `ferry run --config PATH` (also `ferry listen`).\n\
         # Every key is optional; a flag (--listen, --key, --data, --peer, --http, --gateway,\n\
         # --webtransport, --relay, --serve-relay) replaces the file's value. Durations are\n\
         # strings with a unit: \"500ms\", \"10s\", \"5m\", \"1h\". Sizes are integers in bytes.\n\
         # Relative paths are relative to the directory of this file. Made from\n\
         # docs/CONFIG.md, which says more.\n",
    );
    for section in sections() {
        out.push_str(&format!("\n# --- {} ---\n", section.title.replace('`', "")));
        for row in section.rows {
            out.push('\n');
            for line in wrap(row.meaning, WIDTH - 2) {
                out.push_str(&format!("# {line}\n"));
            }
            match row.literal() {
                Some(value) => out.push_str(&format!("{} = {value}\n", row.key)),
                None => {
                    for line in wrap(&format!("Default: {}.", row.default), WIDTH - 2) {
                        out.push_str(&format!("# {line}\n"));
                    }
                    out.push_str(&format!("# {} =\n", row.key));
                }
            }
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stays
/// whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
