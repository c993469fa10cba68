//! The report for people: one self-contained HTML file with the summary
//! tables and SVG charts (drawn with plotters) of throughput, end-to-end
//! age and the dispatcher's memory and CPU over time, with the moments
//! phases began and processes were killed marked on each chart.

use std::fmt::Write as _;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::{Report, Sample};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 300;

/// One line of a chart: its legend, its (seconds, value) points, its colour.
type Line<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the {chart} chart: {message}")]
pub struct ChartError {
    chart: &'static str,
    message: String,
}

/// The whole page.
pub fn render(r: &Report) -> Result<String, ChartError> {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>loadtest {name}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#f4f4f4}}\
         td:first-child,th:first-child{{text-align:left}}.missed{{color:#b00;font-weight:bold}}.met{{color:#070}}</style>\
         </head><body><h1>loadtest: {name}</h1><p>{desc}</p><p>{started}, {cpus} CPUs, broker {broker}, seed {seed}, \
         {events} events, {endpoints} endpoints, {elapsed:.1} s. Dispatcher: <code>{bin}</code>.</p>",
        name = esc(&r.scenario),
        desc = esc(&r.description),
        started = esc(&r.started_at),
        cpus = r.machine.cpus,
        broker = esc(&r.broker),
        seed = r.seed,
        events = r.events,
        endpoints = r.endpoints,
        elapsed = r.elapsed_s,
        bin = esc(&r.dispatcher_binary),
    );

    o.push_str("<h2>Phases</h2><table><tr><th>phase</th><th>rate</th><th>events</th><th>deliveries/s</th><th>× ceiling</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>ceiling p99 ms</th><th>healthy keep-up</th><th>complete</th></tr>");
    for p in &r.phases {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.rate),
            p.events,
            p.deliveries_per_s,
            num(p.ceiling_ratio, 2),
            num(p.age.map(|a| a.p50_ms), 1),
            num(p.age.map(|a| a.p99_ms), 1),
            num(p.age.map(|a| a.p999_ms), 1),
            num(p.ceiling_latency.map(|a| a.p99_ms), 1),
            num(p.healthy_keep_up, 3),
            if p.complete { "yes" } else { "no" }
        );
    }
    if let Some(c) = &r.ceiling {
        let _ = write!(
            o,
            "<tr><td>ceiling (bare hyper)</td><td>max</td><td>{}</td><td>{:.0}</td><td>1.00</td><td colspan=6></td></tr>",
            c.requests, c.deliveries_per_s
        );
    }
    o.push_str("</table>");

    let a = &r.accounting.total;
    let _ = write!(
        o,
        "<h2>Deliveries</h2><table><tr><th>expected</th><th>delivered</th><th>duplicates</th><th>dead-lettered</th><th>lost</th><th>unexpected ids</th><th>misrouted</th><th>bad signatures</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        a.expected, a.delivered, a.duplicates, a.dead_lettered, a.lost, a.unexpected, a.misrouted, r.accounting.bad_signatures
    );
    o.push_str("<table><tr><th>endpoint</th><th>faults</th><th>expected</th><th>delivered</th><th>dups</th><th>dead-lettered</th><th>lost</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th></tr>");
    for e in &r.per_endpoint {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.id),
            esc(&e.faults.join(", ")),
            e.tally.expected,
            e.tally.delivered,
            e.tally.duplicates,
            e.tally.dead_lettered,
            e.tally.lost,
            e.deliveries_per_s,
            num(e.age.map(|a| a.p50_ms), 1),
            num(e.age.map(|a| a.p99_ms), 1),
        );
    }
    o.push_str("</table>");

    let d = &r.dispatcher;
    let _ = write!(
        o,
        "<h2>Dispatcher</h2><p>{} process(es), {} start(s), {} kill -9. RSS peak {} MB (at first delivery {} MB). CPU {:.1} s, {:.2} cores on average, {} µs per delivery (ceiling client {} µs per request).</p>",
        d.processes,
        d.starts,
        d.kills,
        num(d.rss_peak_mb, 1),
        num(d.rss_at_first_delivery_mb, 1),
        d.cpu_s,
        d.mean_cores,
        num(d.cpu_us_per_delivery, 1),
        num(r.ceiling.as_ref().and_then(|c| c.client_cpu_us_per_request), 1),
    );

    if !r.targets.is_empty() {
        o.push_str("<h2>Targets</h2><table><tr><th>target</th><th>bound</th><th>measured</th><th></th></tr>");
        for t in &r.targets {
            let bound = match (t.min, t.max) {
                (Some(min), Some(max)) => format!("{min} to {max}"),
                (Some(min), None) => format!("≥ {min}"),
                (None, Some(max)) => format!("≤ {max}"),
                (None, None) => String::new(),
            };
            let (class, word) = match t.met {
                Some(true) => ("met", "met"),
                Some(false) => ("missed", "missed"),
                None => ("", "not measured"),
            };
            let _ = write!(
                o,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>",
                esc(&t.metric),
                t.phase
                    .as_ref()
                    .map(|p| format!(" [{}]", esc(p)))
                    .unwrap_or_default(),
                esc(&bound),
                num(t.value, 3)
            );
        }
        o.push_str("</table>");
    }
    for n in &r.notes {
        let _ = write!(o, "<p><b>Note:</b> {}</p>", esc(n));
    }
    let mut isolation = String::new();
    super::isolation_text(&mut isolation, r);
    if let Some(b) = &r.backlog {
        super::backlog_text(&mut isolation, b);
    }
    let _ = write!(
        o,
        "<h2>Isolation and backlog</h2><pre>{}</pre>",
        esc(isolation.trim())
    );

    o.push_str("<h2>Over time</h2><p>Seconds since the dispatcher started. Dashed lines: phases and kills.</p>");
    let s = &r.series;
    let series = |f: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        s.iter().filter_map(|x| f(x).map(|v| (x.t_s, v))).collect()
    };
    o.push_str(&chart(
        r,
        "throughput",
        "per second",
        false,
        &[
            (
                "deliveries accepted",
                series(|x| Some(x.deliveries_per_s)),
                BLUE,
            ),
            (
                "requests (faults included)",
                series(|x| Some(x.requests_per_s)),
                CYAN,
            ),
            ("events produced", series(|x| Some(x.produced_per_s)), GREEN),
        ],
    )?);
    o.push_str(&chart(
        r,
        "end-to-end age",
        "ms (log)",
        true,
        &[
            ("p50", series(|x| x.age_p50_ms), GREEN),
            ("p99", series(|x| x.age_p99_ms), BLUE),
            ("max", series(|x| x.age_max_ms), RED),
            ("healthy p99", series(|x| x.healthy_age_p99_ms), CYAN),
        ],
    )?);
    o.push_str(&chart(
        r,
        "dispatcher memory",
        "RSS MB",
        false,
        &[("RSS", series(|x| x.rss_mb), MAGENTA)],
    )?);
    o.push_str(&chart(
        r,
        "CPU",
        "cores",
        false,
        &[
            ("dispatcher", series(|x| x.cpu_cores), RED),
            ("load tester", series(|x| x.loadtest_cores), BLUE),
            (
                "embedded broker (of the load tester)",
                series(|x| x.broker_cores),
                GREEN,
            ),
        ],
    )?);
    if s.iter()
        .any(|x| x.backlog_deliveries.is_some_and(|b| b > 0.0))
    {
        o.push_str(&chart(
            r,
            "backlog in Kafka",
            "deliveries",
            false,
            &[(
                "waiting (dispatcher metrics)",
                series(|x| x.backlog_deliveries),
                MAGENTA,
            )],
        )?);
    }
    o.push_str("</body></html>\n");
    Ok(o)
}

/// One line chart as inline SVG.
fn chart(
    r: &Report,
    title: &'static str,
    unit: &str,
    log: bool,
    lines: &[Line<'_>],
) -> Result<String, ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError {
        chart: title,
        message: e.to_string(),
    };
    let points = lines.iter().flat_map(|(_, p, _)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    let mut y0 = f64::MAX;
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
        if y > 0.0 {
            y0 = y0.min(y);
        }
    }
    if x0 > x1 {
        return Ok(format!("<p>{title}: no samples.</p>"));
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        if log {
            let lo = if y0 == f64::MAX {
                0.01
            } else {
                (y0 / 2.0).max(0.001)
            };
            let hi = (y1 * 2.0).max(lo * 10.0);
            draw(
                &root,
                r,
                title,
                unit,
                x0..x1,
                (lo..hi).log_scale(),
                lines,
                lo,
            )
            .map_err(|e| err(&e))?;
        } else {
            let hi = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
            draw(&root, r, title, unit, x0..x1, 0f64..hi, lines, 0.0).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[allow(clippy::too_many_arguments)]
fn draw<Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    r: &Report,
    title: &str,
    unit: &str,
    xs: std::ops::Range<f64>,
    ys: Y,
    lines: &[Line<'_>],
    floor: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let (x0, x1) = (xs.start, xs.end);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(xs, ys)?;
    chart.configure_mesh().x_desc("s").y_desc(unit).draw()?;
    let (lo, hi) = {
        let r = chart.y_range();
        (r.start.max(floor), r.end)
    };
    for m in r.markers.iter().filter(|m| m.t_s >= x0 && m.t_s <= x1) {
        chart.draw_series(DashedLineSeries::new(
            vec![(m.t_s, lo), (m.t_s, hi)],
            4,
            4,
            BLACK.mix(0.3).stroke_width(1),
        ))?;
    }
    for (label, points, color) in lines {
        let color = *color;
        let pts: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(_, y)| *y >= floor)
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
