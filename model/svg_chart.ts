/**
 * Line charts as SVG text, with no dependencies: axes with "nice" ticks, axis
 * labels, a title and a legend. Charts are panels of one document, stacked.
 *
 * @module
 */

/**
 * One line of a chart.
 *
 * @example
 * ```ts
 * const val: Series = { name: "val", color: "#d62728", dots: true, points: [[0, 4.2], [250, 2.1]] };
 * ```
 */
export interface Series {
  /** Legend text. */
  name: string;
  /** Stroke colour (any SVG colour). */
  color: string;
  /** Dashed stroke (`stroke-dasharray`), or none for solid. */
  dash?: string;
  /** Stroke width (default 2). */
  width?: number;
  /** Stroke opacity (default 1). */
  opacity?: number;
  /** Mark each point with a dot. */
  dots?: boolean;
  /** Points, in drawing order. */
  points: [number, number][];
}

/**
 * One panel.
 *
 * @example
 * ```ts
 * const chart: Chart = { title: "Loss", xLabel: "iteration", yLabel: "loss", series: [val] };
 * ```
 */
export interface Chart {
  /** Above the plot area. */
  title: string;
  /** Under the x axis. */
  xLabel: string;
  /** Beside the y axis. */
  yLabel: string;
  /** Lines; those without points are left out. */
  series: Series[];
}

const WIDTH = 960;
const PANEL_HEIGHT = 300;
const MARGIN = { left: 80, right: 250, top: 40, bottom: 50 };

/**
 * Up to about `count` round tick values covering [min, max] (1, 2 or 5 times a power of ten apart).
 *
 * @param min Lower end.
 * @param max Upper end (> min).
 * @param count Ticks wanted.
 * @returns The ticks, ascending.
 * @example
 * ```ts
 * niceTicks(1.93, 4.1); // [2, 2.5, 3, 3.5, 4]
 * ```
 */
export function niceTicks(min: number, max: number, count = 6): number[] {
  const raw = (max - min) / Math.max(1, count - 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  return ticks;
}

function formatTick(value: number): string {
  if (value === 0) return "0";
  const size = Math.abs(value);
  if (size >= 1e6 || size < 1e-3) return value.toExponential(1).replace("e+", "e");
  if (size >= 1e3) return Number.isInteger(value) ? String(value) : value.toFixed(0);
  return String(Number(value.toPrecision(4)));
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A finite range, widened when flat so the scale has a span. */
function extent(values: number[]): [number, number] {
  let min = Math.min(...values);
  let max = Math.max(...values);
  if (min === max) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.05;
    min -= pad;
    max += pad;
  }
  return [min, max];
}

function panel(chart: Chart, top: number): string {
  const series = chart.series.filter((s) => s.points.length > 0);
  const out: string[] = [];
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const x0 = MARGIN.left;
  const y0 = top + MARGIN.top;
  out.push(
    `<text x="${x0 + plotWidth / 2}" y="${top + 24}" text-anchor="middle" font-size="16" font-weight="bold">${
      escapeXml(chart.title)
    }</text>`,
  );
  if (series.length === 0) {
    out.push(
      `<text x="${x0 + plotWidth / 2}" y="${y0 + plotHeight / 2}" text-anchor="middle">no data yet</text>`,
    );
    return out.join("\n");
  }
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const [xMin, xMax] = extent(xs);
  const [yLow, yHigh] = extent(ys);
  const yPad = (yHigh - yLow) * 0.05;
  const [yMin, yMax] = [yLow - yPad, yHigh + yPad];
  const sx = (x: number) => x0 + ((x - xMin) / (xMax - xMin)) * plotWidth;
  const sy = (y: number) => y0 + plotHeight - ((y - yMin) / (yMax - yMin)) * plotHeight;
  const at = (v: number) => v.toFixed(1);

  out.push(
    `<rect x="${x0}" y="${y0}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#888"/>`,
  );
  for (const tick of niceTicks(xMin, xMax)) {
    out.push(
      `<line x1="${at(sx(tick))}" y1="${y0}" x2="${at(sx(tick))}" y2="${y0 + plotHeight}" stroke="#eee"/>`,
      `<text x="${at(sx(tick))}" y="${y0 + plotHeight + 18}" text-anchor="middle">${formatTick(tick)}</text>`,
    );
  }
  for (const tick of niceTicks(yMin, yMax)) {
    out.push(
      `<line x1="${x0}" y1="${at(sy(tick))}" x2="${x0 + plotWidth}" y2="${at(sy(tick))}" stroke="#eee"/>`,
      `<text x="${x0 - 8}" y="${at(sy(tick) + 4)}" text-anchor="end">${formatTick(tick)}</text>`,
    );
  }
  out.push(
    `<text x="${x0 + plotWidth / 2}" y="${y0 + plotHeight + 40}" text-anchor="middle">${
      escapeXml(chart.xLabel)
    }</text>`,
    `<text transform="translate(${x0 - 60} ${y0 + plotHeight / 2}) rotate(-90)" text-anchor="middle">${
      escapeXml(chart.yLabel)
    }</text>`,
  );
  for (const s of series) {
    const style = `stroke="${s.color}" stroke-width="${s.width ?? 2}" stroke-opacity="${s.opacity ?? 1}"` +
      (s.dash ? ` stroke-dasharray="${s.dash}"` : "");
    const points = s.points.map(([x, y]) => `${at(sx(x))},${at(sy(y))}`).join(" ");
    out.push(
      `<polyline class="series" data-name="${escapeXml(s.name)}" fill="none" ${style} points="${points}"/>`,
    );
    if (s.dots) {
      for (const [x, y] of s.points) {
        out.push(`<circle cx="${at(sx(x))}" cy="${at(sy(y))}" r="2.5" fill="${s.color}"/>`);
      }
    }
  }
  const legendX = x0 + plotWidth + 16;
  out.push(`<g class="legend">`);
  const spacing = Math.min(20, (plotHeight - 8) / series.length); // many runs: a tighter legend, still in the panel
  series.forEach((s, i) => {
    const y = y0 + 8 + i * spacing;
    const style = `stroke="${s.color}" stroke-width="${s.width ?? 2}" stroke-opacity="${s.opacity ?? 1}"` +
      (s.dash ? ` stroke-dasharray="${s.dash}"` : "");
    out.push(
      `<line x1="${legendX}" y1="${at(y)}" x2="${legendX + 24}" y2="${at(y)}" ${style}/>`,
      `<text x="${legendX + 30}" y="${at(y + 4)}">${escapeXml(s.name)}</text>`,
    );
  });
  out.push(`</g>`);
  return out.join("\n");
}

/**
 * An SVG document of charts stacked top to bottom.
 *
 * @param charts The panels.
 * @returns The SVG text.
 * @example
 * ```ts
 * const svg = svgCharts([{ title: "loss", xLabel: "iteration", yLabel: "loss",
 *   series: [{ name: "train", color: "#1f77b4", points: [[0, 4.2], [100, 2.5]] }] }]);
 * ```
 */
export function svgCharts(charts: Chart[]): string {
  const height = PANEL_HEIGHT * charts.length;
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" ` +
    `font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...charts.map((chart, i) => panel(chart, i * PANEL_HEIGHT)),
    `</svg>`,
    "",
  ].join("\n");
}
