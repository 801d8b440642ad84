//! README.md stays true to the tree: its layout block names paths that exist and every folder
//! and file directly under `src/`, and every relative link in README.md and docs/*.md resolves
//! (a `#heading` included). A README that drifts from the code misleads the next reader more
//! than no README at all, so these checks run with every `make test`.
//!
//! The layout block is the fenced block under the `## Layout` heading. Each line of it that
//! does not start with whitespace starts with a path (`src/proxy/` for a folder, `src/lib.rs`
//! for a file); lines starting with whitespace continue the line above.
//!
//! Std only: the checks read files and nothing else.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The package root, where README.md and docs/ live.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Lines of `text` outside fenced code blocks, with their fence state already applied.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut in_fence = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            return false;
        }
        !in_fence
    })
}

/// The lines of the first fenced block under `## Layout` (before the next `## ` heading), or
/// `None` when there is no such block or it is never closed.
fn layout_block(readme: &str) -> Option<Vec<&str>> {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim_end() != "## Layout")
        .skip(1);
    loop {
        let line = lines.next()?;
        if line.starts_with("## ") {
            return None;
        }
        if line.starts_with("```") {
            break;
        }
    }
    let mut block = Vec::new();
    for line in lines {
        if line.starts_with("```") {
            return Some(block);
        }
        block.push(line);
    }
    None
}

/// The path each layout line starts with (continuation lines and blank lines name none).
fn layout_paths<'a>(block: &[&'a str]) -> Vec<&'a str> {
    block
        .iter()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// What is wrong with README's layout block against the tree at `root`: paths it names that
/// do not exist (a name ending in `/` must be a folder, any other a file), and folders and
/// `.rs` files directly under `src/` it does not name.
fn layout_problems(root: &Path, readme: &str) -> Vec<String> {
    let Some(block) = layout_block(readme) else {
        return vec!["README.md has no closed fenced block under `## Layout`".to_string()];
    };
    let named = layout_paths(&block);
    let mut problems = Vec::new();
    for path in &named {
        let on_disk = root.join(path.trim_end_matches('/'));
        let exists = if path.ends_with('/') {
            on_disk.is_dir()
        } else {
            on_disk.is_file()
        };
        if !exists {
            problems.push(format!(
                "README's layout names `{path}`, which does not exist"
            ));
        }
    }
    let named: BTreeSet<&str> = named.into_iter().collect();
    let entries = match fs::read_dir(root.join("src")) {
        Ok(entries) => entries,
        Err(e) => return vec![format!("cannot list src/: {e}")],
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let expected = if entry.path().is_dir() {
            format!("src/{name}/")
        } else if entry.path().extension().is_some_and(|e| e == "rs") {
            format!("src/{name}")
        } else {
            continue;
        };
        if !named.contains(expected.as_str()) {
            problems.push(format!(
                "`{expected}` exists but README's layout block does not name it"
            ));
        }
    }
    problems.sort();
    problems
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading in a markdown text (repeated headings get `-1`, `-2`, …).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let base = slug(title);
        let mut anchor = base.clone();
        let mut n = 0;
        while found.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        found.insert(anchor);
    }
    found
}

/// The targets of the inline links `[text](target)` outside code blocks.
fn link_targets(text: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else {
                break;
            };
            targets.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    targets
}

/// What is wrong with the relative links of the markdown file `file`: targets that do not
/// exist, and `#anchors` that name no heading of the markdown file they point to.
fn link_problems(file: &Path) -> Vec<String> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => return vec![format!("cannot read {}: {e}", file.display())],
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    for target in link_targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target, None),
        };
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !resolved.exists() {
            problems.push(format!(
                "{}: link `{target}` points to {}, which does not exist",
                file.display(),
                resolved.display()
            ));
            continue;
        }
        let Some(anchor) = anchor else {
            continue;
        };
        if resolved.extension().is_some_and(|e| e == "md") {
            let heads = fs::read_to_string(&resolved)
                .map(|t| anchors(&t))
                .unwrap_or_default();
            if !heads.contains(anchor) {
                problems.push(format!(
                    "{}: link `{target}` names no heading of {}",
                    file.display(),
                    resolved.display()
                ));
            }
        }
    }
    problems
}

/// README.md and every docs/*.md under `root`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    if let Ok(entries) = fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

/// docs/*.md files that README does not link to (its list of documents must be complete).
fn unlisted_docs(root: &Path, readme: &str) -> Vec<String> {
    let linked: BTreeSet<&str> = link_targets(readme)
        .into_iter()
        .map(|t| t.split('#').next().unwrap_or(t))
        .collect();
    markdown_files(root)
        .into_iter()
        .skip(1)
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let target = format!("docs/{name}");
            (!linked.contains(target.as_str()))
                .then(|| format!("README.md does not link to `{target}`"))
        })
        .collect()
}

fn assert_none(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

fn readme_text(root: &Path) -> String {
    fs::read_to_string(root.join("README.md")).expect("README.md is readable")
}

#[test]
fn layout_names_existing_paths_and_every_src_entry() {
    let root = root();
    assert_none(
        "README.md's layout block is out of date",
        &layout_problems(&root, &readme_text(&root)),
    );
}

#[test]
fn readme_lists_every_doc() {
    let root = root();
    assert_none(
        "README.md's list of documents is incomplete",
        &unlisted_docs(&root, &readme_text(&root)),
    );
}

#[test]
fn relative_links_resolve() {
    let problems: Vec<String> = markdown_files(&root())
        .iter()
        .flat_map(|f| link_problems(f))
        .collect();
    assert_none("broken relative links", &problems);
}

/// A scratch tree for the checks' own tests, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("readme-check-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src/proxy")).expect("scratch src/proxy");
        fs::create_dir_all(dir.join("src/edge")).expect("scratch src/edge");
        fs::create_dir_all(dir.join("docs")).expect("scratch docs");
        fs::write(dir.join("src/lib.rs"), "").expect("scratch lib.rs");
        Scratch(dir)
    }

    fn write(&self, path: &str, text: &str) -> PathBuf {
        let p = self.0.join(path);
        fs::write(&p, text).expect("scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SAMPLE: &str = "# x\n\n## Layout\n\ntext\n\n```\nsrc/lib.rs     the library\nsrc/proxy/     the phases,\n                continued\nsrc/bogus.rs   not there\n```\n\n## Next\n";

#[test]
fn layout_check_reports_a_missing_path_and_an_unnamed_folder() {
    let s = Scratch::new("layout");
    let problems = layout_problems(&s.0, SAMPLE);
    assert_eq!(
        problems,
        vec![
            "README's layout names `src/bogus.rs`, which does not exist".to_string(),
            "`src/edge/` exists but README's layout block does not name it".to_string(),
        ],
    );
    let fixed = SAMPLE.replace("src/bogus.rs   not there", "src/edge/      the edge");
    assert_eq!(layout_problems(&s.0, &fixed), Vec::<String>::new());
    // A folder named as a file (or the reverse) is a wrong name too.
    let wrong_kind = fixed.replace("src/lib.rs ", "src/lib.rs/");
    assert_eq!(layout_problems(&s.0, &wrong_kind).len(), 2, "{wrong_kind}");
}

#[test]
fn layout_check_reports_a_missing_block() {
    let s = Scratch::new("noblock");
    let problems = layout_problems(&s.0, "# x\n\n## Layout\n\nno block\n\n## Next\n```\n```\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("no closed fenced block"),
        "{problems:?}"
    );
}

#[test]
fn link_check_reports_missing_files_and_anchors() {
    let s = Scratch::new("links");
    s.write(
        "docs/A.md",
        "# A\n\n## Serving HTTPS\n\n```\n## not a heading\n```\n",
    );
    let readme = s.write(
        "README.md",
        "[a](docs/A.md) [b](docs/A.md#serving-https) [c](docs/Gone.md) \
         [d](docs/A.md#not-a-heading) [e](https://example.com/x.md) `x`\n\
         ```\n[in code](docs/Nope.md)\n```\n",
    );
    let problems = link_problems(&readme);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("`docs/Gone.md`"), "{problems:?}");
    assert!(
        problems[1].contains("`docs/A.md#not-a-heading`"),
        "{problems:?}"
    );
    let doc = s.write(
        "docs/B.md",
        "[up](../README.md) [no](../Nope.md) [self](#b)\n\n# B\n",
    );
    let problems = link_problems(&doc);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`../Nope.md`"), "{problems:?}");
    let unlisted = unlisted_docs(&s.0, &fs::read_to_string(&readme).expect("sample"));
    assert_eq!(
        unlisted,
        vec!["README.md does not link to `docs/B.md`".to_string()]
    );
}

#[test]
fn slugs_match_github_anchors() {
    assert_eq!(
        slug(" Live configuration (reload without a restart)"),
        "live-configuration-reload-without-a-restart"
    );
    assert_eq!(
        slug(" Purging the cache: the admin API"),
        "purging-the-cache-the-admin-api"
    );
    assert_eq!(slug(" `gateway -t` and Ctx"), "gateway--t-and-ctx");
    let found = anchors("# A\n## A\n```\n# B\n```\n#nope\n");
    assert_eq!(
        found,
        ["a", "a-1"].iter().map(ToString::to_string).collect()
    );
}
