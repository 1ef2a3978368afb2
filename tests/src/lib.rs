//! Helpers shared by the end-to-end tests: the workspace's binaries, a real S3-compatible server
//! (moto) on loopback, and a one-node Slurm cluster.

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
    run_with(name, args, &[])
}

/// [`run`] with extra environment variables (a test store's endpoint and credentials).
pub fn run_with(name: &str, args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(binary(name))
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"))
}

/// A path as the `&str` the commands take.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `trainer keygen --out DIR`, which must succeed: the private key's path and the public key in
/// hex.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let out = run("trainer", &["keygen", "--out", s(dir)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key   ").map(str::to_string))
        .expect("public key printed");
    (dir.join("signing-key.pem"), hex)
}

/// `mpirun -n N trainer ARGS…` (Open MPI, as many processes as asked whatever the cores): the
/// launcher's output. `scripts/setup-test-env.sh` installs Open MPI.
pub fn mpirun(n: usize, args: &[&str]) -> std::process::Output {
    mpirun_command(&[(n, args)])
        .output()
        .unwrap_or_else(|e| panic!("mpirun {args:?}: {e}"))
}

/// `mpirun -n N1 trainer ARGS1… : -n N2 trainer ARGS2… …`: one MPI job whose groups of workers
/// run `trainer` with their own arguments.
pub fn mpirun_command(apps: &[(usize, &[&str])]) -> Command {
    let mut c = Command::new(which("mpirun"));
    c.arg("--oversubscribe");
    for (i, (n, args)) in apps.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-n", &n.to_string()])
            .arg(binary("trainer"))
            .args(*args);
    }
    // Containers run their tests as root, which Open MPI refuses unless told.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
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
    replay_json_with(args, exit, &[])
}

/// [`replay_json`] with extra environment variables.
pub fn replay_json_with<T: serde::de::DeserializeOwned>(
    args: &[&str],
    exit: i32,
    env: &[(String, String)],
) -> T {
    let mut full = args.to_vec();
    full.extend(["--json", "--quiet"]);
    let out = run_with("replay", &full, env);
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

/// Panics unless `problems` holds one of verdict `kind` about `artefact` whose detail mentions
/// `detail`.
#[track_caller]
pub fn assert_problem(
    problems: &[replay::report::Problem],
    artefact: &str,
    kind: replay::Verdict,
    detail: &str,
) {
    assert!(
        problems
            .iter()
            .any(|p| p.artefact == artefact && p.kind == kind && p.detail.contains(detail)),
        "no {kind:?} problem with {artefact} mentioning {detail:?}: {problems:?}"
    );
}

/// An adversary's history for the local tiny-BERT fixture run at `run`
/// ([`trainer::fixtures::tiny_bert`]), recorded consistently from `start`, the state after
/// step `start.meta.step`: every artefact after that step is removed, training goes on honestly
/// with the run's spec and data, `poison(step, state)` may alter the state after each step
/// (returning true when it did; training continues from the altered state), and ledger
/// records, checkpoints and the completion record are written so that every hash agrees. From
/// step 0, the manifest's initial root and genesis are rewritten too, and old signatures are
/// removed. With `signer`, everything written is signed by that key. Only replay can tell.
pub fn forge_history(
    run: &Path,
    start: trainer::session::TrainingState,
    mut poison: impl FnMut(u64, &mut trainer::session::TrainingState) -> bool,
    signer: Option<ed25519_dalek::SigningKey>,
) {
    use run_store::Store;
    use run_trust::signature::kind;
    use snapshot_format::hash::file_hash;
    use snapshot_format::layout;
    use snapshot_format::layout::{is_checkpoint_step, segment_ending_at};
    use snapshot_format::ledger::{self, StepRecord};
    use snapshot_format::manifest::Completion;
    use trainer::backend::Cpu;
    use trainer::model::bert::BertClassifier;
    use trainer::record::{RunSigner, RunWriter};
    use trainer::run::RunFiles;
    use trainer::session::{PreparedData, Session};

    let store = Store::open(s(run)).expect("store");
    let files = RunFiles::load(&store).expect("run files");
    let (spec, mut manifest) = (files.spec.clone(), files.manifest.clone());
    let (from, interval, total) = (
        start.meta.step,
        manifest.recording.checkpoint_interval,
        spec.run.steps,
    );
    // An artefact removed takes its signatures along (the forger signs the new one afresh).
    let signers: Vec<PathBuf> = std::fs::read_dir(run.join(layout::SIGNATURES))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    let remove = |key: String| {
        let signatures = signers.iter().map(|d| d.join(format!("{key}.sig")));
        for p in std::iter::once(run.join(&key)).chain(signatures) {
            if p.exists() {
                std::fs::remove_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    };
    for step in run_store::ledger::checkpoint_steps(&store).expect("checkpoints") {
        if step > from || (from == 0 && step == 0) {
            remove(layout::checkpoint(step));
        }
    }
    let kept_segments = segment_ending_at(from, interval);
    for i in kept_segments + 1..=segment_ending_at(total, interval) {
        remove(layout::segment(i));
    }
    remove(layout::COMPLETE.to_string());
    let hashes = start.tensor_hashes();
    let root = start.root(&hashes).expect("root");
    let head = if from == 0 {
        let _ = std::fs::remove_dir_all(run.join(layout::SIGNATURES));
        manifest.initial_state_root = root;
        manifest.genesis = ledger::genesis(&manifest.spec_hash, &root);
        std::fs::write(run.join(layout::MANIFEST), manifest.to_json()).expect("manifest");
        manifest.genesis
    } else {
        trainer::run::read_ledger(&store, &manifest, kept_segments)
            .expect("ledger")
            .last()
            .map(StepRecord::hash)
            .expect("records before the start")
    };
    let signer = signer.map(|k| RunSigner::new(k, &manifest.run_id, manifest.genesis));
    if let (Some(sig), 0) = (&signer, from) {
        let bytes = std::fs::read(run.join(layout::MANIFEST)).expect("manifest");
        sig.sign(
            &store,
            layout::MANIFEST,
            kind::MANIFEST,
            0,
            file_hash(&bytes),
        )
        .expect("sign manifest");
    }
    let mut writer = RunWriter::new(
        store.clone(),
        &manifest.run_id,
        head,
        kept_segments + 1,
        (from > 0).then_some(root),
    )
    .signed_by(signer);
    if from == 0 {
        writer
            .checkpoint(start.clone(), hashes, root)
            .expect("checkpoint 0");
    }
    let config = trainer::fixtures::tiny_bert();
    let device = burn::backend::flex::FlexDevice;
    let restore = |state: &trainer::session::TrainingState| {
        Session::<Cpu, BertClassifier<Cpu>>::from_state(
            spec.clone(),
            config.clone(),
            None,
            state,
            device,
            "forged",
        )
        .expect("restore")
    };
    let mut session = restore(&start);
    let prepared = PreparedData::new(&files.dataset, &spec);
    let mut last_root = root;
    for step in from + 1..=total {
        let (epoch, ids) = session.next_batch();
        let parts =
            prepared.step_batches::<Cpu>(&ids, spec.run.micro_batches, |_| true, session.device());
        let out = session.train_step(&parts);
        let mut state = session.capture();
        if poison(step, &mut state) {
            session = restore(&state);
        }
        let hashes = state.tensor_hashes();
        let root = state.root(&hashes).expect("root");
        last_root = root;
        writer.record(StepRecord {
            step,
            epoch,
            lr_bits: out.lr_bits,
            batch_hash: files.dataset.batch_hash(&ids),
            example_ids: ids,
            loss_bits: out.loss_bits,
            grad_norm_bits: out.grad_norm_bits,
            state_root: Some(root),
            prev_hash: writer.head(),
        });
        if is_checkpoint_step(step, total, interval) {
            writer.checkpoint(state, hashes, root).expect("checkpoint");
        }
    }
    let completion = Completion {
        run_id: manifest.run_id.clone(),
        final_step: total,
        segments: segment_ending_at(total, interval),
        ledger_head: writer.head(),
        final_state_root: last_root,
    };
    let bytes = completion.to_json();
    store
        .put_new(layout::COMPLETE, bytes.clone())
        .expect("completion");
    if let Some(sig) = writer.signer() {
        sig.sign(
            &store,
            layout::COMPLETE,
            kind::COMPLETION,
            total,
            file_hash(&bytes),
        )
        .expect("sign completion");
    }
}

/// Replace checkpoint `step` of the local run at `run` by a snapshot of `meta` and `tensors`,
/// and rewrite the ledger consistently (its record of `step` commits to the new root, the chain
/// and the completion record follow): a swap only replay can tell. Returns the new root.
pub fn replace_checkpoint(
    run: &Path,
    step: u64,
    meta: &snapshot_format::snapshot::StateMeta,
    provenance: &snapshot_format::snapshot::Provenance,
    tensors: &[snapshot_format::snapshot::TensorView<'_>],
) -> snapshot_format::Hash32 {
    use snapshot_format::{layout, snapshot};
    // Later checkpoints stored as deltas would no longer reconstruct: the adversary stores
    // them whole, with the same states (their roots, and so the ledger, unchanged).
    let later: Vec<snapshot::Snapshot> = run_store::testing::checkpoint_roots(run)
        .iter()
        .filter_map(|(name, _)| layout::parse_checkpoint(&format!("{}{name}", layout::CHECKPOINTS)))
        .filter(|&s| s > step)
        .map(|s| run_store::testing::checkpoint(run, s))
        .collect();
    let forged =
        snapshot::encode(meta, provenance, tensors, None, Default::default()).expect("encode");
    std::fs::write(run.join(layout::checkpoint(step)), forged.to_vec())
        .expect("replace checkpoint");
    for snap in later {
        let whole = snapshot::encode(
            &snap.header.state,
            &snap.header.provenance,
            &snap.views(),
            None,
            Default::default(),
        )
        .expect("encode");
        std::fs::write(
            run.join(layout::checkpoint(snap.header.state.step)),
            whole.to_vec(),
        )
        .expect("store whole");
    }
    run_store::testing::rewrite_ledger(run, |rec| {
        if rec.step == step {
            rec.state_root = Some(forged.state_root);
        }
    })
    .expect("rewrite ledger");
    forged.state_root
}

/// The state stored in checkpoint `step` of the local run at `run`.
pub fn stored_state(run: &Path, step: u64) -> trainer::session::TrainingState {
    replay::engine::reexecute::state_of(&run_store::testing::checkpoint(run, step))
}

/// Add `delta` to element `index` of tensor `name` of `state`.
pub fn nudge(state: &mut trainer::session::TrainingState, name: &str, index: usize, delta: f32) {
    let t = state
        .tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let mut v: Vec<f32> = t.data.to_vec().expect("f32");
    v[index] += delta;
    t.data =
        burn::tensor::TensorData::new(v, t.shape.iter().map(|&d| d as usize).collect::<Vec<_>>());
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
    /// Start moto's S3 server, one request at a time (`tests/moto_server.py`: moto's own
    /// threaded server lets two conditional creates of one key through under load), with the
    /// Python of `$MOTO_PYTHON` or the workspace's `.venv` (which `scripts/setup-test-env.sh`,
    /// run by `.ci/run`, installs with moto).
    pub fn start() -> Moto {
        let python = std::env::var_os("MOTO_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join(".venv/bin/python"));
        assert!(
            python.exists(),
            "no Python with moto at {}: run scripts/setup-test-env.sh (or set MOTO_PYTHON)",
            python.display()
        );
        let mut child = Command::new(&python)
            .arg(workspace().join("tests/moto_server.py"))
            .args(["127.0.0.1", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto's S3 server");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("moto's S3 server exited before printing its address")
                .expect("read the S3 server's output");
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

    /// Send one HTTP request without a body; the whole response.
    fn request(&self, method: &str, target: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        assert!(
            response.starts_with("HTTP/1.") && response.split_whitespace().nth(1) == Some("200"),
            "{method} {target}: {response}"
        );
        response
    }

    /// Create a bucket (an HTTP PUT on `/<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        self.request("PUT", &format!("/{bucket}"));
    }

    /// The keys stored in `bucket` under `prefix` as the server holds them (up to 1,000),
    /// bypassing the storage layer.
    pub fn raw_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let response = self.request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"));
        response
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
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

/// A one-node Slurm cluster (Debian's slurm-wlm, with munge for authentication) whose daemons,
/// configuration and state live in a temporary directory; stopped on drop.
/// `scripts/setup-test-env.sh` installs the packages.
#[derive(Debug)]
pub struct Slurm {
    daemons: Vec<Child>,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Slurm {
    /// Start munged, slurmctld and slurmd (in the foreground, as this process's children) and
    /// wait until the node is idle.
    pub fn start() -> Slurm {
        let dir = tempfile::tempdir().expect("slurm directory");
        let d = dir.path();
        // munged refuses a socket under a directory others cannot traverse.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir(d.join(sub)).expect("slurm directory");
        }
        let key = d.join("munge/munge.key");
        // The cluster is private to this test (loopback, its own socket): the key's secrecy
        // does not matter, munged only needs one of at least 32 bytes, readable by its owner only.
        let bytes = [0x5au8; 1024];
        std::fs::write(&key, bytes).expect("munge key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        let socket = d.join("munge/munge.sock");
        let mut daemons = vec![];
        daemons.push(
            Command::new(which("munged"))
                .arg("-F")
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    d.join("munge/munged.pid").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    d.join("munge/munged.log").display()
                ))
                .arg(format!("--seed-file={}", d.join("munge/seed").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start munged"),
        );
        wait_for(|| socket.exists(), "munged's socket");

        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .expect("user name");
        // slurmctld runs only on the host its configuration names; the node takes any name.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
        let host = host
            .trim()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let node = "replaynode";
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let conf = d.join("slurm.conf");
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=replaytest\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
                 SlurmUser={user}\nSlurmdUser={user}\n\
                 AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
                 StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
                 SlurmctldPidFile={ctld_pid}\nSlurmdPidFile={slurmd_pid}\n\
                 SlurmctldLogFile={ctld_log}\nSlurmdLogFile={slurmd_log}\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
                 ReturnToService=2\nMpiDefault=none\nJobRequeue=1\nMailProg=/bin/true\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                user = user.trim(),
                socket = socket.display(),
                state = p("state"),
                spool = p("spool"),
                ctld_pid = p("slurmctld.pid"),
                slurmd_pid = p("slurmd.pid"),
                ctld_log = p("log/slurmctld.log"),
                slurmd_log = p("log/slurmd.log"),
            ),
        )
        .expect("slurm.conf");
        let daemon = |exe: &str, args: &[&str]| {
            Command::new(which(exe))
                .args(args)
                .env("SLURM_CONF", &conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {exe}: {e}"))
        };
        daemons.push(daemon("slurmctld", &["-D", "-i"]));
        daemons.push(daemon("slurmd", &["-D", "-N", node]));
        let slurm = Slurm {
            daemons,
            conf,
            _dir: dir,
        };
        wait_for(
            || {
                let out = slurm.command("sinfo").args(["-h", "-o", "%T"]).output();
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
            },
            "the Slurm node to be idle",
        );
        slurm
    }

    /// A Slurm client command (`sbatch`, `squeue`, `scancel`, …) talking to this cluster.
    pub fn command(&self, exe: &str) -> Command {
        let mut c = Command::new(which(exe));
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Run a client command, which must succeed; its standard output.
    pub fn run(&self, exe: &str, args: &[&str]) -> String {
        let out = self
            .command(exe)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{exe}: {e}"));
        assert!(
            out.status.success(),
            "{exe} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until no task of job `id` is pending or running.
    pub fn wait(&self, id: &str) {
        wait_for(
            || self.run("squeue", &["-h", "-j", id, "-o", "%i"]).is_empty(),
            "the Slurm job to finish",
        );
    }
}

impl Drop for Slurm {
    /// slurmd, slurmctld, then munged: each asked to stop (SIGTERM, so that slurmctld reaps its
    /// helper), killed if it has not within 10 s.
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while d.try_wait().is_ok_and(|s| s.is_none()) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// The path of system program `exe` (Slurm's daemons live in /usr/sbin).
fn which(exe: &str) -> PathBuf {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| Path::new(d).join(exe))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{exe} not found: run scripts/setup-test-env.sh (Debian's slurm-wlm and munge)")
        })
}

/// A TCP port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Poll `ready` every 100 ms for at most 60 s.
fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
