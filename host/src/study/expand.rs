//! The study file as written and its expansion into named runs: the grid's
//! points for every variant, the extra runs, and the rules' priorities and tags.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::{LocalSettings, RunSpec, SlurmSettings, Study};
use crate::error::{Error, Result};

/// Short names of the common keys in run names (`lr0.1`, `wd0.001`, `s3`).
const SHORT_KEYS: [(&str, &str); 3] = [
    ("optim.lr", "lr"),
    ("optim.weight_decay", "wd"),
    ("seed", "s"),
];

/// The study file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStudy {
    name: String,
    /// One config for every run.
    base: Option<PathBuf>,
    /// Or several, by variant name.
    #[serde(default)]
    variants: BTreeMap<String, PathBuf>,
    /// Where the study's directory goes (relative to where vigil runs); default `runs`.
    root: Option<PathBuf>,
    /// `--set`s for every run (not part of run names), e.g. the monitors the study reads.
    #[serde(default)]
    set: toml::Table,
    /// Intra-op threads of every run, whichever executor runs it; default: the local
    /// executor's cores divided among its jobs, SLURM's `cpus_per_task`.
    threads: Option<usize>,
    #[serde(default)]
    grid: toml::Table,
    /// Short names for keys in run names, beside the built-in `lr`, `wd` and `s`.
    #[serde(default)]
    short: BTreeMap<String, String>,
    #[serde(default)]
    runs: Vec<RawRun>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    local: LocalSettings,
    #[serde(default)]
    slurm: SlurmSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    variant: Option<String>,
    /// Its own name; default: derived from its variant and settings like a grid run's.
    name: Option<String>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Keys (`variant`, or a grid/`set` key) and the values a run must have; empty matches all.
    #[serde(default, rename = "match")]
    matches: toml::Table,
    priority: Option<i64>,
    #[serde(default)]
    tags: Vec<String>,
}

impl Study {
    /// Read and expand a study file. Relative config paths are taken from the study file's
    /// directory; a relative `root` from the working directory. Nothing of the study's output
    /// directory is read: the `--set`s of `vigil study retry` are applied by
    /// [`super::retry::apply_retries`] (what [`super::open`] does).
    pub fn load(file: &Path) -> Result<Study> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::io(file, source))?;
        let raw: RawStudy = toml::from_str(&text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| crate::config::line_column(&text, span.start))
                .unwrap_or((1, 1));
            Error::Config {
                location: format!("{}:{line}:{column}", file.display()),
                message: err.message().trim().to_string(),
            }
        })?;
        let file = std::path::absolute(file).map_err(|source| Error::io(file, source))?;
        expand(raw, &file)
    }
}

fn expand(raw: RawStudy, file: &Path) -> Result<Study> {
    let bad = |message: String| Error::Config {
        location: file.display().to_string(),
        message,
    };
    if !is_clean_name(&raw.name) {
        return Err(bad(format!(
            "`name = {:?}` must be a non-empty name of letters, digits, `.`, `_` and `-` (it names the study's directory)",
            raw.name
        )));
    }
    let beside = file.parent().unwrap_or(Path::new("."));
    let mut variants: BTreeMap<String, PathBuf> = BTreeMap::new();
    match (&raw.base, raw.variants.is_empty()) {
        (Some(_), false) => {
            return Err(bad(
                "give either `base` (one config) or `variants` (several), not both".into(),
            ))
        }
        (None, true) => {
            return Err(bad(
                "no config: give `base = \"config.toml\"` or `variants = { name = \"config.toml\", … }`"
                    .into(),
            ))
        }
        (Some(base), true) => {
            variants.insert("base".into(), beside.join(base));
        }
        (None, false) => {
            for (name, path) in &raw.variants {
                if !is_clean_name(name) {
                    return Err(bad(format!(
                        "variant name {name:?} must be letters, digits, `.`, `_` and `-`"
                    )));
                }
                variants.insert(name.clone(), beside.join(path));
            }
        }
    }
    for (name, path) in &variants {
        if !path.is_file() {
            return Err(bad(format!(
                "variant `{name}`: config {} not found",
                path.display()
            )));
        }
    }

    // The grid: every key's values, keys in sorted order (TOML tables are sorted maps); the
    // full product.
    let mut grid: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, values) in &raw.grid {
        let values = match values {
            toml::Value::Array(values) if !values.is_empty() => values.clone(),
            _ => {
                return Err(bad(format!(
                    "grid key `{key}` must be a non-empty list of values, e.g. `\"{key}\" = [0.1, 0.2]`"
                )))
            }
        };
        if key == "run_dir" || key == "name" {
            return Err(bad(format!(
                "grid key `{key}` is set by the study for each run; it cannot be varied"
            )));
        }
        grid.push((key.clone(), values));
    }
    let short = |key: &str| -> String {
        raw.short
            .get(key)
            .cloned()
            .or_else(|| {
                SHORT_KEYS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, s)| s.to_string())
            })
            .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(key).replace('_', ""))
    };
    let mut runs = Vec::new();
    for (variant, config) in &variants {
        let mut point = vec![0usize; grid.len()];
        'points: loop {
            let overrides: Vec<(String, toml::Value)> = grid
                .iter()
                .zip(&point)
                .map(|((key, values), &i)| (key.clone(), values[i].clone()))
                .collect();
            let name = derive_name(variant, &overrides, &short);
            runs.push(RunSpec {
                index: 0,
                name,
                variant: variant.clone(),
                config: config.clone(),
                overrides,
                priority: 0,
                tags: Vec::new(),
                retry: Vec::new(),
            });
            // The next grid point, an odometer whose last key turns fastest.
            let mut axis = grid.len();
            loop {
                if axis == 0 {
                    break 'points;
                }
                axis -= 1;
                point[axis] += 1;
                if point[axis] < grid[axis].1.len() {
                    continue 'points;
                }
                point[axis] = 0;
            }
        }
    }
    for (index, extra) in raw.runs.iter().enumerate() {
        let variant = match &extra.variant {
            Some(variant) => variant.clone(),
            None if variants.len() == 1 => variants.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(bad(format!(
                    "runs[{index}] needs `variant`: one of {}",
                    variants.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        let Some(config) = variants.get(&variant) else {
            return Err(bad(format!(
                "runs[{index}]: no variant `{variant}` (the study has {})",
                variants.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let overrides: Vec<(String, toml::Value)> = extra
            .set
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let name = match &extra.name {
            Some(name) if is_clean_name(name) => name.clone(),
            Some(name) => {
                return Err(bad(format!(
                    "runs[{index}]: name {name:?} must be letters, digits, `.`, `_` and `-`"
                )))
            }
            None => derive_name(&variant, &overrides, &short),
        };
        runs.push(RunSpec {
            index: 0,
            name,
            variant,
            config: config.clone(),
            overrides,
            priority: extra.priority,
            tags: extra.tags.clone(),
            retry: Vec::new(),
        });
    }
    for (index, run) in runs.iter_mut().enumerate() {
        run.index = index;
        for rule in &raw.rules {
            let matched = rule.matches.iter().all(|(key, wanted)| {
                run.value(key)
                    .is_some_and(|value| same_value(&value, wanted))
            });
            if matched {
                if let Some(priority) = rule.priority {
                    run.priority = priority;
                }
                for tag in &rule.tags {
                    if !run.tags.contains(tag) {
                        run.tags.push(tag.clone());
                    }
                }
            }
        }
    }
    for (index, rule) in raw.rules.iter().enumerate() {
        if !runs.iter().any(|run| {
            rule.matches
                .iter()
                .all(|(key, wanted)| run.value(key).is_some_and(|v| same_value(&v, wanted)))
        }) {
            return Err(bad(format!(
                "rules[{index}] matches no run: check its keys and values against the grid"
            )));
        }
    }
    let mut seen = HashSet::new();
    for run in &runs {
        if !seen.insert(run.name.clone()) {
            return Err(bad(format!(
                "two runs are both named `{}`: give the extra run a `name`, or the grid key a distinct `short` name",
                run.name
            )));
        }
    }
    let root = raw.root.unwrap_or_else(|| PathBuf::from("runs"));
    let dir =
        std::path::absolute(root.join(&raw.name)).map_err(|source| Error::io(&root, source))?;
    if raw.threads == Some(0) {
        return Err(bad("`threads` must be at least 1".into()));
    }
    for key in raw.set.keys() {
        if key == "run_dir" || raw.grid.contains_key(key) {
            return Err(bad(format!(
                "`set` holds `{key}`, which the study sets for each run (a grid key, or run_dir)"
            )));
        }
    }
    Ok(Study {
        name: raw.name,
        file: file.to_path_buf(),
        dir,
        grid_keys: grid.into_iter().map(|(key, _)| key).collect(),
        common: raw.set.into_iter().collect(),
        threads: raw.threads,
        runs,
        local: raw.local,
        slurm: raw.slurm,
    })
}

/// Equal as values, with integers and floats compared by number (`lr = 1` matches `1.0`).
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    match (a, b) {
        (toml::Value::Integer(x), toml::Value::Float(y))
        | (toml::Value::Float(y), toml::Value::Integer(x)) => *x as f64 == *y,
        _ => a == b,
    }
}

/// `<variant>-<short><value>-…`, e.g. `base-lr0.1-wd0.001-s3`.
fn derive_name(
    variant: &str,
    overrides: &[(String, toml::Value)],
    short: &dyn Fn(&str) -> String,
) -> String {
    let mut name = variant.to_string();
    for (key, value) in overrides {
        name.push('-');
        name.push_str(&short(key));
        name.push_str(&value_text(value));
    }
    name
}

/// A value as it appears in a run name: numbers in their shortest decimal form, strings
/// with anything but letters, digits, `.`, `_` and `-` replaced by `_`.
fn value_text(value: &toml::Value) -> String {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        // Shortest decimal form; below 1e-4 or from 1e6 on in exponent form (1e30, 1e-7).
        toml::Value::Float(number) => {
            if *number == 0.0 || (1e-4..1e6).contains(&number.abs()) {
                format!("{number}")
            } else {
                format!("{number:e}")
            }
        }
        toml::Value::Boolean(flag) => flag.to_string(),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_clean_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(text: &str) -> Result<Study> {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.toml", "b.toml"] {
            std::fs::write(dir.path().join(name), "epochs = 1\n").unwrap();
        }
        let file = dir.path().join("study.toml");
        std::fs::write(&file, text).unwrap();
        let mut study = Study::load(&file)?;
        // Keep the temporary directory's files alive only as long as needed.
        study.dir = PathBuf::from("/study");
        Ok(study)
    }

    #[test]
    fn the_grid_is_the_full_product_named_by_its_point() {
        let s = study(
            "name = \"x\"\nvariants = { a = \"a.toml\", b = \"b.toml\" }\n\
             [grid]\n\"optim.lr\" = [0.05, 0.1]\n\"optim.weight_decay\" = [1e-4, 1e-3]\nseed = [0, 1, 2]\n",
        )
        .unwrap();
        assert_eq!(s.runs.len(), 2 * 2 * 2 * 3);
        assert_eq!(s.runs[0].name, "a-lr0.05-wd0.0001-s0");
        assert_eq!(s.runs[1].name, "a-lr0.05-wd0.0001-s1");
        assert_eq!(s.runs[23].name, "b-lr0.1-wd0.001-s2");
        assert_eq!(
            s.runs[23].set_arguments(),
            ["optim.lr=0.1", "optim.weight_decay=0.001", "seed=2"]
        );
        assert_eq!(s.grid_keys, ["optim.lr", "optim.weight_decay", "seed"]);
        assert!(s.runs.iter().enumerate().all(|(i, r)| r.index == i));
        assert_eq!(
            s.run_dir(&s.runs[23]),
            Path::new("/study/b-lr0.1-wd0.001-s2")
        );
    }

    #[test]
    fn values_read_in_names_as_people_write_them() {
        let text = |v: toml::Value| value_text(&v);
        assert_eq!(text(toml::Value::Float(0.001)), "0.001");
        assert_eq!(text(toml::Value::Float(1e-4)), "0.0001");
        assert_eq!(text(toml::Value::Float(1e30)), "1e30");
        assert_eq!(text(toml::Value::Float(1e-7)), "1e-7");
        assert_eq!(text(toml::Value::Integer(3)), "3");
        assert_eq!(text(toml::Value::String("a b/c".into())), "a_b_c");
    }

    #[test]
    fn extra_runs_rules_and_priorities() {
        let s = study(
            "name = \"x\"\nbase = \"a.toml\"\n[grid]\nseed = [0, 1]\n\"model.width_mult\" = [0.5]\n\
             [[runs]]\nset = { \"optim.lr\" = 0.4 }\ntags = [\"probe\"]\npriority = 3\n\
             [[rules]]\nmatch = { seed = 1 }\npriority = 10\ntags = [\"first\"]\n",
        )
        .unwrap();
        let names: Vec<&str> = s.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["base-widthmult0.5-s0", "base-widthmult0.5-s1", "base-lr0.4"]
        );
        assert_eq!(s.runs[1].priority, 10);
        assert_eq!(s.runs[1].tags, ["first"]);
        assert_eq!(s.runs[2].tags, ["probe"]);
        let order: Vec<usize> = s.by_priority().iter().map(|r| r.index).collect();
        assert_eq!(order, [1, 2, 0]);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("name = \"x\"\n", "no config"),
            ("name = \"x\"\nbase = \"missing.toml\"\n", "not found"),
            ("name = \"x y\"\nbase = \"a.toml\"\n", "non-empty name"),
            (
                "name = \"x\"\nbase = \"a.toml\"\n[grid]\nseed = 3\n",
                "non-empty list",
            ),
            (
                "name = \"x\"\nbase = \"a.toml\"\n[grid]\nrun_dir = [\"a\"]\n",
                "cannot be varied",
            ),
            (
                "name = \"x\"\nbase = \"a.toml\"\n[grid]\nseed = [1, 1]\n",
                "both named `base-s1`",
            ),
            (
                "name = \"x\"\nbase = \"a.toml\"\n[[rules]]\nmatch = { seed = 9 }\npriority = 1\n",
                "matches no run",
            ),
            (
                "name = \"x\"\nbase = \"a.toml\"\nbogus = 1\n",
                "unknown field `bogus`",
            ),
        ];
        for (text, expected) in cases {
            let message = study(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }
}
