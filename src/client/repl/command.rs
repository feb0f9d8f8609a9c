//! One REPL line parsed into a [`Command`], once.

/// Pages the `x` command draws from: P1..P10, as in the original experiment.
pub const X_PAGES: u64 = 10;

/// Most operations one `x` command runs.
pub const MAX_X_OPS: u64 = 1_000_000;

/// Most pages one `seed` command writes.
pub const MAX_SEED_PAGES: u64 = 10_000;

/// One parsed REPL command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write content to a page.
    Write {
        /// The page.
        page: String,
        /// The rest of the line.
        content: String,
    },
    /// Read a page.
    Read {
        /// The page.
        page: String,
    },
    /// Show the local page table.
    Print,
    /// N random reads/writes on P1..P10.
    Random {
        /// How many.
        n: u64,
    },
    /// Write P1..PN with "Content by client `<id>`".
    Seed {
        /// How many pages.
        n: u64,
    },
    /// Show the CM nodes.
    Status,
    /// List the commands.
    Help,
    /// Leave the cluster and exit.
    Quit,
}

/// The help text, one command a line.
pub const HELP: &[&str] = &[
    "write <page> <content...>   write a page (alias writePage); the first write creates it",
    "read <page>                 read a page (alias readPage)",
    "print                       show this client's page table",
    "seed [N]                    write P1..PN (default 10) with \"Content by client <id>\"",
    "x [N]                       N random reads/writes on P1..P10 (default 10); run seed first",
    "status                      show the CM nodes",
    "help                        this list",
    "quit                        leave the cluster and exit",
];

/// Every command word [`parse`] knows, aliases included (Tab completes them).
pub const COMMAND_WORDS: &[&str] =
    &["write", "writePage", "read", "readPage", "print", "x", "seed", "status", "help", "quit", "exit"];

/// Parses one input line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!("the line holds a control character {c:?}; type help for the commands"));
    }
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let cmd = match word {
        "" => return Ok(None),
        "write" | "writePage" => {
            let (page, content) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if page.is_empty() {
                return Err("usage: write <page> <content...>".into());
            }
            Command::Write { page: page.into(), content: content.trim_start().into() }
        }
        "read" | "readPage" => match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
            [page] => Command::Read { page: (*page).into() },
            _ => return Err("usage: read <page>".into()),
        },
        "print" => Command::Print,
        "x" => Command::Random { n: parse_count(rest, MAX_X_OPS)? },
        "seed" => Command::Seed { n: parse_count(rest, MAX_SEED_PAGES)? },
        "status" => Command::Status,
        "help" => Command::Help,
        "quit" | "exit" => Command::Quit,
        other => return Err(format!("unknown command {other:?}; try help")),
    };
    Ok(Some(cmd))
}

fn parse_count(rest: &str, max: u64) -> Result<u64, String> {
    if rest.is_empty() {
        return Ok(10);
    }
    match rest.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a count from 1 to {max}, not {rest:?}")),
    }
}

/// Splits a leading `#TAG ` off a line: a tagged command runs concurrently and its
/// answer carries `"tag"`, so a driver can keep several commands in flight.
pub fn split_tag(line: &str) -> (Option<String>, &str) {
    let trimmed = line.trim_start();
    match trimmed.strip_prefix('#') {
        Some(rest) => {
            let (tag, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (Some(tag.to_string()), cmd)
        }
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_completed_word_is_a_command() {
        for word in COMMAND_WORDS {
            let parsed = parse(&format!("{word} P1 v")).map_err(|e| e.to_string());
            assert!(!parsed.is_err_and(|e| e.contains("unknown command")), "{word}");
        }
        assert!(!COMMAND_WORDS.contains(&"fly"));
    }

    #[test]
    fn parses_commands() {
        let w = parse("writePage P1 hello  world").unwrap().unwrap();
        assert_eq!(w, Command::Write { page: "P1".into(), content: "hello  world".into() });
        assert_eq!(parse("readPage P1").unwrap(), Some(Command::Read { page: "P1".into() }));
        assert_eq!(parse("x").unwrap(), Some(Command::Random { n: 10 }));
        assert_eq!(parse("x 25").unwrap(), Some(Command::Random { n: 25 }));
        assert_eq!(parse("seed").unwrap(), Some(Command::Seed { n: 10 }));
        assert_eq!(parse("seed 3").unwrap(), Some(Command::Seed { n: 3 }));
        assert!(parse("seed 0").is_err());
        assert_eq!(parse("   ").unwrap(), None);
        assert!(parse("x 0").is_err());
        assert!(parse("x lots").is_err());
        assert!(parse("read").is_err());
        assert!(parse("read P1 P2").is_err());
        assert!(parse("fly away").unwrap_err().contains("unknown command"));
        assert!(parse("\u{1b}[A").unwrap_err().contains("control character"));
        assert_eq!(split_tag("#7 read P1"), (Some("7".into()), "read P1"));
        assert_eq!(split_tag("read P1"), (None, "read P1"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_line_parses_or_is_refused(line in prop_oneof![
                ".{0,100}",
                "(write|writePage|read|readPage|x|seed|print|status|help|quit) {0,3}[^\\n]{0,40}",
            ]) {
                match parse(&line) {
                    Ok(Some(Command::Write { page, content })) => {
                        prop_assert!(!page.is_empty() && !page.contains(char::is_whitespace));
                        prop_assert!(line.contains(page.as_str()) && line.contains(content.as_str()));
                    }
                    Ok(Some(Command::Read { page })) => prop_assert!(!page.is_empty() && !page.contains(char::is_whitespace)),
                    Ok(Some(Command::Random { n })) => prop_assert!((1..=MAX_X_OPS).contains(&n)),
                    Ok(Some(Command::Seed { n })) => prop_assert!((1..=MAX_SEED_PAGES).contains(&n)),
                    Ok(Some(_)) => {}
                    Ok(None) => prop_assert!(line.trim().is_empty()),
                    Err(why) => prop_assert!(!why.is_empty()),
                }
                let (_tag, rest) = split_tag(&line);
                prop_assert!(line.contains(rest));
            }
        }
    }
}
