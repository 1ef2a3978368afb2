//! Helpers shared by the end-to-end tests: the workspace's binaries, and a real S3-compatible
//! server (moto) on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the workspace binary `name` (package and binary share the name). `cargo test
/// --workspace` (the project's test command) builds it fresh, since its package has
/// integration tests; a test of this crate run alone needs `cargo build -p trainer -p replay`
/// first. (Building from inside a test would wait forever on cargo's lock of the target
/// directory.)
pub fn binary(name: &str) -> PathBuf {
    // A directory of prebuilt binaries (the GPU script carries release builds to a GPU machine).
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p {name}` first)",
        path.display()
    );
    path
}

/// Run a workspace binary; returns its output.
pub fn run(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"))
}

/// A path as the `&str` the commands take.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `trainer run CONFIG --out OUT --quiet EXTRA…`, which must succeed.
pub fn train(config: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["run", s(config), "--out", s(out), "--quiet"];
    args.extend_from_slice(extra);
    let r = run("trainer", &args);
    assert!(
        r.status.success(),
        "trainer {args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// `replay ARGS… --json --quiet`: checks the exit status and that standard output is one JSON
/// document on one line, and parses it.
pub fn replay_json<T: serde::de::DeserializeOwned>(args: &[&str], exit: i32) -> T {
    let mut full = args.to_vec();
    full.extend(["--json", "--quiet"]);
    let out = run("replay", &full);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(exit),
        "replay {full:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON document on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("replay {full:?}: {e}: {stdout}"))
}

/// A moto S3 server on 127.0.0.1, stopped on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

impl Moto {
    /// Start `moto_server` from `$MOTO_SERVER` or the workspace's `.venv` (which
    /// `scripts/setup-test-env.sh`, run by `.ci/run`, installs).
    pub fn start() -> Moto {
        let exe = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv/bin/moto_server"));
        assert!(
            exe.exists(),
            "moto_server not found at {}: run scripts/setup-test-env.sh (or set MOTO_SERVER)",
            exe.display()
        );
        let mut child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("moto_server exited before printing its address")
                .expect("read moto_server output");
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                break digits.parse::<u16>().expect("port number");
            }
        };
        // Keep draining its log so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    /// Create a bucket (an HTTP PUT on `/<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
    }

    /// `object_store` configuration for this server.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
        ]
    }

    /// The same configuration as environment variables, for child processes.
    pub fn env(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
