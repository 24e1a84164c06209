//! A load and latency benchmark that speaks the Matrix client API to any
//! homeserver, so Hearth and Synapse are measured the same way in one run.
//!
//! Per scenario and server it reports send→ack and send→receive latency,
//! sustained sends per second, peak server RSS, and correctness: every message
//! must reach every other member exactly once, in one order for all of them.

mod client;
mod scenario;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::scenario::{Outcome, Scenario};

#[derive(Parser)]
#[command(about = "Benchmark Matrix homeservers side by side")]
struct Args {
    /// A server to measure: NAME=URL or NAME=URL,pid=PID (the pid enables RSS
    /// sampling); NAME=URL1+URL2 spreads the users of the room scenarios over
    /// several processes of one server, or over federating servers (rooms
    /// then span them). Give several; ratios are against the first.
    #[arg(long = "hs", required = true)]
    servers: Vec<String>,
    /// Scenarios to run (comma separated): unloaded, pairs, group8, rooms5, room256, to_device,
    /// ws_sends, idle, idle_ws.
    #[arg(long, default_value = "unloaded,pairs,group8,rooms5")]
    scenarios: String,
    /// How long each loaded scenario sends, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Idle connections to hold open in the `idle` and `idle_ws` scenarios.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Correctness only: tiny runs, no figures worth reading (for CI).
    #[arg(long)]
    smoke: bool,
}

pub struct Server {
    pub name: String,
    /// The first of `urls`.
    pub url: String,
    /// Several processes of one server (`URL1+URL2`): the room scenarios
    /// spread their users over them in turn.
    pub urls: Vec<String>,
    pub pid: Option<u32>,
}

fn parse_server(s: &str) -> Result<Server> {
    let (name, rest) = s
        .split_once('=')
        .context("--hs takes NAME=URL[+URL...][,pid=PID]")?;
    let mut parts = rest.split(',');
    let urls: Vec<String> = parts
        .next()
        .context("missing URL")?
        .split('+')
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let url = urls.first().cloned().context("missing URL")?;
    let mut pid = None;
    for p in parts {
        match p.split_once('=') {
            Some(("pid", v)) => pid = Some(v.parse().context("pid must be a number")?),
            _ => bail!("unknown option {p:?} in --hs"),
        }
    }
    Ok(Server {
        name: name.to_owned(),
        url,
        urls,
        pid,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let servers: Vec<Server> = args
        .servers
        .iter()
        .map(|s| parse_server(s))
        .collect::<Result<_>>()?;
    let secs = if args.smoke { 2 } else { args.seconds };
    let mut table: Vec<(String, Vec<Outcome>)> = vec![];
    let mut failures = 0;
    for name in args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let scenario = Scenario::named(name, Duration::from_secs(secs), args.idle, args.smoke)?;
        let mut row = vec![];
        for server in &servers {
            // The other servers are paused while one is measured, so their
            // background work (Synapse's periodic jobs, say) lands in nobody's
            // figures; then the machine is left to settle.
            let others: Vec<u32> = servers
                .iter()
                .filter(|o| o.name != server.name)
                .filter_map(|o| o.pid)
                .collect();
            if !args.smoke {
                signal(&others, "STOP");
                wait_for_quiet_machine().await;
            }
            eprintln!("running {name} on {}", server.name);
            let outcome = scenario.run(server).await;
            if !args.smoke {
                signal(&others, "CONT");
            }
            let outcome = outcome.with_context(|| format!("{name} on {}", server.name))?;
            failures += outcome.lost + outcome.duplicated + outcome.out_of_order;
            row.push(outcome);
        }
        table.push((name.to_owned(), row));
    }
    print_table(&servers, &table);
    let deliveries: u64 = table
        .iter()
        .flat_map(|(_, r)| r.iter())
        .map(|o| o.delivered)
        .sum();
    if failures > 0 {
        println!("correctness: {failures} lost, duplicated or out-of-order deliveries");
        std::process::exit(1);
    }
    println!("correctness: 0 lost, 0 duplicated, 0 out of order ({deliveries} deliveries checked)");
    Ok(())
}

/// Sends SIGSTOP or SIGCONT to processes.
fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}

/// Waits (up to a minute) until the machine's CPUs are nearly idle, so one
/// server's leftover work from the previous scenario (queues it is still
/// draining, database vacuum) does not land in the next measurement.
async fn wait_for_quiet_machine() {
    const BUSY_BELOW: f64 = 0.10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = cpu_times();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_times();
        if let (Some((busy0, total0)), Some((busy1, total1))) = (last, now) {
            let total = total1.saturating_sub(total0);
            if total > 0 && (busy1.saturating_sub(busy0) as f64 / total as f64) < BUSY_BELOW {
                return;
            }
        }
        last = now;
    }
    eprintln!("machine still busy after 60 s; measuring anyway");
}

/// (busy, total) jiffies over all CPUs, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn print_table(servers: &[Server], table: &[(String, Vec<Outcome>)]) {
    println!(
        "\n| scenario | server | ack p50 ms | ack p99 ms | deliver p50 ms | deliver p99 ms | sends/s | deliveries/s | peak RSS MB | RSS/conn KB | lost | dup | ooo |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, row) in table {
        for (server, o) in servers.iter().zip(row) {
            println!(
                "| {name} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                server.name,
                fmt_ms(o.ack.p50),
                fmt_ms(o.ack.p99),
                fmt_ms(o.deliver.p50),
                fmt_ms(o.deliver.p99),
                o.sends_per_sec,
                o.deliveries_per_sec,
                o.peak_rss_kb
                    .map(|k| format!("{:.1}", k as f64 / 1024.0))
                    .unwrap_or_else(|| "-".into()),
                o.rss_per_conn_kb
                    .map(|k| format!("{k:.1}"))
                    .unwrap_or_else(|| "-".into()),
                o.lost,
                o.duplicated,
                o.out_of_order
            );
        }
    }
    if servers.len() < 2 {
        return;
    }
    println!(
        "\nRatios (other server ÷ {}; latency >1 means {} is faster, throughput <1 means {} is faster):",
        servers[0].name, servers[0].name, servers[0].name
    );
    println!("| scenario | server | ack p50 | deliver p50 | deliver p99 | sends/s |");
    println!("|---|---|---|---|---|---|");
    for (name, row) in table {
        let base = &row[0];
        for (server, o) in servers.iter().zip(row).skip(1) {
            let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) if b.as_nanos() > 0 => {
                    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
                }
                _ => "-".into(),
            };
            let thr = if base.sends_per_sec > 0.0 {
                format!("{:.3}×", o.sends_per_sec / base.sends_per_sec)
            } else {
                "-".into()
            };
            println!(
                "| {name} | {} | {} | {} | {} | {thr} |",
                server.name,
                ratio(o.ack.p50, base.ack.p50),
                ratio(o.deliver.p50, base.deliver.p50),
                ratio(o.deliver.p99, base.deliver.p99)
            );
        }
    }
}
