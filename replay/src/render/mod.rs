//! Every human-readable output of `replay`: the reports as text ([`text`]), the loss curve as
//! text rows and SVG ([`chart`]), the investigation report as Markdown and HTML
//! ([`investigation`]). JSON is the reports themselves, serialised.

pub mod chart;
pub mod investigation;
pub mod text;
