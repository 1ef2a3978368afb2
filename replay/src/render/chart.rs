//! The loss curve, as text rows and as SVG.

/// Mean loss of `columns` equal slices of the curve (fewer if there are fewer points).
pub fn downsample(loss: &[(u64, f32)], columns: usize) -> Vec<f32> {
    if loss.is_empty() || columns == 0 {
        return vec![];
    }
    let n = loss.len();
    let cols = columns.min(n);
    (0..cols)
        .map(|c| {
            let (a, b) = (c * n / cols, ((c + 1) * n / cols).max(c * n / cols + 1));
            let slice = &loss[a..b];
            slice.iter().map(|(_, l)| *l).sum::<f32>() / slice.len() as f32
        })
        .collect()
}
/// The loss curve as lines of text (`rows` high, `columns` wide).
pub fn loss_text(loss: &[(u64, f32)], columns: usize, rows: usize) -> Vec<String> {
    let ys = downsample(loss, columns);
    let finite: Vec<f32> = ys.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || rows == 0 {
        return vec![];
    }
    let (lo, hi) = finite
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut lines = Vec::new();
    for row in 0..rows {
        let top = hi - span * row as f32 / rows as f32;
        let bottom = hi - span * (row + 1) as f32 / rows as f32;
        let cells: String = ys
            .iter()
            .map(|&v| {
                if v.is_finite() && v <= top && (v > bottom || row + 1 == rows && v >= bottom) {
                    '*'
                } else {
                    ' '
                }
            })
            .collect();
        let label = if row == 0 {
            format!("{hi:>9.4} |")
        } else if row + 1 == rows {
            format!("{lo:>9.4} |")
        } else {
            "          |".to_string()
        };
        lines.push(format!("{label}{cells}"));
    }
    let first = loss.first().map(|x| x.0).unwrap_or(0);
    let last = loss.last().map(|x| x.0).unwrap_or(0);
    lines.push(format!("          +{}", "-".repeat(ys.len())));
    lines.push(format!(
        "           step {first}{:>w$}",
        last,
        w = ys.len().saturating_sub(6 + first.to_string().len())
    ));
    lines
}
/// Text with `&`, `<` and `>` escaped for XML and HTML.
pub(crate) fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
/// A standalone SVG of the loss curve, with a red tick under the curve at each step of `marks`.
pub fn loss_svg(loss: &[(u64, f32)], title: &str, marks: &[u64]) -> String {
    let (w, h, pad) = (640.0f64, 320.0f64, 40.0f64);
    let pts: Vec<(f64, f64)> = loss
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|(s, l)| (*s as f64, f64::from(*l)))
        .collect();
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let sx = |x: f64| pad + (x - x0) / (x1 - x0).max(1e-12) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0).max(1e-12) * (h - 2.0 * pad);
    let path: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
        .collect();
    let ticks: String = marks
        .iter()
        .map(|&m| {
            let x = sx(m as f64);
            format!(
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#d62728\" stroke-width=\"1\"/>\n",
                h - pad - 12.0,
                h - pad
            )
        })
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="24" font-family="sans-serif" font-size="14">loss of {title}</text>
<line x1="{pad}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{yb}" stroke="black"/>
<text x="{pad}" y="{yl}" font-family="sans-serif" font-size="11">step {x0}</text>
<text x="{xr}" y="{yl}" font-family="sans-serif" font-size="11" text-anchor="end">step {x1}</text>
<text x="4" y="{yt}" font-family="sans-serif" font-size="11">{y1:.3}</text>
<text x="4" y="{yb}" font-family="sans-serif" font-size="11">{y0:.3}</text>
{ticks}<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>
</svg>
"##,
        title = escape_xml(title),
        yb = h - pad,
        xr = w - pad,
        yl = h - pad + 16.0,
        yt = pad + 4.0,
        points = path.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_averages_slices() {
        let loss: Vec<(u64, f32)> = (1..=8).map(|s| (s, s as f32)).collect();
        assert_eq!(downsample(&loss, 4), vec![1.5, 3.5, 5.5, 7.5]);
        assert_eq!(downsample(&loss, 20).len(), 8);
        assert_eq!(loss_text(&loss, 8, 4).len(), 6);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let svg = loss_svg(&[(1, 1.0), (2, 0.5)], "run <1>", &[2]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("run &lt;1&gt;"));
        // One red tick for the marked step, at the curve's right end; none without marks.
        assert_eq!(svg.matches("#d62728").count(), 1);
        assert!(svg.contains("<line x1=\"600.0\""));
        assert!(!loss_svg(&[(1, 1.0), (2, 0.5)], "r", &[]).contains("#d62728"));
    }
}
