//! Node-name patterns: the one shell-style glob matcher behind qconfig `[[node]] match = "..."`
//! rules ([`crate::quantize::Pattern::Glob`]) and precision overrides' `force_fp32` list
//! ([`crate::precision::PrecisionPolicy::forced_fp32`]).
//!
//! A pattern matches a whole name. `*` matches any run of characters, also none and also `/`
//! (so `/backbone/*` covers every node under `/backbone/`); `?` matches exactly one character (a
//! Unicode scalar value, not a byte); every other character matches itself. There are no
//! character classes, braces or escapes: `[`, `]`, `{`, `}` and `\` are ordinary characters, as
//! ONNX node names may contain them. (A crate such as `globset` would give them meaning and make
//! `*` stop at `/` when asked; neither suits node names.)

/// Whether `name` matches `pattern` as a whole (see the module docs). Iterative, backtracking
/// only to the last `*`: `O(pattern * name)` at worst.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // After a `*`: where the pattern resumes and where the star's run ends in the name.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ni));
            pi += 1;
        } else if let Some((resume, end)) = star {
            // let the last star take one more character and retry
            star = Some((resume, end + 1));
            pi = resume;
            ni = end + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    /// (pattern, name, matches): the cases the precision policy's and the qconfig's matchers
    /// (two copies before this module) were tested with, and the edges between them.
    const CASES: &[(&str, &str, bool)] = &[
        // whole-name matching
        ("/backbone/conv1/Conv", "/backbone/conv1/Conv", true),
        ("/backbone/conv1/Conv", "/backbone/conv1/Conv_1", false),
        ("a", "ab", false),
        ("ab", "a", false),
        ("", "", true),
        ("", "a", false),
        // `*`: any run, also none, also across `/`
        ("*", "", true),
        ("*", "/backbone/conv1/Conv", true),
        ("/backbone/*", "/backbone/conv1/Conv", true),
        ("/backbone/*", "/backbone/", true),
        ("/backbone/*", "/backbone", false),
        ("/neck/*", "/backbone/conv1/Conv", false),
        ("*Conv", "/backbone/conv1/Conv", true),
        ("*Softmax", "/attn/Softmax", true),
        ("*Softmax", "/attn/Softmax_1", false),
        ("/a/*/b", "/a/x/y/b", true),
        ("/attn/*", "/attn/MatMul", true),
        ("*/head/Gemm", "/model/head/Gemm", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("a*b*c", "abc", true),
        ("**x*", "axb", true),
        ("*a", "aaa", true),
        ("*ab", "aab", true),
        // `?`: exactly one character
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("a?c", "abbc", false),
        ("/b?ck*/*/Conv", "/back/x/Conv", true),
        ("/layer?/Conv", "/layer1/Conv", true),
        ("?", "", false),
        // one character, not one byte: the qconfig matcher compared bytes, so `?` never matched
        // a non-ASCII character there (the precision policy's matcher compared characters)
        ("/bloc?/Conv", "/bloc\u{e9}/Conv", true),
        ("/\u{e9}tage/*", "/\u{e9}tage/Conv", true),
        ("??", "\u{e9}", false),
        // no character classes, braces or escapes: literal characters
        ("/layers[0]/Conv", "/layers[0]/Conv", true),
        ("/layers[0]/Conv", "/layers0/Conv", false),
        ("/layers[01]/*", "/layers1/Conv", false),
        ("{a,b}", "{a,b}", true),
        ("{a,b}", "a", false),
        ("a\\*", "a\\x", true),
    ];

    #[test]
    fn glob_table() {
        for &(pattern, name, want) in CASES {
            assert_eq!(glob_match(pattern, name), want, "glob_match({pattern:?}, {name:?})");
        }
    }
}
