//! What a start-up error shows of a process's log: its path and the last
//! lines of the run that failed, so that a failure on CI (where the log
//! file is gone with the machine) says why without the file.

use std::path::Path;

/// How many of the run's last lines an error carries.
const LINES: usize = 20;

/// `path`, then the last lines written since byte `from` (this run's, in a
/// log a restart appends to).
pub(crate) fn describe(path: &Path, from: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let run = text.get(from..).unwrap_or(&text);
    format!(
        "{}; its last lines:\n{}",
        path.display(),
        last_lines(run, LINES)
    )
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines_of_the_run() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&text, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert_eq!(last_lines("one\n", 3), "one");
    }

    #[test]
    fn reads_from_where_the_run_started() {
        let path = std::env::temp_dir().join(format!("log-tail-{}.log", uuid::Uuid::new_v4()));
        std::fs::write(&path, "old run\nnew run: cannot listen on port 1\n").unwrap();
        let described = describe(&path, "old run\n".len());
        std::fs::remove_file(&path).unwrap();
        assert!(described.ends_with("its last lines:\nnew run: cannot listen on port 1"));
        assert!(!described.contains("old run"));
    }
}
