//! Rules shared by the configuration's sections: serde defaults several sections use, and
//! the checks of a value's range, each naming the key it checks.

pub(crate) fn default_init_std() -> f64 {
    0.02
}
pub(crate) fn default_dropout() -> f64 {
    0.1
}
pub(crate) fn positive(key: &str, v: u64) -> std::result::Result<(), String> {
    if v == 0 {
        Err(format!("{key}: must be at least 1"))
    } else {
        Ok(())
    }
}
pub(crate) fn probability(key: &str, v: f64) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{key}: must be within [0, 1)"))
    }
}
pub(crate) fn finite_positive(key: &str, v: f64) -> std::result::Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{key}: must be a positive finite number"))
    }
}
