//! Errors of the engine: each names the file, line, key or object that is wrong.

/// Result alias of the trainer crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong configuring, running or resuming a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is missing, malformed, or has an invalid value.
    #[error("{path}: {detail}")]
    Config { path: String, detail: String },
    /// A dataset row does not parse or does not fit the configuration.
    #[error("{path}:{line}: {detail}")]
    DatasetRow {
        path: String,
        line: u64,
        detail: String,
    },
    /// The dataset as a whole is unusable (unreadable, empty, too small for one batch).
    #[error("{path}: {detail}")]
    Dataset { path: String, detail: String },
    /// The base model's hash differs from the one pinned in the configuration.
    #[error(
        "{path}: base model BLAKE3 {found} does not match the pinned {pinned}; refusing to train on unverified weights"
    )]
    BaseModelHashMismatch {
        path: String,
        pinned: String,
        found: String,
    },
    /// The base model cannot be read or does not fit the model.
    #[error("{path}: {detail}")]
    BaseModel { path: String, detail: String },
    /// The output store already holds a run.
    #[error("{store}: already holds a run ({key} exists); choose another output location")]
    RunExists { store: String, key: String },
    /// The run cannot be resumed or replayed as recorded.
    #[error("{store}: {detail}")]
    Run { store: String, detail: String },
    /// This machine is not in the run's environment class.
    #[error(
        "environment class differs from the run's: {}",
        differences.iter().map(|(f, run, here)| format!("{f}: run {run:?}, here {here:?}")).collect::<Vec<_>>().join("; ")
    )]
    EnvironmentMismatch {
        differences: Vec<(String, String, String)>,
    },
    /// A device that cannot be used (not compiled in, or absent).
    #[error("device {device:?}: {detail}")]
    Device { device: String, detail: String },
    /// An artefact or the store failed.
    #[error(transparent)]
    Format(#[from] snapshot_format::Error),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for a configuration error about `path`.
    pub fn config(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
