//! Sharded verification on a real scheduler: a one-node Slurm cluster (Debian's slurm-wlm) runs
//! `examples/cluster/verify-shards.sbatch` as a job array, each task verifying one shard of a run
//! and keeping its signed report in the verifier's results store (a shared directory, and S3 on
//! moto); `replay collect` merges them. A cancelled task is a missing shard; resubmitting it
//! completes the set; a task requeued after its shard reported is refused and the recorded
//! report left as it is. Training data-parallel under the same cluster (`srun -n 2`, MPI through
//! Slurm's PMIx plugin) records the single-process run's bits. And the Kubernetes Indexed Job
//! that `examples/cluster` writes, its pods' command run once per completion index.

use std::path::Path;

use e2e_tests::{Moto, Slurm, binary, keygen, replay_json_with, s, train, workspace};
use replay::Verdict;
use replay::commands::collect::CollectReport;
use replay::commands::verify::VerifyReport;
use trainer::fixtures::{self, FixtureOptions};

const SHARDS: &str = "3";

/// `sbatch --parsable ARGS… verify-shards.sbatch RUN 3 RESULTS ID KEY`, with the workspace's
/// replay binary and `env`: the job id.
fn submit(
    slurm: &Slurm,
    sbatch: &[&str],
    job: [&str; 4],
    out: &Path,
    env: &[(String, String)],
) -> String {
    let script = workspace().join("examples/cluster/verify-shards.sbatch");
    let output = format!("{}/shard-%a-%j.out", s(out));
    let [run, results, id, key] = job;
    let mut args = vec!["--parsable", "-o", &output];
    args.extend_from_slice(sbatch);
    args.extend([s(&script), run, SHARDS, results, id, key]);
    let mut c = slurm.command("sbatch");
    c.args(&args)
        .env("REPLAY", binary("replay"))
        .envs(env.iter().cloned());
    let o = c.output().expect("sbatch");
    assert!(
        o.status.success(),
        "sbatch {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn collect(
    run: &Path,
    results: &str,
    id: &str,
    key: &str,
    env: &[(String, String)],
    exit: i32,
) -> CollectReport {
    replay_json_with(
        &[
            "collect",
            s(run),
            "--shards",
            SHARDS,
            "--id",
            id,
            "--results",
            results,
            "--verifier-key",
            key,
        ],
        exit,
        env,
    )
}

#[test]
fn a_slurm_job_array_verifies_a_run_in_shards_and_collect_names_a_cancelled_one() {
    let t = tempfile::tempdir().expect("tmp");
    // 12 steps, checkpoints every 4: three segments, one per shard.
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let run = t.path().join("run");
    train(&cfg, &run, &["--run-id", "sharded"]);
    let (key, public) = keygen(&t.path().join("verifier"));
    let logs = t.path().join("logs");
    std::fs::create_dir(&logs).expect("logs");
    let slurm = Slurm::start();

    // A shared directory. Shard 1 is cancelled before it runs.
    let results = t.path().join("results");
    let id = "5d1c0b7e9a2f4368";
    let job = [s(&run), s(&results), id, s(&key)];
    let array = submit(&slurm, &["--hold", "--array=0-2"], job, &logs, &[]);
    slurm.run("scancel", &[&format!("{array}_1")]);
    slurm.run("scontrol", &["release", &array]);
    slurm.wait(&array);
    let c = collect(&run, s(&results), id, &public, &[], 2);
    assert_eq!(c.header.verdict, Verdict::Missing);
    assert_eq!(c.shards_present, vec![0, 2]);
    assert!(
        c.header
            .problems
            .iter()
            .any(|p| p.artefact.ends_with("shard-1-of-3.json") && p.detail.contains("not reported")),
        "the missing shard is named: {:?}",
        c.header.problems
    );

    // The missing shard resubmitted alone completes the set.
    let again = submit(&slurm, &["--array=1", "--wait"], job, &logs, &[]);
    slurm.wait(&again);
    let c = collect(&run, s(&results), id, &public, &[], 0);
    assert_eq!(c.header.verdict, Verdict::Verified);
    assert_eq!(c.shards_present, vec![0, 1, 2]);
    assert_eq!(c.segments.len(), 3);
    assert!(c.segments.iter().all(|(_, v)| *v == Verdict::Verified));

    // Shard 0 requeued after it reported: the task is refused (exit 3) before replaying, and the
    // recorded report is the one collect still merges.
    let report = results.join(format!("verifications/{id}/shard-0-of-3.json"));
    let before = std::fs::read(&report).expect("shard 0's report");
    let shard0: VerifyReport = serde_json::from_slice(&before).expect("a verify report");
    assert_eq!(shard0.header.verdict, Verdict::Verified);
    let rerun = submit(&slurm, &["--array=0"], job, &logs, &[]);
    slurm.wait(&rerun);
    let state = slurm.run("scontrol", &["show", "job", &rerun]);
    assert!(
        state.contains("ExitCode=3:0"),
        "refused with exit 3: {state}"
    );
    assert_eq!(std::fs::read(&report).expect("report"), before);
    collect(&run, s(&results), id, &public, &[], 0);

    // The same array with its reports in S3 (moto), the store's settings in the tasks' environment.
    let moto = Moto::start();
    moto.create_bucket("verifier");
    let env = moto.env();
    let (bucket, id) = ("s3://verifier/results", "a7e3f09c21d84b65");
    let array = submit(
        &slurm,
        &["--array=0-2", "--wait"],
        [s(&run), bucket, id, s(&key)],
        &logs,
        &env,
    );
    slurm.wait(&array);
    let c = collect(&run, bucket, id, &public, &env, 0);
    assert_eq!(c.header.verdict, Verdict::Verified);
    assert_eq!(c.shards_present, vec![0, 1, 2]);
    let keys = moto.raw_keys("verifier", "results/verifications/");
    assert_eq!(
        keys.len(),
        6,
        "three reports and their signatures: {keys:?}"
    );
}

/// The Kubernetes Indexed Job that `examples/cluster/k8s-indexed-job.sh` writes: its pods' command,
/// run here once per completion index as Kubernetes would run it (`JOB_COMPLETION_INDEX` set, the
/// key mounted from its Secret), collects to `verified`. (No cluster runs here; the manifest's
/// shape is checked field by field.)
#[test]
fn the_kubernetes_indexed_job_runs_one_shard_per_completion_index() {
    let t = tempfile::tempdir().expect("tmp");
    let cfg = fixtures::write_tiny_bert(&t.path().join("in"), &FixtureOptions::default())
        .expect("fixture");
    let run = t.path().join("run");
    train(&cfg, &run, &["--run-id", "indexed"]);
    let (key, public) = keygen(&t.path().join("verifier"));
    let results = t.path().join("results");
    let id = "0f6e2d9c8b7a4153";
    let script = workspace().join("examples/cluster/k8s-indexed-job.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args([
            s(&run),
            SHARDS,
            s(&results),
            id,
            "ghcr.io/example/replay:1",
            "verifier-key",
        ])
        .output()
        .expect("k8s-indexed-job.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON manifest");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 3);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "verifier-key");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("mount path");
    let command: Vec<String> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("string argument").to_string())
        .collect();
    assert_eq!(command[0], "replay");
    let key_in_pod = format!("{mount}/signing-key.pem");
    for index in 0..3 {
        let args: Vec<&str> = command[1..]
            .iter()
            .map(|a| {
                if *a == key_in_pod {
                    s(&key)
                } else {
                    a.as_str()
                }
            })
            .collect();
        let o = std::process::Command::new(binary("replay"))
            .args(&args)
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .output()
            .expect("replay");
        assert_eq!(
            o.status.code(),
            Some(0),
            "pod {index}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let c = collect(&run, s(&results), id, &public, &[], 0);
    assert_eq!(c.header.verdict, Verdict::Verified);
    assert_eq!(c.shards_present, vec![0, 1, 2]);
}
