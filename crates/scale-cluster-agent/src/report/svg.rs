//! Small inline SVG charts for the run report: lines (CDF, timelines, memory) and horizontal
//! bars (top N). Hand-made rather than with `plotters`: a few hundred bytes of markup per chart,
//! no font or backend dependency, text that stays selectable and prints sharp, and no build cost
//! for a crate this small a job needs.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Colours that stay apart for the usual colour-vision deficiencies (Okabe–Ito).
pub const COLOURS: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
];

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Drawn as steps (a CDF, counts that hold until the next change).
    pub step: bool,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about five ticks over `0..max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// A line chart. `x_label`/`y_label` name the axes; `x_tick` formats an x value.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    x_tick: &dyn Fn(f64) -> String,
) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::MAX, f64::MIN, 0f64);
    for (x, y) in all {
        x_min = x_min.min(*x);
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    if x_min > x_max {
        return empty(title);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    let y_step = tick_step(y_max);
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_top * plot_h;
    let mut out = open(title);
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let py = sy(y);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#e3e6ee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            number(y)
        );
        y += y_step;
    }
    for i in 0..=4 {
        let x = x_min + (x_max - x_min) * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sx(x),
            HEIGHT - BOTTOM + 16.0,
            escape(&x_tick(x))
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">{}</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle" class="axis">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let mut path = String::new();
        let mut last: Option<(f64, f64)> = None;
        for (x, y) in &s.points {
            let (px, py) = (sx(*x), sy(*y));
            match last {
                None => {
                    let _ = write!(path, "M{px:.1},{py:.1}");
                }
                Some((_, ly)) if s.step => {
                    let _ = write!(path, "L{px:.1},{ly:.1}L{px:.1},{py:.1}");
                }
                Some(_) => {
                    let _ = write!(path, "L{px:.1},{py:.1}");
                }
            }
            last = Some((px, py));
        }
        let _ = write!(
            out,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></path>"#,
            s.colour,
            escape(s.name)
        );
        // Legend, top right.
        let lx = WIDTH - RIGHT - 130.0;
        let ly = TOP + 4.0 + 16.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 9.0,
            s.colour,
            lx + 14.0,
            ly,
            escape(s.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// A horizontal bar chart of `(label, value)`, largest first as given.
pub fn bars(title: &str, unit: &str, items: &[(String, f64)]) -> String {
    if items.is_empty() {
        return empty(title);
    }
    let max = items.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0);
    let row = 20.0;
    let height = TOP + row * items.len() as f64 + 12.0;
    let label_w = 180.0;
    let plot_w = WIDTH - label_w - RIGHT - 90.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}" role="img"><title>{t}</title><style>text{{font:12px sans-serif;fill:#1d2433}}</style><text x="{LEFT}" y="18" style="font-weight:bold">{t}</text>"#,
        t = escape(title)
    );
    for (i, (label, value)) in items.iter().enumerate() {
        let y = TOP + row * i as f64;
        let w = value / max * plot_w;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{} {}</text>"#,
            label_w - 6.0,
            y + 13.0,
            escape(label),
            row - 6.0,
            COLOURS[0],
            label_w + w + 6.0,
            y + 13.0,
            number(*value),
            escape(unit)
        );
    }
    out.push_str("</svg>");
    out
}

fn open(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><title>{t}</title><style>text{{font:12px sans-serif;fill:#1d2433}} .axis{{fill:#6b7385}}</style><text x="{LEFT}" y="18" style="font-weight:bold">{t}</text>"#,
        t = escape(title)
    )
}

fn empty(title: &str) -> String {
    let mut out = open(title);
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">no data in this window</text></svg>"#,
        WIDTH / 2.0,
        HEIGHT / 2.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_self_contained_svg() {
        let chart = lines(
            "a <b>",
            "x",
            "y",
            &[Series {
                name: "s",
                colour: COLOURS[0],
                points: vec![(0.0, 0.0), (1.0, 3.0)],
                step: true,
            }],
            &|x| format!("{x}"),
        );
        assert!(
            chart.starts_with("<svg") && chart.ends_with("</svg>"),
            "{chart}"
        );
        assert!(chart.contains("a &lt;b&gt;"));
        assert!(!chart.contains("href"), "no external reference");
        assert!(lines("t", "x", "y", &[], &|x| format!("{x}")).contains("no data"));
        let b = bars("top", "MiB", &[("c1".into(), 2.0), ("c2".into(), 1.0)]);
        assert!(b.contains(">c1<") && b.contains("2 MiB"), "{b}");
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
