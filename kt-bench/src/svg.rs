//! A stacked bar chart as a standalone SVG: one bar per layer (and one for the head),
//! one colored segment per series (the CPU engine's stages, or the hybrid executor's GPU /
//! CPU / transfer times), for `kt-bench decode/prefill --svg`.

use std::fmt::Write as _;

use kt_model::deepseek::{Split, Stage};

/// Fill colors of the series, in order (a chart has at most this many series).
const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#bab0ac", "#59a14f",
];

/// The CPU engine's stages of `split` as the series of [`stacked_bars`].
pub fn stage_series(split: &Split) -> Vec<f64> {
    Stage::ALL.iter().map(|st| split.get(*st)).collect()
}

/// The names of the CPU engine's stages, the series of [`stage_series`].
pub fn stage_names() -> Vec<&'static str> {
    Stage::ALL.iter().map(|st| st.name()).collect()
}

const BAR_W: f64 = 18.0;
const GAP: f64 = 6.0;
const PLOT_H: f64 = 300.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const LEGEND_W: f64 = 190.0;

/// The SVG of `bars` (label, one value in seconds per name of `series`; at most
/// `COLORS.len()` series, extra ones are not drawn), scaled to `scale` (e.g. 1e3 / tokens
/// for ms per token) and titled `title`; the y axis is labelled `unit`.
pub fn stacked_bars(
    title: &str,
    unit: &str,
    series: &[&str],
    bars: &[(String, Vec<f64>)],
    scale: f64,
) -> String {
    let max = bars
        .iter()
        .map(|(_, s)| s.iter().sum::<f64>() * scale)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let plot_w = bars.len() as f64 * (BAR_W + GAP) + GAP;
    let (w, h) = (LEFT + plot_w + LEGEND_W, TOP + PLOT_H + 60.0);
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    // axis with 5 ticks
    let base = TOP + PLOT_H;
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="black"/>"#
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let y = base - PLOT_H * i as f64 / 5.0;
        let _ = writeln!(
            o,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT,
            LEFT + plot_w,
            LEFT - 4.0,
            y + 4.0,
            tick(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(unit)
    );
    for (i, (label, values)) in bars.iter().enumerate() {
        let x = LEFT + GAP + i as f64 * (BAR_W + GAP);
        let mut y = base;
        for ((name, color), v) in series.iter().zip(COLORS).zip(values) {
            let v = v * scale;
            let hgt = PLOT_H * v / max;
            if hgt > 0.0 {
                y -= hgt;
                let _ = writeln!(
                    o,
                    r#"<rect x="{x:.1}" y="{y:.2}" width="{BAR_W}" height="{hgt:.2}" fill="{color}"><title>{} {}: {}</title></rect>"#,
                    escape(label),
                    escape(name),
                    tick(v)
                );
            }
        }
        let _ = writeln!(
            o,
            r#"<text transform="translate({:.1},{:.1}) rotate(-60)" text-anchor="end">{}</text>"#,
            x + BAR_W / 2.0,
            base + 10.0,
            escape(label)
        );
    }
    for (i, (name, color)) in series.iter().zip(COLORS).enumerate() {
        let y = TOP + 18.0 * i as f64;
        let x = LEFT + plot_w + 16.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 18.0,
            y + 10.0,
            escape(name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// A compact number for axis ticks and tooltips.
fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_stacked_to_scale_and_labels_escaped() {
        let a = Split([1.0, 0.5, 2.0, 0.25, 0.25, 0.0]);
        let b = Split([0.0, 0.0, 0.0, 0.0, 0.5, 1.5]);
        let bars = [
            ("L0".to_string(), stage_series(&a)),
            ("head&".to_string(), stage_series(&b)),
        ];
        let svg = stacked_bars("t <1>", "ms", &stage_names(), &bars, 1.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("head&amp;"));
        // The tallest bar (4.0) spans the whole plot height; a 2.0 segment half of it.
        assert!(svg.contains(r#"L0 routed_experts: 2.00"#));
        assert!(svg.contains(&format!(r#"height="{:.2}""#, PLOT_H / 2.0)));
        // Zero-height segments are not drawn: 5 for L0, 2 for the head, 6 legend boxes.
        assert_eq!(svg.matches("<rect").count(), 1 + 5 + 2 + 6);
    }
}
