//! Maintenance windows (`maintenanceWindows` in the manifest, else the configuration's
//! `maintenance_windows`): disruptive operations that can wait (moving a master off a node
//! that is being decommissioned) wait for one. Zalando's format: `Sat:01:00-06:00` (one
//! weekday) or `01:00-06:00` (every day), UTC, not across midnight.
use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    day: Option<Weekday>,
    from: NaiveTime,
    to: NaiveTime,
}

fn parse(window: &str) -> Result<Window, String> {
    let bad = |why: &str| format!("maintenance window {window:?}: {why}");
    let (start, end) = window
        .split_once('-')
        .ok_or_else(|| bad("expected [Ddd:]HH:MM-HH:MM"))?;
    let time = |t: &str| {
        NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad("a time is not HH:MM"))
    };
    let (day, from) = match start.split_once(':') {
        Some((day, rest)) if day.len() == 3 && day.chars().all(|c| c.is_ascii_alphabetic()) => {
            let day = match day {
                "Mon" => Weekday::Mon,
                "Tue" => Weekday::Tue,
                "Wed" => Weekday::Wed,
                "Thu" => Weekday::Thu,
                "Fri" => Weekday::Fri,
                "Sat" => Weekday::Sat,
                "Sun" => Weekday::Sun,
                _ => return Err(bad("the day is none of Mon … Sun")),
            };
            (Some(day), time(rest)?)
        }
        _ => (None, time(start)?),
    };
    let to = time(end)?;
    if to < from {
        return Err(bad("the window ends before it starts"));
    }
    Ok(Window { day, from, to })
}

/// Whether a disruptive operation may run at `now` for `pg`: always when no window is set
/// (or `enable_maintenance_windows` is off), else only inside one. Windows that do not
/// parse are reported and ignored.
pub fn in_maintenance_window(
    pg: &Postgresql,
    config: &OperatorConfig,
    now: DateTime<Utc>,
) -> (bool, Vec<String>) {
    let windows = if pg.spec.maintenance_windows.is_empty() {
        &config.maintenance_windows
    } else {
        &pg.spec.maintenance_windows
    };
    if !config.enable_maintenance_windows || windows.is_empty() {
        return (true, Vec::new());
    }
    let (parsed, problems): (Vec<_>, Vec<_>) =
        windows.iter().map(|w| parse(w)).partition(Result::is_ok);
    let problems: Vec<String> = problems.into_iter().filter_map(Result::err).collect();
    let parsed: Vec<Window> = parsed.into_iter().filter_map(Result::ok).collect();
    if parsed.is_empty() {
        return (true, problems);
    }
    // Minutes, as Zalando compares them: `…-06:00` includes 06:00:59.
    let time = NaiveTime::from_hms_opt(now.hour(), now.minute(), 0).unwrap_or_default();
    let open = parsed
        .iter()
        .any(|w| w.day.is_none_or(|d| d == now.weekday()) && w.from <= time && time <= w.to);
    (open, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows() {
        let pg = |windows: &str| {
            crate::pure::roles::desired::tests::manifest(
                "acid-m",
                &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n  maintenanceWindows: [{windows}]\n"),
            )
        };
        // 2026-12-05 is a Saturday.
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 12, 5, h, m, 0).unwrap();
        let config = OperatorConfig::default();
        // (windows, now, open)
        let table = [
            ("", at(12, 0), true),
            ("\"01:00-06:00\"", at(3, 0), true),
            ("\"01:00-06:00\"", at(6, 0), true),
            ("\"01:00-06:00\"", at(6, 1), false),
            (
                "\"00:00-23:59\"",
                at(23, 59) + chrono::Duration::seconds(30),
                true,
            ),
            ("\"Sat:01:00-06:00\"", at(2, 0), true),
            ("\"Sun:01:00-06:00\"", at(2, 0), false),
            ("\"Sun:01:00-06:00\", \"Sat:10:00-11:00\"", at(10, 30), true),
        ];
        for (windows, now, open) in table {
            assert_eq!(
                in_maintenance_window(&pg(windows), &config, now).0,
                open,
                "{windows} at {now}"
            );
        }
        let off = OperatorConfig {
            enable_maintenance_windows: false,
            ..OperatorConfig::default()
        };
        assert!(in_maintenance_window(&pg("\"Sun:01:00-06:00\""), &off, at(2, 0)).0);
        let from_config = OperatorConfig {
            maintenance_windows: vec!["Sun:01:00-06:00".into()],
            ..OperatorConfig::default()
        };
        assert!(!in_maintenance_window(&pg(""), &from_config, at(2, 0)).0);
        let (open, problems) = in_maintenance_window(
            &pg("\"Xyz:01:00-06:00\", \"07:00-05:00\""),
            &config,
            at(2, 0),
        );
        assert!(open, "windows that do not parse hold nothing back");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
