//! The overview's chart: violations per day over the last 30 days, stacked by rule, drawn on
//! the server as SVG shapes (no script, no style attributes: the Content-Security-Policy stays
//! strict). Each bar segment carries a `<title>` (its day, rule and count), and the page shows
//! the same numbers as a table.

use std::collections::BTreeMap;

/// Days shown.
pub const DAYS: i64 = 30;

/// Colours for the rules (the most frequent first), each at least 3:1 against white (WCAG
/// non-text contrast), told apart by hue and lightness; the rest are grey.
const PALETTE: &[&str] = &[
    "#0b5cad", "#b34700", "#00785a", "#a3316f", "#5e3c99", "#7a6300",
];
const OTHER: &str = "#5f6368";

/// One stacked segment.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Left edge.
    pub x: String,
    /// Top edge.
    pub y: String,
    /// Width.
    pub w: String,
    /// Height.
    pub h: String,
    /// Fill colour.
    pub fill: &'static str,
    /// Tooltip and accessible name: day, rule, count.
    pub title: String,
}

/// A label on an axis.
#[derive(Debug, Clone)]
pub struct Tick {
    /// Position (x for days, y for counts).
    pub at: String,
    /// Text.
    pub label: String,
}

/// A legend entry.
#[derive(Debug, Clone)]
pub struct Legend {
    /// Colour.
    pub fill: &'static str,
    /// Rule id (or "other rules").
    pub label: String,
    /// Violations over the 30 days.
    pub total: u64,
}

/// One row of the table that goes with the chart.
#[derive(Debug, Clone)]
pub struct DayRow {
    /// The date.
    pub date: String,
    /// Count per legend entry, in legend order.
    pub counts: Vec<u64>,
    /// All rules.
    pub total: u64,
}

/// The chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Width of the drawing.
    pub width: u32,
    /// Height of the drawing.
    pub height: u32,
    /// Bottom of the plot area.
    pub base: String,
    /// Left edge of the plot area.
    pub left: String,
    /// Right edge of the plot area.
    pub right: String,
    /// Segments.
    pub bars: Vec<Bar>,
    /// Day labels.
    pub x_ticks: Vec<Tick>,
    /// Count labels (with grid lines).
    pub y_ticks: Vec<Tick>,
    /// Legend.
    pub legend: Vec<Legend>,
    /// The same numbers, day by day.
    pub table: Vec<DayRow>,
    /// All violations shown.
    pub total: u64,
    /// First and last day shown.
    pub span: String,
}

/// The date (YYYY-MM-DD, UTC) of a day number (days since 1970-01-01).
pub fn date(day: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((day.max(0) as u64) * 86_400);
    interdict_event::rfc3339(t)[..10].to_string()
}

/// The top of the count axis: four equal steps, each a whole number up to 5, then 1, 2, 2.5 or
/// 5 times a power of ten; at least `v`.
fn nice_ceiling(v: u64) -> u64 {
    let need = v.div_ceil(4).max(1);
    if need <= 5 {
        return need * 4;
    }
    let mut p = 10u64;
    loop {
        for step in [p, 2 * p, 5 * p / 2, 5 * p] {
            if step >= need {
                return step * 4;
            }
        }
        p *= 10;
    }
}

/// Build the chart from (day, rule, count) rows, for the [`DAYS`] days ending with `today`.
pub fn build(rows: &[(i64, String, u64)], today: i64) -> Chart {
    let first = today - DAYS + 1;
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for (d, r, n) in rows.iter().filter(|x| x.0 >= first && x.0 <= today) {
        let _ = d;
        *totals.entry(r.as_str()).or_default() += n;
    }
    let mut ranked: Vec<(&str, u64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let named = if ranked.len() > PALETTE.len() {
        PALETTE.len() - 1
    } else {
        ranked.len()
    };
    let mut legend: Vec<Legend> = ranked
        .iter()
        .take(named)
        .enumerate()
        .map(|(i, (r, n))| Legend {
            fill: PALETTE[i],
            label: if r.is_empty() {
                "(no rule)".into()
            } else {
                r.to_string()
            },
            total: *n,
        })
        .collect();
    let slot = |rule: &str| -> usize {
        ranked
            .iter()
            .take(named)
            .position(|(r, _)| *r == rule)
            .unwrap_or(named)
    };
    if ranked.len() > named {
        legend.push(Legend {
            fill: OTHER,
            label: "other rules".into(),
            total: ranked[named..].iter().map(|x| x.1).sum(),
        });
    }
    let mut grid = vec![vec![0u64; legend.len()]; DAYS as usize];
    for (d, r, n) in rows.iter().filter(|x| x.0 >= first && x.0 <= today) {
        grid[(d - first) as usize][slot(r)] += n;
    }
    let (width, height) = (960u32, 240u32);
    let (left, right, top, bottom) = (56.0f64, 12.0f64, 12.0f64, 36.0f64);
    let plot_w = width as f64 - left - right;
    let plot_h = height as f64 - top - bottom;
    let max_day = grid
        .iter()
        .map(|d| d.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let ceil = nice_ceiling(max_day);
    let step = plot_w / DAYS as f64;
    let bw = step * 0.72;
    let base = top + plot_h;
    let f = |v: f64| format!("{v:.1}");
    let mut bars = Vec::new();
    let mut table = Vec::new();
    for (i, counts) in grid.iter().enumerate() {
        let day = first + i as i64;
        let x = left + step * i as f64 + (step - bw) / 2.0;
        let mut y = base;
        for (j, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let h = plot_h * n as f64 / ceil as f64;
            y -= h;
            bars.push(Bar {
                x: f(x),
                y: f(y),
                w: f(bw),
                h: f(h.max(0.5)),
                fill: legend[j].fill,
                title: format!(
                    "{}: {} violation{} of {}",
                    date(day),
                    n,
                    if n == 1 { "" } else { "s" },
                    legend[j].label
                ),
            });
        }
        table.push(DayRow {
            date: date(day),
            total: counts.iter().sum(),
            counts: counts.clone(),
        });
    }
    let x_ticks = (0..DAYS)
        .filter(|i| (DAYS - 1 - i) % 5 == 0)
        .map(|i| Tick {
            at: f(left + step * i as f64 + step / 2.0),
            label: date(first + i)[5..].to_string(),
        })
        .collect();
    let y_ticks = (0..=4)
        .map(|k| Tick {
            at: f(base - plot_h * k as f64 / 4.0),
            label: (ceil * k / 4).to_string(),
        })
        .collect();
    Chart {
        width,
        height,
        base: f(base),
        left: f(left),
        right: f(width as f64 - right),
        bars,
        x_ticks,
        y_ticks,
        total: legend.iter().map(|l| l.total).sum(),
        legend,
        table,
        span: format!("{} to {}", date(first), date(today)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_by_rule_and_folds_the_rest_into_other() {
        let today = 20_000;
        let mut rows = vec![(today, "a".to_string(), 7), (today - 1, "b".to_string(), 3)];
        for (i, r) in ["c", "d", "e", "f", "g", "h"].iter().enumerate() {
            rows.push((today - 2, r.to_string(), 1 + i as u64));
        }
        rows.push((today - 40, "a".to_string(), 1000)); // outside the 30 days
        let c = build(&rows, today);
        assert_eq!(c.total, 7 + 3 + 21);
        assert_eq!(c.legend.len(), PALETTE.len());
        assert_eq!(c.legend[0].label, "a");
        assert_eq!(c.legend.last().unwrap().label, "other rules");
        assert_eq!(c.table.len(), DAYS as usize);
        assert_eq!(c.table.last().unwrap().total, 7);
        assert_eq!(c.table.iter().map(|d| d.total).sum::<u64>(), c.total);
        assert_eq!(nice_ceiling(0), 4);
        assert_eq!(nice_ceiling(7), 8);
        assert_eq!(nice_ceiling(101), 200);
        assert_eq!(nice_ceiling(1000), 1000);
        assert_eq!(nice_ceiling(9), 12);
        assert_eq!(nice_ceiling(21), 40);
        assert_eq!(date(0), "1970-01-01");
    }
}
