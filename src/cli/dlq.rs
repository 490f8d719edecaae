//! `ferry dlq`: the dead letters of a trigger (or a source: `kafkasource/NAME`,
//! `pingsource/NAME`), kept by Ferry when no dead-letter sink took them. `TRIGGER` is a
//! trigger's name, or `TYPE/NAME` for any kind that delivers.

use super::client::{Client, ServerArg};
use super::get::Output;
use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List the dead letters with their error.
    List {
        trigger: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        /// At most this many (oldest first); all of them if not given.
        #[arg(long)]
        limit: Option<usize>,
        /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
        #[arg(skip)]
        server: ServerArg,
    },
    /// Deliver dead letters again (fresh attempt count).
    Replay {
        trigger: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// One dead letter.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// All of them.
        #[arg(long)]
        all: bool,
        /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
        #[arg(skip)]
        server: ServerArg,
    },
    /// Delete every dead letter of the trigger.
    Purge {
        trigger: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
        #[arg(skip)]
        server: ServerArg,
    },
}

impl DlqCommand {
    /// The command, talking to `to`.
    pub fn with_server(mut self, to: ServerArg) -> Self {
        match &mut self {
            DlqCommand::List { server, .. }
            | DlqCommand::Replay { server, .. }
            | DlqCommand::Purge { server, .. } => *server = to,
        }
        self
    }
}

/// The API path of the dead letters of `target` (`NAME`, a trigger's, or `TYPE/NAME`); the
/// server says whether that kind has dead letters.
fn dead_letters_path(namespace: &str, target: &str) -> anyhow::Result<String> {
    let (kind, name) = target.split_once('/').unwrap_or(("triggers", target));
    if kind.is_empty() || name.is_empty() || name.contains('/') {
        bail!("{target:?}: give a trigger's name, or TYPE/NAME (kafkasource/orders)");
    }
    Ok(format!(
        "/api/v1/namespaces/{namespace}/{kind}/{name}/deadletters"
    ))
}

pub async fn run(cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List {
            trigger,
            namespace,
            output,
            limit,
            server,
        } => {
            let client = Client::new(&server)?;
            let path = dead_letters_path(&namespace, &trigger)?;
            // Page by page: the table prints as pages come; JSON and YAML gather them.
            let mut all = Vec::new();
            let mut shown = 0;
            let mut after: Option<String> = None;
            loop {
                let want = limit.map_or(PAGE, |l| l.saturating_sub(shown).min(PAGE));
                if want == 0 {
                    break;
                }
                let mut url = format!("{path}?limit={want}");
                if let Some(a) = &after {
                    url.push_str("&after=");
                    url.push_str(&urlencoding(a));
                }
                let answer = client.request(Method::GET, &url, None).await?;
                let items = answer["items"].as_array().cloned().unwrap_or_default();
                shown += items.len();
                if output == Output::Table {
                    print_table(&items);
                } else {
                    all.extend(items);
                }
                match answer["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            match output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&json!({"items": all}))?)
                }
                Output::Yaml => print!("{}", serde_yaml_ng::to_string(&json!({"items": all}))?),
                Output::Table => {
                    if shown == 0 {
                        eprintln!("No dead letters for {namespace}/{trigger}.");
                    }
                }
            }
        }
        DlqCommand::Replay {
            trigger,
            namespace,
            id,
            all,
            server,
        } => {
            let client = Client::new(&server)?;
            let path = format!("{}/replay", dead_letters_path(&namespace, &trigger)?);
            let body = match (id, all) {
                (Some(id), _) => json!({ "id": id }),
                (None, true) => json!({ "all": true }),
                (None, false) => bail!("give --id ID or --all"),
            };
            let answer: Value = client.request(Method::POST, &path, Some(&body)).await?;
            println!(
                "{} dead letter(s) of {namespace}/{trigger} sent for delivery again",
                answer["replayed"]
            );
        }
        DlqCommand::Purge {
            trigger,
            namespace,
            server,
        } => {
            let client = Client::new(&server)?;
            let path = dead_letters_path(&namespace, &trigger)?;
            let answer = client.request(Method::DELETE, &path, None).await?;
            println!(
                "{} dead letter(s) of {namespace}/{trigger} purged",
                answer["purged"]
            );
        }
    }
    Ok(())
}

/// The most dead letters asked for at once (the server's page size).
const PAGE: usize = 500;

fn print_table(items: &[Value]) {
    for dl in items {
        let e = &dl["error"];
        println!(
            "{}  {}  event {} ({})  attempts {}  status {}  to {}\n    {}",
            dl["id"].as_str().unwrap_or(""),
            e["time"].as_str().unwrap_or(""),
            dl["event"]["id"].as_str().unwrap_or(""),
            dl["event"]["type"].as_str().unwrap_or(""),
            e["attempts"],
            e["code"]
                .as_u64()
                .map_or("-".to_string(), |c| c.to_string()),
            e["destination"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or(""),
        );
    }
}

/// A page cursor as a query value (cursors hold `:` and `.`, and ids whatever a source made).
fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
