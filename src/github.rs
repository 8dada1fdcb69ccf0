//! GitHub Actions glue: workflow commands (`::add-mask::`, `::group::`, `::error::`), and later
//! `$GITHUB_OUTPUT` and the step summary.
//!
//! Workflow commands go to stderr: the runner parses commands on both streams of a `run:` step
//! (its script handler feeds stdout and stderr to the same command processor), and stdout stays
//! reserved for the result (`repository@digest` or the `--json` report).

/// Tells the runner to hide `value` in every log line from now on.
pub fn add_mask(value: &str) {
    // A multi-line secret is masked line by line, as the runner itself does.
    for line in value.lines().filter(|line| !line.trim().is_empty()) {
        eprintln!("::add-mask::{}", escape_data(line));
    }
}

/// Escaping for the data part of a workflow command.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}
