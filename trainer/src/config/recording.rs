//! `[recording]`: checkpoints, state roots and the checkpoint codec.

use serde::{Deserialize, Serialize};

/// `[recording]`: does not change the bits of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Codec of checkpoint tensors: zstd, planes (byte-grouped zstd) or raw (no decoding).
    #[serde(default)]
    pub codec: snapshot_format::manifest::CheckpointCodec,
    /// State root in the ledger every this many steps (and at every checkpoint). Default:
    /// every step for models under [`LARGE_MODEL_PARAMETERS`], every
    /// [`LARGE_MODEL_STATE_ROOT_INTERVAL`] steps above.
    #[serde(default)]
    pub state_root_interval: Option<u64>,
}
/// Models with at least this many parameters get a sparser default state-root interval.
pub const LARGE_MODEL_PARAMETERS: u64 = 50_000_000;
/// The default state-root interval of large models.
pub const LARGE_MODEL_STATE_ROOT_INTERVAL: u64 = 10;
impl RecordingSection {
    /// The state-root interval for a model of `parameters` parameters.
    pub fn state_root_interval_for(&self, parameters: u64) -> u64 {
        self.state_root_interval
            .unwrap_or(if parameters < LARGE_MODEL_PARAMETERS {
                1
            } else {
                LARGE_MODEL_STATE_ROOT_INTERVAL
            })
    }
}
impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            checkpoint_interval: default_checkpoint_interval(),
            codec: Default::default(),
            state_root_interval: None,
        }
    }
}
fn default_checkpoint_interval() -> u64 {
    50
}
