//! Writes a sample line chart to the path given, to look at: `cargo run -p vigil-monitor-draw --example preview -- out.png`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use vigil_monitor_draw::{
        line_chart,
        plotters::style::{BLUE, RED},
        Series,
    };
    let train: Vec<(f64, f64)> = (1..=10)
        .map(|e| (e as f64, 1.2 / (e as f64).sqrt()))
        .collect();
    let val: Vec<(f64, f64)> = (1..=10)
        .map(|e| (e as f64, 1.0 / (e as f64).powf(0.4) + 0.05))
        .collect();
    let png = line_chart(
        "Loss",
        "epoch",
        "loss (nats)",
        &[
            Series {
                label: "train",
                points: &train,
                color: BLUE,
            },
            Series {
                label: "validation",
                points: &val,
                color: RED,
            },
        ],
    )?;
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "preview.png".into());
    std::fs::write(path, png)?;
    Ok(())
}
