//! A line diff for showing where two command transcripts part ways.

/// Above this many lines on either side the diff falls back to listing the
/// first differing line, to keep the quadratic table small.
const DIFF_LINES_MAX: usize = 4000;

/// Lines prefixed ` ` (both), `-` (only in `left`) or `+` (only in `right`),
/// from a longest-common-subsequence alignment. Empty when equal.
pub fn line_diff(left: &str, right: &str) -> String {
    let left: Vec<&str> = left.lines().collect();
    let right: Vec<&str> = right.lines().collect();
    if left == right {
        return String::new();
    }
    if left.len() > DIFF_LINES_MAX || right.len() > DIFF_LINES_MAX {
        let first = left
            .iter()
            .zip(&right)
            .position(|(a, b)| a != b)
            .unwrap_or(left.len().min(right.len()));
        return format!(
            "first difference at line {}:\n-{}\n+{}\n",
            first + 1,
            left.get(first).unwrap_or(&"<end>"),
            right.get(first).unwrap_or(&"<end>")
        );
    }
    // common[i][j]: length of the longest common subsequence of left[i..] and right[j..].
    let mut common = vec![vec![0usize; right.len() + 1]; left.len() + 1];
    for i in (0..left.len()).rev() {
        for j in (0..right.len()).rev() {
            common[i][j] = if left[i] == right[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        if i < left.len() && j < right.len() && left[i] == right[j] {
            out.push_str(&format!(" {}\n", left[i]));
            i += 1;
            j += 1;
        } else if i < left.len() && (j == right.len() || common[i + 1][j] >= common[i][j + 1]) {
            out.push_str(&format!("-{}\n", left[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", right[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn equal_text_has_no_diff() {
        assert_eq!(line_diff("a\nb\n", "a\nb\n"), "");
    }

    #[test]
    fn shows_changed_added_and_removed_lines() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nB\nc\nd\n"), " a\n-b\n+B\n c\n+d\n");
    }
}
