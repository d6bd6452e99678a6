//! The bar chart, drawn with plotters' SVG backend: text goes out as `<text>` elements, so no
//! font files or fontconfig are needed on the machine that draws it.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One panel: a title and one bar per engine (`None` bars are left out).
pub struct Panel {
    /// Panel title, e.g. "small: write MB/s".
    pub title: String,
    /// `(engine short name, figure)`.
    pub bars: Vec<(String, Option<f64>)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0xe7, 0x29, 0x8a),
    RGBColor(0x66, 0xa6, 0x1e),
    RGBColor(0x66, 0x66, 0x66),
];

/// Draws `panels` in a grid of `cols` columns into the SVG file `path`.
pub fn draw(path: &Path, heading: &str, panels: &[Panel], cols: usize) -> Result<()> {
    let rows = panels.len().div_ceil(cols).max(1);
    let size = (380 * cols as u32, 260 * rows as u32 + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (top, body) = root.split_vertically(40);
    top.titled(heading, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e:?}"))?;
    let areas = body.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let n = panel.bars.len() as u32;
        let ymax = panel
            .bars
            .iter()
            .filter_map(|(_, v)| *v)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(52)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..ymax)
            .map_err(|e| anyhow!("{e:?}"))?;
        let names: Vec<&str> = panel.bars.iter().map(|(s, _)| s.as_str()).collect();
        let fmt_x = |x: &SegmentValue<u32>| match x {
            SegmentValue::CenterOf(i) => names.get(*i as usize).copied().unwrap_or("").to_owned(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&fmt_x)
            .x_label_style(("sans-serif", 10))
            .y_label_style(("sans-serif", 10))
            .y_label_formatter(&|y| crate::report::num(*y))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .margin(4)
                    .style_func(|x, _| match x {
                        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => {
                            COLORS[*i as usize % COLORS.len()].filled()
                        }
                        SegmentValue::Last => BLACK.filled(),
                    })
                    .data(
                        panel
                            .bars
                            .iter()
                            .enumerate()
                            .filter_map(|(i, (_, v))| v.map(|v| (i as u32, v))),
                    ),
            )
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}
