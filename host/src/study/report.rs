//! `vigil study report DIR`: the study plan's two hypotheses over the completed runs.
//!
//! - H1, power laws are prevalent: the power-law fit after burn-in (ln loss on ln epoch) has
//!   r² ≥ 0.98 in more than 90 % of the runs that have one;
//! - H2, the early slope predicts the result: Pearson's correlation of `alpha_early` with
//!   `best_val_ce` is at least 0.7.

use std::path::Path;

use super::record::read_record;
use super::summary::{hypotheses, summarize_run, Hypotheses, H1_R_SQUARED, H2_CORRELATION};
use crate::error::Result;
use crate::run_dir::{read_run, RunState};

/// The hypotheses over the completed runs, and how many runs there are in all.
pub fn study_report(dir: &Path) -> Result<(Hypotheses, usize, usize)> {
    let record = read_record(dir)?;
    let completed: Vec<_> = record
        .study
        .runs
        .iter()
        .filter(|run| read_run(&dir.join(&run.name)).state == RunState::Completed)
        .map(|run| summarize_run(&dir.join(&run.name), None).0)
        .collect();
    Ok((
        hypotheses(&completed),
        completed.len(),
        record.study.runs.len(),
    ))
}

/// The report as text.
pub fn report_text(name: &str, h: &Hypotheses, completed: usize, total: usize) -> String {
    let verdict = |v: Option<bool>| match v {
        Some(true) => "holds",
        Some(false) => "does not hold",
        None => "cannot be tested (too few runs)",
    };
    let mut out = format!("study `{name}`: {completed} of {total} runs completed; over those:\n");
    out.push_str(&format!(
        "H1 (power laws are prevalent: r² ≥ {H1_R_SQUARED} after burn-in in > 90 % of runs): {}; {} of {} runs with a fit after burn-in{}\n",
        verdict(h.h1),
        h.power_law,
        h.fitted,
        if h.fitted > 0 {
            format!(" ({:.1} %)", 100.0 * h.power_law as f64 / h.fitted as f64)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "H2 (the early slope predicts the result: correlation of alpha_early with best_val_ce ≥ {H2_CORRELATION}): {}; r = {} over {} runs with both\n",
        verdict(h.h2),
        h.correlation.map_or_else(|| "—".into(), |r| format!("{r:.3}")),
        h.paired
    ));
    out
}
