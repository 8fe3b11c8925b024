//! The self-contained `index.html`: inline CSS and SVG only (no script, font or stylesheet from
//! anywhere else), rendered from a plain [`HtmlReport`] so it can be tested without a run.

use std::fmt::Write as _;

/// A line on a chart: `(x, y)` points, x in seconds of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// CSS colour.
    pub color: String,
    /// Drawn dashed (e.g. p50 beside a solid p99).
    pub dashed: bool,
    /// Points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A fault on the time axis, with the disruption it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMark {
    /// When it was applied, seconds of the run.
    pub at_s: f64,
    /// What it was.
    pub label: String,
    /// First and last disrupted second (end exclusive), if any.
    pub window: Option<(f64, f64)>,
}

/// A row of the per-operation table.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRow {
    /// Operation.
    pub name: String,
    /// Requests.
    pub count: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// The p99 target applied (the lower of the seeds' and ours), ms.
    pub target_ms: Option<f64>,
    /// Whether the operation met its gates.
    pub passed: bool,
}

/// Everything `index.html` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HtmlReport {
    /// Page title.
    pub title: String,
    /// Overall verdict, one line.
    pub verdict: String,
    /// Whether the run passed every gate and invariant and was valid.
    pub passed: bool,
    /// Facts shown as a list: (name, value).
    pub facts: Vec<(String, String)>,
    /// Length of the schedule, s.
    pub duration_s: f64,
    /// Requests per second asked for.
    pub target_rate: f64,
    /// p99 target drawn on the latency chart, ms.
    pub p99_target_ms: Option<f64>,
    /// Per-second p50 and p99 per operation, ms.
    pub latency: Vec<Series>,
    /// Requests sent per second.
    pub achieved: Vec<(f64, f64)>,
    /// Errors per second (by intended time).
    pub errors: Vec<(f64, f64)>,
    /// Faults applied.
    pub faults: Vec<FaultMark>,
    /// Per-operation table.
    pub table: Vec<OpRow>,
    /// Lines listed under the verdict: breaches, violations, notes.
    pub notes: Vec<String>,
    /// Other files of the report (name, what).
    pub files: Vec<(String, String)>,
}

/// Colours of the operations' lines, in order.
pub const PALETTE: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 960.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;

/// A 1-2-5 step giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() >= 1.0) {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One chart.
struct Chart<'a> {
    /// Shown above the chart and as the SVG's title.
    title: &'a str,
    /// Unit of the y axis.
    y_label: &'a str,
    /// Logarithmic y axis (latencies span decades).
    log_y: bool,
    /// Lines.
    series: &'a [Series],
    /// Horizontal reference lines: (y, label, colour).
    hlines: &'a [(f64, String, String)],
    /// Right end of the x axis, s.
    x_max: f64,
    /// Faults to mark.
    faults: &'a [FaultMark],
}

fn render_chart(c: &Chart) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x_max = c.x_max.max(1.0);
    let ys = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(c.hlines.iter().map(|h| h.0));
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for y in ys.filter(|y| y.is_finite() && (!c.log_y || *y > 0.0)) {
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = if c.log_y { (0.1, 10.0) } else { (0.0, 1.0) };
    }
    // Linear axes start at 0; logarithmic ones span whole decades.
    let (lo, hi) = if c.log_y {
        (10f64.powf(y_min.log10().floor()), 10f64.powf(y_max.log10().ceil().max(y_min.log10().floor() + 1.0)))
    } else {
        let step = nice_step(y_max, 5.0);
        (0.0, (y_max / step).ceil().max(1.0) * step)
    };
    let sy = |y: f64| -> f64 {
        let f = if c.log_y { (y.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) } else { (y - lo) / (hi - lo) };
        TOP + ph * (1.0 - f.clamp(0.0, 1.0))
    };
    let sx = |x: f64| -> f64 { LEFT + pw * (x / x_max).clamp(0.0, 1.0) };

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(c.title)
    );
    let _ = write!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>"##);
    // Disruption windows under everything else.
    for f in c.faults {
        if let Some((a, b)) = f.window {
            let (x0, x1) = (sx(a), sx(b.max(a)));
            let _ = write!(
                s,
                r##"<rect class="disruption" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#fdd" opacity="0.6"/>"##,
                (x1 - x0).max(1.0)
            );
        }
    }
    // Y grid and labels.
    let mut ticks = Vec::new();
    if c.log_y {
        let mut v = lo;
        while v <= hi * 1.0001 {
            ticks.push(v);
            v *= 10.0;
        }
    } else {
        let step = nice_step(hi - lo, 5.0);
        let mut v = lo;
        while v <= hi + step * 1e-6 {
            ticks.push(v);
            v += step;
        }
    }
    for v in ticks {
        let y = sy(v);
        let _ = write!(s, r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##, LEFT + pw);
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#444">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        s,
        r##"<text x="14" y="{:.1}" font-size="11" fill="#444" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(c.y_label)
    );
    // X ticks.
    let step = nice_step(x_max, 10.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = write!(s, r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/>"##, TOP + ph, TOP + ph + 4.0);
        let _ = write!(
            s,
            r##"<text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#444">{}</text>"##,
            TOP + ph + 16.0,
            fmt_num(x)
        );
        x += step;
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#444">seconds into the run</text>"##,
        LEFT + pw / 2.0,
        H - 4.0
    );
    // Reference lines.
    for (v, label, color) in c.hlines {
        let y = sy(*v);
        let _ = write!(
            s,
            r#"<line class="target" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{}" stroke-dasharray="6 4"/>"#,
            LEFT + pw,
            esc(color)
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="{}">{}</text>"#,
            LEFT + pw - 4.0,
            y - 4.0,
            esc(color),
            esc(label)
        );
    }
    // The lines.
    for series in c.series {
        if series.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = series
            .points
            .iter()
            .filter(|p| p.1.is_finite() && (!c.log_y || p.1 > 0.0))
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if series.dashed { r#" stroke-dasharray="4 3""# } else { "" };
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{dash} points="{}"><title>{}</title></polyline>"#,
            esc(&series.color),
            pts.join(" "),
            esc(&series.label)
        );
    }
    // Faults on top.
    for f in c.faults {
        let x = sx(f.at_s);
        let _ = write!(
            s,
            r##"<line class="fault" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#c00" stroke-width="2"><title>{}</title></line>"##,
            TOP + ph,
            esc(&f.label)
        );
        let _ = write!(s, r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#c00">{}</text>"##, x + 4.0, TOP + 12.0, esc(&f.label));
    }
    s.push_str("</svg>");
    // The legend, as HTML beneath.
    s.push_str(r#"<div class="legend">"#);
    for series in c.series {
        let style = if series.dashed { "dashed" } else { "solid" };
        let _ = write!(s, r#"<span><i style="border-top:2px {style} {}"></i>{}</span>"#, esc(&series.color), esc(&series.label));
    }
    s.push_str("</div>");
    s
}

const CSS: &str =
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:28px}table{border-collapse:collapse;font-size:.9em}\
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}\
.pass{color:#080;font-weight:bold}.fail{color:#c00;font-weight:bold}.verdict{font-size:1.1em;padding:8px 12px;border-radius:4px}\
.verdict.pass{background:#e8f5e9}.verdict.fail{background:#fdecea}dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}\
dt{color:#555}dd{margin:0}.legend{font-size:.8em;margin:2px 0 8px 64px}.legend span{margin-right:14px;white-space:nowrap}\
.legend i{display:inline-block;width:22px;margin-right:4px;vertical-align:middle}code{background:#f4f4f4;padding:0 3px}";

/// Renders the page.
pub fn render(r: &HtmlReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&r.title)
    );
    let _ = write!(s, "<h1>{}</h1>", esc(&r.title));
    let class = if r.passed { "pass" } else { "fail" };
    let _ = write!(s, r#"<p class="verdict {class}">{}</p>"#, esc(&r.verdict));
    if !r.notes.is_empty() {
        s.push_str("<ul>");
        for n in &r.notes {
            let _ = write!(s, "<li>{}</li>", esc(n));
        }
        s.push_str("</ul>");
    }
    s.push_str("<dl>");
    for (k, v) in &r.facts {
        let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    s.push_str("</dl>");

    s.push_str("<h2>Latency per operation</h2><table><tr><th>operation</th><th>requests</th><th>errors</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>p99 target ms</th><th>gate</th></tr>");
    for row in &r.table {
        let target = row.target_ms.map(fmt_num).unwrap_or_else(|| "-".into());
        let (class, word) = if row.passed { ("pass", "pass") } else { ("fail", "FAIL") };
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{target}</td><td class="{class}">{word}</td></tr>"#,
            esc(&row.name),
            row.count,
            row.errors,
            row.p50_ms,
            row.p99_ms,
            row.p999_ms,
            row.max_ms
        );
    }
    s.push_str("</table><p>Latency runs from each request's intended send time on the fixed-rate schedule to its whole answer, so time a request spent waiting for a free user counts.</p>");

    let x_max = r.duration_s.max(r.achieved.last().map(|p| p.0 + 1.0).unwrap_or(0.0));
    let target_line: Vec<(f64, String, String)> =
        r.p99_target_ms.map(|t| (t, format!("p99 target {} ms", fmt_num(t)), "#c00".to_string())).into_iter().collect();
    s.push_str("<h2>p50 (dashed) and p99 (solid) per operation, 1 s intervals</h2>");
    s.push_str(&render_chart(&Chart {
        title: "latency per operation",
        y_label: "ms (log scale)",
        log_y: true,
        series: &r.latency,
        hlines: &target_line,
        x_max,
        faults: &r.faults,
    }));

    s.push_str("<h2>Achieved vs target rate</h2>");
    let achieved = [Series { label: "sent per second".into(), color: PALETTE[0].into(), dashed: false, points: r.achieved.clone() }];
    let target = [(r.target_rate, format!("target {} req/s", fmt_num(r.target_rate)), "#888".to_string())];
    s.push_str(&render_chart(&Chart {
        title: "achieved vs target rate",
        y_label: "requests/s",
        log_y: false,
        series: &achieved,
        hlines: &target,
        x_max,
        faults: &r.faults,
    }));

    s.push_str("<h2>Errors over time</h2>");
    let errors =
        [Series { label: "errors per second (by intended time)".into(), color: "#d62728".into(), dashed: false, points: r.errors.clone() }];
    s.push_str(&render_chart(&Chart {
        title: "errors over time",
        y_label: "errors/s",
        log_y: false,
        series: &errors,
        hlines: &[],
        x_max,
        faults: &r.faults,
    }));

    if !r.faults.is_empty() {
        s.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>at s</th><th>disruption</th></tr>");
        for f in &r.faults {
            let window = match f.window {
                Some((a, b)) => format!("{} s to {} s ({} s)", fmt_num(a), fmt_num(b), fmt_num(b - a)),
                None => "none seen".into(),
            };
            let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(&f.label), fmt_num(f.at_s), esc(&window));
        }
        s.push_str("</table>");
    }
    if !r.files.is_empty() {
        s.push_str("<h2>Files</h2><ul>");
        for (name, what) in &r.files {
            let _ = write!(s, r#"<li><a href="{n}"><code>{n}</code></a>: {}</li>"#, esc(what), n = esc(name));
        }
        s.push_str("</ul>");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HtmlReport {
        HtmlReport {
            title: "load <test>".into(),
            verdict: "FAIL: capture p99 25 ms > 20 ms".into(),
            passed: false,
            facts: vec![("seed".into(), "42".into())],
            duration_s: 10.0,
            target_rate: 100.0,
            p99_target_ms: Some(20.0),
            latency: vec![
                Series {
                    label: "capture p99".into(),
                    color: PALETTE[0].into(),
                    dashed: false,
                    points: vec![(0.0, 3.0), (1.0, 25.0), (2.0, 4.0)],
                },
                Series {
                    label: "capture p50".into(),
                    color: PALETTE[0].into(),
                    dashed: true,
                    points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 0.0)],
                },
            ],
            achieved: vec![(0.0, 100.0), (1.0, 98.0)],
            errors: vec![(0.0, 0.0), (1.0, 3.0)],
            faults: vec![FaultMark { at_s: 1.0, label: "nats-restart".into(), window: Some((1.0, 3.0)) }],
            table: vec![OpRow {
                name: "capture".into(),
                count: 10,
                errors: 3,
                p50_ms: 1.0,
                p99_ms: 25.0,
                p999_ms: 25.0,
                max_ms: 25.0,
                target_ms: Some(20.0),
                passed: false,
            }],
            notes: vec!["capture p99 25 ms > 20 ms".into()],
            files: vec![("capture.hgrm".into(), "percentiles".into())],
        }
    }

    #[test]
    fn the_page_is_self_contained() {
        let html = render(&report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 3);
        for forbidden in ["<script", "<link", "@import", "url(", "https://", "src="] {
            assert!(!html.contains(forbidden), "found {forbidden}");
        }
        // The only absolute URL is the SVG namespace, which is never fetched.
        assert_eq!(html.matches("http://").count(), html.matches("http://www.w3.org/2000/svg").count());
    }

    #[test]
    fn text_is_escaped_and_faults_are_marked() {
        let html = render(&report());
        assert!(html.contains("load &lt;test&gt;"));
        assert!(!html.contains("load <test>"));
        assert_eq!(html.matches(r#"class="fault""#).count(), 3, "one marker per chart");
        assert_eq!(html.matches(r#"class="disruption""#).count(), 3);
        assert!(html.contains("p99 target 20 ms"));
        assert!(html.contains(r#"class="fail">FAIL"#));
    }

    #[test]
    fn no_faults_no_markers_and_empty_series_render() {
        let mut r = report();
        r.faults.clear();
        r.latency.clear();
        r.errors.clear();
        let html = render(&r);
        assert!(!html.contains(r#"class="fault""#));
        assert!(!html.contains("<h2>Faults"));
        assert_eq!(html.matches("<svg").count(), 3);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(60.0, 10.0), 10.0);
        assert_eq!(nice_step(45.0, 10.0), 5.0);
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(20.0), "20");
    }
}
