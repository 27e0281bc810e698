//! The GPU probe: `nvidia-smi --query-gpu=index,uuid,name,temperature.gpu,utilization.gpu,
//! memory.used,memory.total --format=csv,noheader,nounits`.
//!
//! Fields a GPU does not report come as `[N/A]`, `[Not Supported]` or
//! `[Insufficient Permissions]` and are left out; a name may hold commas (`NVIDIA A100, Rev
//! 2`), so a row is split from both ends around it.

/// The `--query-gpu` fields, in order.
pub const QUERY: &str = "index,uuid,name,temperature.gpu,utilization.gpu,memory.used,memory.total";

/// One GPU's reading.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub temperature_c: Option<f64>,
    pub utilization_pct: Option<f64>,
    pub memory_used_mb: Option<f64>,
    pub memory_total_mb: Option<f64>,
}

/// A value, or `None` for a placeholder; tolerant of units left in (`65 %`, `7234 MiB`).
fn value(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.starts_with('[') {
        return None;
    }
    let num = s.split_whitespace().next()?;
    num.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses nvidia-smi's output; rows that do not have the queried shape are skipped and
/// returned as errors for logging.
pub fn parse(output: &str) -> (Vec<GpuReading>, Vec<String>) {
    let mut gpus = Vec::new();
    let mut bad = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 7 {
            bad.push(line.to_string());
            continue;
        }
        let n = fields.len();
        let Ok(index) = fields[0].parse::<u32>() else {
            bad.push(line.to_string());
            continue;
        };
        gpus.push(GpuReading {
            index,
            uuid: fields[1].to_string(),
            name: fields[2..n - 4].join(", "),
            temperature_c: value(fields[n - 4]),
            utilization_pct: value(fields[n - 3]),
            memory_used_mb: value(fields[n - 2]),
            memory_total_mb: value(fields[n - 1]),
        });
    }
    (gpus, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rows in the shapes nvidia-smi prints (see fixtures/nvidia-smi/).
    #[test]
    fn parses_rows_placeholders_and_commas_in_names() {
        let out = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/nvidia-smi/query-gpu.csv"
        ))
        .unwrap();
        let (g, bad) = parse(&out);
        assert_eq!(bad, vec!["garbage line".to_string()]);
        assert_eq!(g.len(), 4);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].name, "NVIDIA GeForce RTX 3090");
        assert_eq!(g[0].temperature_c, Some(65.0));
        assert_eq!(g[0].utilization_pct, Some(98.0));
        assert_eq!(g[0].memory_used_mb, Some(22000.0));
        assert_eq!(g[0].memory_total_mb, Some(24576.0));
        assert_eq!(g[1].name, "NVIDIA A100, Rev 2");
        assert_eq!(g[1].temperature_c, Some(93.0));
        assert_eq!(g[2].memory_used_mb, None);
        assert_eq!(g[2].memory_total_mb, None);
        assert_eq!(g[2].temperature_c, Some(51.0));
        assert_eq!(g[3].utilization_pct, None);
        assert_eq!(g[3].uuid, "GPU-5a1c2d3e-0000-1111-2222-333344445555");
    }
}
