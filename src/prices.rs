//! What the instance costs: the price history arvados-dispatch-cloud hands `--list` on
//! stdin (Go's `[]cloud.InstancePrice`: `[{"StartTime": RFC 3339, "Price": per hour}]`),
//! kept in the lock directory for the runs on this host, and the cost of a run from it, as
//! Go's `calculateCost` reckons: each price from its start until the next, back to the run's
//! start; before the oldest known price, the oldest. Without a history, the price of the
//! `InstanceType` record the dispatcher passed in the stdin config.

use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

/// One point of the price history: the price per hour from `start` on.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePrice {
    pub start: SystemTime,
    pub price: f64,
}

/// Parse Go's JSON price history.
pub fn parse_prices(text: &[u8]) -> Result<Vec<InstancePrice>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = value.as_array().ok_or("not a JSON array")?;
    items
        .iter()
        .map(|item| {
            let start = item["StartTime"]
                .as_str()
                .ok_or("an entry has no StartTime string")?;
            let start = humantime::parse_rfc3339_weak(start)
                .map_err(|e| format!("StartTime {start:?}: {e}"))?;
            let price = item["Price"]
                .as_f64()
                .ok_or("an entry has no Price number")?;
            Ok(InstancePrice { start, price })
        })
        .collect()
}

/// Newest first, one price per start time (the first given wins), as Go's
/// `NormalizePriceHistory`.
pub fn normalize(mut prices: Vec<InstancePrice>) -> Vec<InstancePrice> {
    prices.sort_by_key(|p| std::cmp::Reverse(p.start));
    prices.dedup_by(|later, kept| later.start == kept.start);
    prices
}

/// The `Price` of the `InstanceType` record (JSON text), when it has a positive one.
pub fn instance_type_price(instance_type: &str) -> Option<f64> {
    let value: Value = serde_json::from_str(instance_type).ok()?;
    value["Price"].as_f64().filter(|p| *p > 0.0)
}

/// The cost of a run from `started` to `now`, from a normalized history (newest first),
/// else at `fallback` per hour. None when no price is known at all.
pub fn cost(
    history: &[InstancePrice],
    fallback: Option<f64>,
    started: SystemTime,
    now: SystemTime,
) -> Option<f64> {
    let hours = |from: SystemTime, to: SystemTime| {
        to.duration_since(from)
            .map_or(0.0, |d| d.as_secs_f64() / 3600.0)
    };
    if history.is_empty() {
        return fallback.map(|price| price * hours(started, now));
    }
    let mut total = 0.0;
    let mut span_end = now;
    for (i, point) in history.iter().enumerate() {
        // A price from the future (possible in principle) does not count yet.
        if point.start > now {
            continue;
        }
        // The oldest known price stands for the time before it, too.
        let oldest = i + 1 == history.len();
        if point.start <= started || oldest {
            total += point.price * hours(started, span_end);
            break;
        }
        total += point.price * hours(point.start, span_end);
        span_end = point.start;
    }
    Some(total)
}

/// Keep the price history `--list` was given for the runs on this host: written whole,
/// then renamed into place, so a run never reads half of it.
pub fn keep_prices(file: &Path, text: &[u8]) -> io::Result<()> {
    parse_prices(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = file.with_extension(format!("json~{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The price history kept in `file`; an empty one when there is no file.
pub fn load_prices(file: &Path) -> Result<Vec<InstancePrice>, String> {
    match std::fs::read(file) {
        Ok(text) => parse_prices(&text).map(normalize),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// `price` as Go's `%#.3g` prints it (crunch-run.txt's `Instance price changed to …`):
/// three significant digits, trailing zeros kept, exponent form below 1e-4 and from 1000.
pub fn price_text(price: f64) -> String {
    if price == 0.0 || !price.is_finite() {
        return match price == 0.0 {
            true => "0.00".into(),
            false => price.to_string(),
        };
    }
    // The exponent after rounding to three digits (9.9951 is 10.0, not 9.99…).
    let exponent = format!("{price:.2e}")
        .rsplit_once('e')
        .and_then(|(_, e)| e.parse::<i32>().ok())
        .unwrap_or(0);
    if !(-4..3).contains(&exponent) {
        let text = format!("{price:.2e}");
        let (mantissa, _) = text.split_once('e').unwrap_or((&text, ""));
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let decimals = (2 - exponent) as usize;
    match decimals {
        0 => format!("{price:.0}."),
        _ => format!("{price:.decimals$}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + HOUR * hours as u32
    }

    fn point(hours: u64, price: f64) -> InstancePrice {
        InstancePrice {
            start: at(hours),
            price,
        }
    }

    #[test]
    fn go_price_history_parses_and_normalizes_newest_first() {
        let text = br#"[{"StartTime":"2026-01-01T00:00:00Z","Price":0.5},
                        {"StartTime":"2026-01-01T02:00:00.5Z","Price":0.75},
                        {"StartTime":"2026-01-01T00:00:00Z","Price":9}]"#;
        let prices = normalize(parse_prices(text).unwrap());
        assert_eq!(prices.len(), 2);
        assert_eq!(prices[0].price, 0.75);
        assert_eq!(prices[1].price, 0.5, "the first of one start time wins");
        assert!(parse_prices(b"{}").is_err());
        assert!(parse_prices(br#"[{"StartTime":"yesterday","Price":1}]"#).is_err());
    }

    #[test]
    fn cost_adds_each_price_over_its_span_and_the_oldest_stands_for_before() {
        // Run from hour 0 to hour 4; 1.0/h from hour 1, 3.0/h from hour 3, known only then.
        let history = normalize(vec![point(1, 1.0), point(3, 3.0)]);
        let cost = cost(&history, Some(100.0), at(0), at(4)).unwrap();
        // hour 3-4 at 3.0, hour 1-3 at 1.0, hour 0-1 at the oldest (1.0).
        assert!((cost - (3.0 + 2.0 + 1.0)).abs() < 1e-9, "{cost}");
        // A price from before the run counts from the run's start only.
        let cost_b = super::cost(&[point(0, 2.0)], None, at(1), at(3)).unwrap();
        assert!((cost_b - 4.0).abs() < 1e-9, "{cost_b}");
        // A price from the future is not counted.
        let future = normalize(vec![point(0, 1.0), point(9, 50.0)]);
        let cost_c = super::cost(&future, None, at(0), at(2)).unwrap();
        assert!((cost_c - 2.0).abs() < 1e-9, "{cost_c}");
    }

    #[test]
    fn without_history_the_instance_type_price_is_used() {
        let price = instance_type_price(r#"{"Name":"m5","Price":0.25,"VCPUs":2}"#);
        assert_eq!(price, Some(0.25));
        let cost = cost(&[], price, at(0), at(2)).unwrap();
        assert!((cost - 0.5).abs() < 1e-9);
        assert_eq!(super::cost(&[], None, at(0), at(2)), None);
        assert_eq!(instance_type_price(r#"{"Price":0}"#), None);
        assert_eq!(instance_type_price("not json"), None);
    }

    #[test]
    fn kept_prices_are_read_back_and_bad_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crunch-run-prices.json");
        assert_eq!(load_prices(&file).unwrap(), vec![]);
        keep_prices(
            &file,
            br#"[{"StartTime":"2026-01-01T00:00:00Z","Price":0.5}]"#,
        )
        .unwrap();
        assert_eq!(load_prices(&file).unwrap()[0].price, 0.5);
        assert!(keep_prices(&file, b"nonsense").is_err());
        assert_eq!(load_prices(&file).unwrap()[0].price, 0.5, "left as it was");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn prices_print_as_go_s_sharp_3g() {
        for (price, go) in [
            (0.5, "0.500"),
            (1.234, "1.23"),
            (12.5, "12.5"),
            (123.4, "123."),
            (9.9951, "10.0"),
            (999.6, "1.00e+03"),
            (3600.0, "3.60e+03"),
            (0.0001234, "0.000123"),
            (0.00001234, "1.23e-05"),
            (0.0, "0.00"),
        ] {
            assert_eq!(price_text(price), go, "{price}");
        }
    }
}
