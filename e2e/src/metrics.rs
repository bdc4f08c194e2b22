//! Counters read from Prometheus' text format: pgop's `/metrics` and the API server's.

/// The labels of one series (`key="value",…`).
pub struct Labels<'a>(&'a str);

impl<'a> Labels<'a> {
    /// The value of `key`, empty when the series doesn't carry it.
    pub fn get(&self, key: &str) -> &'a str {
        self.0
            .split(',')
            .find_map(|l| l.strip_prefix(key)?.strip_prefix("=\""))
            .map(|v| v.trim_end_matches('"'))
            .unwrap_or_default()
    }
}

/// Every series of the counter `name` in `metrics`, with its value.
pub fn samples<'a>(metrics: &'a str, name: &'a str) -> impl Iterator<Item = (Labels<'a>, u64)> {
    metrics.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        // The API server writes large counts as floats (`1.2e+06`).
        let value = value.trim().parse::<f64>().ok()?;
        Some((Labels(labels), value as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_one_counter_with_and_without_labels() {
        let text = "# TYPE x_total counter\n\
                    x_total{verb=\"GET\",resource=\"pods\"} 3\n\
                    x_total{verb=\"PATCH\",resource=\"pods\",subresource=\"status\"} 1.5e+03\n\
                    x_total_other{verb=\"GET\"} 7\n\
                    x_total 2\n";
        let got: Vec<(String, String, u64)> = samples(text, "x_total")
            .map(|(l, v)| (l.get("verb").into(), l.get("subresource").into(), v))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GET".into(), "".into(), 3),
                ("PATCH".into(), "status".into(), 1500),
                ("".into(), "".into(), 2),
            ]
        );
    }
}
