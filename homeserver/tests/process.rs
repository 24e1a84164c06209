//! The binary as an operating-system process: one process per data
//! directory, its file-descriptor limit, and socket options on its listeners.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{binary, free_addr, temp_dir};

/// Starts `homeserver` on the embedded SQLite database in `dir`.
fn spawn_server(dir: &Path, addr: &str) -> Child {
    Command::new(binary())
        .args(["--data-dir", &dir.display().to_string(), "--listen", addr])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn homeserver")
}

/// Whether a server answers on `addr` within 30 seconds.
async fn serves(addr: &str) -> bool {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://{addr}/_matrix/client/versions"))
            .send()
            .await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits up to 20 seconds for `child` to exit; a child still running then is
/// killed and reported as `None`.
fn exit_within(mut child: Child) -> Option<Output> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = temp_dir("lock");
    let first_addr = free_addr();
    let mut first = spawn_server(&dir, &first_addr);
    assert!(serves(&first_addr).await, "the first server did not start");
    let pid = first.id().to_string();

    // A second server on the same directory must not start serving.
    let second_addr = free_addr();
    let second = exit_within(spawn_server(&dir, &second_addr));
    let Some(out) = second else {
        stop(&mut first);
        panic!("a second server on the same data directory kept running");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second server exited 0: {err}");
    assert!(
        err.contains(&pid),
        "the refusal does not name pid {pid}: {err}"
    );

    // An admin command that writes the database is refused too.
    let admin = Command::new(binary())
        .args([
            "--data-dir",
            &dir.display().to_string(),
            "create-user",
            "eve",
        ])
        .args(["--password", "pw-eve"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn create-user");
    let out = exit_within(admin).expect("create-user did not exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create-user ran beside the server");
    assert!(
        err.contains(&pid),
        "the refusal does not name pid {pid}: {err}"
    );

    // Once the first has stopped, the directory is free again.
    stop(&mut first);
    let third_addr = free_addr();
    let mut third = spawn_server(&dir, &third_addr);
    let up = serves(&third_addr).await;
    stop(&mut third);
    assert!(up, "a server did not start after the first stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The soft and hard open-file limits of process `pid`, from /proc.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let figures: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    (figures[0], figures[1])
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
    assert!(
        hard > 256,
        "this machine's hard limit ({hard}) is too low to test"
    );
    let dir = temp_dir("nofile");
    let addr = free_addr();
    let mut cmd = Command::new(binary());
    cmd.args(["--data-dir", &dir.display().to_string(), "--listen", &addr])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    // Started the way a default service manager starts it: a low soft limit
    // under a higher hard one.
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(move || rlimit::Resource::NOFILE.set(256, hard));
    }
    let mut child = cmd.spawn().expect("spawn homeserver");
    let up = serves(&addr).await;
    let limits = open_file_limits(child.id());
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up, "the server did not start");
    assert_eq!(limits, (hard, hard), "soft open-file limit not raised");
}
