/**
 * Loss curves from the metrics.jsonl that `deno task train` appends to: train
 * and val loss against iteration and against tokens seen, and the learning-rate
 * schedule, for one or more runs, as one SVG.
 *
 * @module
 */

import { basename, join } from "node:path";
import { DataError } from "./errors.ts";
import { type Chart, type Series, svgCharts } from "./svg_chart.ts";

/**
 * The numbers of one run's metrics.jsonl, ordered by iteration.
 *
 * @example
 * ```ts
 * const run: RunMetrics = await readRunMetrics("out");
 * console.log(run.eval.map((e) => e.valLoss));
 * ```
 */
export interface RunMetrics {
  /** Names the run in the legend (its folder). */
  name: string;
  /** Log lines: loss of the step's batch. */
  train: { iter: number; loss: number; lr: number; tokens: number }[];
  /** Evaluations: mean train and val loss. */
  eval: { iter: number; trainLoss: number; valLoss: number; lr: number; tokens: number }[];
}

/**
 * The metrics file of a run folder.
 *
 * @example
 * ```ts
 * const lines = (await Deno.readTextFile(`out/${METRICS_FILE}`)).split("\n");
 * ```
 */
export const METRICS_FILE = "metrics.jsonl";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/**
 * Reads a run's metrics.jsonl. A run resumed from an earlier checkpoint logs some
 * iterations twice: the later line wins. A torn last line (a run killed mid-write)
 * is skipped; any other line that is not a metrics record is an error.
 *
 * @param dir The run's out_dir.
 * @returns Its metrics.
 * @throws {DataError} When the file is missing or has a bad line.
 * @example
 * ```ts
 * const run = await readRunMetrics("out");
 * run.eval.at(-1)?.valLoss;
 * ```
 */
export async function readRunMetrics(dir: string): Promise<RunMetrics> {
  const path = join(dir, METRICS_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new DataError(`"${path}" not found; deno task train writes it into its --out_dir`);
    }
    throw error;
  }
  const train = new Map<number, RunMetrics["train"][number]>();
  const evals = new Map<number, RunMetrics["eval"][number]>();
  const lines = text.split("\n");
  const last = lines.findLastIndex((line) => line.trim() !== "");
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line);
    } catch {
      if (i === last && !text.endsWith("\n")) return;
      throw new DataError(`"${path}" line ${i + 1} is not JSON; delete the line or the file`);
    }
    const number = (key: string) => {
      const value = entry[key];
      if (typeof value !== "number") {
        throw new DataError(`"${path}" line ${i + 1} lacks a numeric "${key}"; delete the line or the file`);
      }
      return value;
    };
    if (entry.type === "train") {
      const iter = number("iter");
      train.set(iter, { iter, loss: number("loss"), lr: number("lr"), tokens: number("tokens") });
    } else if (entry.type === "eval") {
      const iter = number("iter");
      evals.set(iter, {
        iter,
        trainLoss: number("train_loss"),
        valLoss: number("val_loss"),
        lr: number("lr"),
        tokens: number("tokens"),
      });
    }
  });
  const byIter = <T extends { iter: number }>(values: Iterable<T>) =>
    [...values].sort((a, b) => a.iter - b.iter);
  return { name: dir, train: byIter(train.values()), eval: byIter(evals.values()) };
}

/**
 * The three panels: loss by iteration, loss by tokens, learning rate by iteration.
 *
 * @param runs One or more runs, each drawn in its own colour.
 * @returns The charts.
 * @example
 * ```ts
 * const svg = svgCharts(lossCharts([await readRunMetrics("out")]));
 * ```
 */
export function lossCharts(runs: RunMetrics[]): Chart[] {
  const labels = runLabels(runs.map((run) => run.name));
  const lossSeries = (x: "iter" | "tokens") =>
    runs.flatMap((run, i): Series[] => {
      const color = COLORS[i % COLORS.length];
      const prefix = runs.length > 1 ? `${labels[i]}: ` : "";
      return [
        {
          name: `${prefix}train (logged)`,
          color,
          width: 1,
          opacity: 0.4,
          points: run.train.map((m) => [m[x], m.loss] as [number, number]),
        },
        {
          name: `${prefix}train (eval)`,
          color,
          dash: "6 4",
          dots: true,
          points: run.eval.map((m) => [m[x], m.trainLoss] as [number, number]),
        },
        {
          name: `${prefix}val`,
          color,
          dots: true,
          points: run.eval.map((m) => [m[x], m.valLoss] as [number, number]),
        },
      ];
    });
  const lrSeries = runs.map((run, i): Series => {
    const byIter = new Map<number, number>();
    for (const m of [...run.train, ...run.eval]) byIter.set(m.iter, m.lr);
    return {
      name: runs.length > 1 ? labels[i] : "learning rate",
      color: COLORS[i % COLORS.length],
      points: [...byIter].sort((a, b) => a[0] - b[0]),
    };
  });
  const title = runs.length === 1 ? ` (${runs[0].name})` : "";
  return [
    {
      title: `Loss by iteration${title}`,
      xLabel: "iteration",
      yLabel: "loss (nats/token)",
      series: lossSeries("iter"),
    },
    {
      title: "Loss by tokens seen",
      xLabel: "tokens",
      yLabel: "loss (nats/token)",
      series: lossSeries("tokens"),
    },
    { title: "Learning-rate schedule", xLabel: "iteration", yLabel: "learning rate", series: lrSeries },
  ];
}

/**
 * Reads the runs' metrics and writes the SVG (to a temporary file, then renamed,
 * so a viewer never sees half a picture).
 *
 * @param dirs The runs' out_dirs.
 * @param path The SVG to write.
 * @returns Once the file is in place.
 * @example
 * ```ts
 * await writeLossPlot(["out", "out-big"], "loss.svg");
 * ```
 */
export async function writeLossPlot(dirs: string[], path: string): Promise<void> {
  const runs = await Promise.all(dirs.map(readRunMetrics));
  const temporary = `${path}.tmp`;
  await Deno.writeTextFile(temporary, svgCharts(lossCharts(runs)));
  await Deno.rename(temporary, path);
}

/** Legend names of runs: their folder names when those differ, else their paths' ends. */
function runLabels(dirs: string[]): string[] {
  const names = dirs.map((dir) => basename(dir) || dir);
  const distinct = new Set(names).size === names.length;
  return (distinct ? names : dirs).map((name) => name.length <= 20 ? name : "…" + name.slice(-19));
}
