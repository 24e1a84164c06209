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

/// Whether the server's end of the TCP connection whose client end is `ours`
/// has TCP_NODELAY, or `None` while the server has not accepted it. Each of
/// the server's sockets is borrowed with `pidfd_getfd` (a duplicate
/// descriptor of the same socket, so the same options).
fn server_side_nodelay(pid: u32, ours: std::net::SocketAddr) -> Option<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: a plain syscall; the descriptor it returns is ours alone.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let target = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok());
        let Some(target) = target.filter(|_| is_socket) else {
            continue;
        };
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: as above. Other kinds of socket fail `peer_addr` below.
        let socket = std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        if socket.peer_addr().ok() == Some(ours) {
            return socket.nodelay().ok();
        }
    }
    None
}

/// Connects to `addr` and reads TCP_NODELAY on the connection the server
/// accepted, waiting up to 5 seconds for the accept.
async fn accepted_nodelay(pid: u32, addr: &str) -> bool {
    let conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let ours = conn.local_addr().expect("local addr");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(nodelay) = server_side_nodelay(pid, ours) {
            return nodelay;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not accept the connection to {addr}");
}

/// Small frames written back to back (a WebSocket sync frame, then the
/// send's ack) must not wait for the client's delayed ACK (Nagle's
/// algorithm): every listener's accepted sockets have TCP_NODELAY. The
/// cluster's internal endpoints are served on the client listener.
#[tokio::test]
async fn accepted_connections_have_tcp_nodelay() {
    let dir = temp_dir("nodelay");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["nodelay.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let (addr, fed_addr) = (free_addr(), free_addr());
    let data = dir.join("data");
    let mut child = Command::new(binary())
        .args(["--data-dir", &data.display().to_string(), "--listen", &addr])
        .args(["--server-name", "nodelay.test"])
        .args(["--federation-listen", &fed_addr])
        .args(["--federation-tls-cert", &cert_file.display().to_string()])
        .args(["--federation-tls-key", &key_file.display().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn homeserver");
    assert!(serves(&addr).await, "the server did not start");
    let client = accepted_nodelay(child.id(), &addr).await;
    let federation = accepted_nodelay(child.id(), &fed_addr).await;
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        client,
        "the client listener's connection has no TCP_NODELAY"
    );
    assert!(
        federation,
        "the federation listener's connection has no TCP_NODELAY"
    );
}
