//! The custom-model example trains, records, and is deterministic.

#[path = "../examples/custom_model.rs"]
mod example;

#[test]
fn custom_model_example_records_identical_runs() {
    let t = tempfile::tempdir().expect("tmp");
    let (a, b) = example::run_twice(t.path()).expect("example runs");
    assert!(a.completed && b.completed);
    assert_eq!(a.final_step, 40);
    assert_eq!((a.ledger_head, a.state_root), (b.ledger_head, b.state_root));
    assert!(a.last_loss < 0.69, "the model learns: loss {}", a.last_loss);
    assert_eq!(
        a.init.initialized,
        ["embeddings.weight", "head.weight", "head.bias"],
        "canonical names come from the module's field names"
    );
}
