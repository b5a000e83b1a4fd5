//! What more than one of this crate's test binaries needs.

use monza_domain::Template;

/// The labels of a template's lifecycle commands, in the order they run.
pub fn hook_labels(template: &Template) -> Vec<&str> {
    template
        .lifecycle_commands
        .iter()
        .map(|c| c.label.as_str())
        .collect()
}
