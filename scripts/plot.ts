/**
 * `deno task plot`: train and val loss against iteration and tokens, and the
 * learning-rate schedule, from the metrics.jsonl of one or more runs, as an SVG.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { writeLossPlot } from "../model/loss_plot.ts";
import { runCli, UsageError } from "./cli.ts";

const USAGE = `Usage: deno task plot --out_dir DIR [DIR ...] [--svg FILE]

Draws train and val loss (by iteration and by tokens) and the learning rate of
each run's DIR/metrics.jsonl into one SVG.

Flags:
  --out_dir=DIR ...           Runs to draw (repeat the flag or list more folders after it) (default: out)
  --svg=FILE                  The SVG to write (default: DIR/loss.svg for one run, loss.svg for several)
  --help                      Show this help`;

await runCli(async () => {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: {
        out_dir: { type: "string", multiple: true },
        svg: { type: "string" },
        help: { type: "boolean" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]}; see deno task plot --help`);
  }
  if (parsed.values.help) {
    console.log(USAGE);
    return;
  }
  const dirs = [...parsed.values.out_dir ?? [], ...parsed.positionals];
  if (dirs.length === 0) dirs.push("out");
  const svg = parsed.values.svg ?? (dirs.length === 1 ? join(dirs[0], "loss.svg") : "loss.svg");
  await writeLossPlot(dirs, svg);
  console.log(`wrote ${svg} (${dirs.join(", ")})`);
});
