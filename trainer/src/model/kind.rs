//! What the engine knows of a model kind's configuration, beside the model's code: how it is
//! validated, what data it takes, and how many parameters it builds (checked against built
//! models by a test). A new model kind is its folder or file under `model/`, its configuration
//! implementing [`ModelKind`], and one variant of `config::ModelSpec`.

/// A model kind's configuration.
pub trait ModelKind {
    /// Check every value, naming the first key that is out of range.
    fn validate(&self) -> Result<(), String>;
    /// Number of classes (0 for a language model, whose examples carry no label).
    fn num_labels(&self) -> u64;
    /// Vocabulary size of the tokenizer, for models of text.
    fn vocab_size(&self) -> Option<u64> {
        None
    }
    /// Number of input features, for models of features.
    fn input_size(&self) -> Option<u64> {
        None
    }
    /// Whether the model is a causal language model (trained on `lm` data).
    fn is_language_model(&self) -> bool {
        false
    }
    /// Number of parameters (elements) of the model, computed from the architecture without
    /// building it; `None` when the engine does not know the architecture.
    fn parameter_count(&self) -> Option<u128>;
    /// Number of parameters that are trained and so belong to the training state: all of
    /// them, unless some are frozen (LoRA).
    fn state_parameter_count(&self) -> Option<u128> {
        self.parameter_count()
    }
}

/// Parameters of a linear layer from `i` to `o` features, with bias.
pub fn linear_parameters(i: u64, o: u64) -> u128 {
    u128::from(i) * u128::from(o) + u128::from(o)
}
