//! `ivy svm-shell` (hidden): a region driven over stdin, one JSON line per
//! command, for the tests. Commands: `store I V`, `load I`, `await I V MS`
//! (load word I until it holds V, for at most MS ms), `stats`, `quit`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use ivy_raft::client::{Region, RegionOptions};
use serde_json::{json, Value};

use super::{start_client, ClientArgs};

/// Flags of `ivy svm-shell`.
#[derive(Args, Debug, Clone)]
pub struct ShellArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Pages in the region.
    #[arg(long, env = "IVY_SVM_PAGES", default_value_t = 4)]
    pub pages: usize,
}

/// Serves commands until `quit` or the end of stdin.
pub async fn run(args: ShellArgs) -> Result<()> {
    let client = Arc::new(start_client(&args.client).await?);
    let options = RegionOptions { unsafe_keep_stale: args.client.unsafe_keep_stale };
    let region = Region::map_with(&client, &args.client.region, args.pages, options)?;
    println!("{}", json!({"event": "ready", "client": client.id()}));
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words == ["quit"] {
                break;
            }
            println!("{}", command(&region, &words));
        }
        drop(region);
    })
    .await?;
    Ok(())
}

fn command(region: &Region, words: &[&str]) -> Value {
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
    let answer = match words.first().copied() {
        Some("store") => region.store_u64(num(1) as usize, num(2)).map(|()| json!({})),
        Some("load") => region.load_u64(num(1) as usize).map(|v| json!({"value": v})),
        Some("await") => await_value(region, num(1) as usize, num(2), Duration::from_millis(num(3))),
        Some("stats") => Ok(json!({"stats": region.stats()})),
        _ => return json!({"ok": false, "error": format!("unknown command {words:?}")}),
    };
    match answer {
        Ok(mut v) => {
            v["ok"] = true.into();
            v
        }
        Err(err) => json!({"ok": false, "error": err.to_string()}),
    }
}

/// Loads word `i` over and over until it holds `want` or `timeout` passes.
fn await_value(region: &Region, i: usize, want: u64, timeout: Duration) -> Result<Value, ivy_raft::error::Error> {
    let give_up = Instant::now() + timeout;
    let mut loads = 0u64;
    loop {
        let v = region.load_u64(i)?;
        loads += 1;
        if v == want {
            return Ok(json!({"value": v, "loads": loads}));
        }
        if Instant::now() > give_up {
            return Ok(json!({"value": v, "loads": loads, "timed_out": true}));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
