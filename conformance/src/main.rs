//! A black-box Matrix client-server conformance suite. It speaks only HTTP to
//! the homeserver it is pointed at, so it runs against Hearth and Synapse alike;
//! a case that fails on Synapse is a wrong case.

mod cases;
mod client;

use std::{future::Future, pin::Pin, time::Duration};

use clap::Parser;
use futures::StreamExt;

use crate::client::Ctx;

#[derive(Parser)]
#[command(about = "Matrix client-server conformance suite")]
struct Args {
    /// Base URL of the homeserver, e.g. http://127.0.0.1:8008
    #[arg(long)]
    hs: String,
    /// Run only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Cases run concurrently.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Per-case time limit in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub struct Case {
    pub name: &'static str,
    pub run: fn(Ctx) -> CaseFuture,
}

/// Declares cases from async fns taking a `Ctx`.
#[macro_export]
macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        pub fn cases() -> Vec<$crate::Case> {
            vec![$($crate::Case {
                name: concat!(module_path!(), "::", stringify!($f)),
                run: |ctx| Box::pin($f(ctx)),
            }),*]
        }
    };
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let ctx = Ctx::new(args.hs.trim_end_matches('/'));
    let cases: Vec<Case> = cases::all()
        .into_iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    let limit = Duration::from_secs(args.timeout);
    let results: Vec<(&str, anyhow::Result<()>)> = futures::stream::iter(cases)
        .map(|case| {
            let ctx = ctx.clone();
            async move {
                let name = case.name.trim_start_matches("conformance::cases::");
                let outcome = match tokio::time::timeout(limit, (case.run)(ctx)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("timed out after {}s", limit.as_secs())),
                };
                match &outcome {
                    Ok(()) => println!("PASS {name}"),
                    Err(e) => println!("FAIL {name}: {e:#}"),
                }
                (name, outcome)
            }
        })
        .buffer_unordered(args.jobs.max(1))
        .collect()
        .await;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let passed = results.len() - failed;
    println!("{passed} passed, {failed} failed");
    if failed > 0 || results.is_empty() {
        std::process::exit(1);
    }
}
