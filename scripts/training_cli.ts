/**
 * What `train` and `finetune` show while a run goes: a progress bar, a log line
 * every log_interval steps and one per evaluation, the same records appended to
 * `<out_dir>/metrics.jsonl` (so `deno task plot` draws either), the loss plot
 * redrawn at each evaluation, Ctrl-C to save and stop, and — if the device is
 * lost — which checkpoint on disk is intact.
 *
 * @module
 */

import { join } from "node:path";
import { DeviceLostError, GpuError } from "../kernels/errors.ts";
import { type KernelTuning, timeTuning, tuningLine } from "../kernels/tune.ts";
import { writeLossPlot } from "../model/loss_plot.ts";
import { type LogMetrics, runTraining, type TrainingOutcome, type TrainingRun } from "../model/train_loop.ts";
import { tunesKernels } from "../model/train_config.ts";
import { formatDuration, ProgressBar } from "./progress.ts";

/** How {@link trainWithProgress} reports. */
export interface ProgressOptions {
  /** What a save writes, for messages ("checkpoint", "adapter"). */
  saves: string;
  /** The file a save writes, for the device-lost message. */
  savePath: string;
  /** The run resumed from a save at its current iteration. */
  resumed: boolean;
  /** The flag that continues a saved run ("--init_from=resume", "--resume"). */
  resumeFlag: string;
  /**
   * The run is on a software adapter: say that its first steps compile the kernels
   * (up to a minute there the first time on a machine, where a GPU takes moments),
   * as nanoGPT does when it compiles, so a first run is not a silent wait; and
   * leave the kernels untuned unless `tune_kernels` is "on".
   */
  softwareAdapter: boolean;
  /** More for a log line: text appended to it and fields added to its record (e.g. MFU). */
  logExtras?: (metrics: LogMetrics) => { text: string; fields: Record<string, unknown> };
}

/**
 * Runs `trainer` to the end as the CLIs show it; see the module doc.
 *
 * @param trainer A full or LoRA trainer.
 * @param options Names for messages, and extra log fields.
 * @returns How the run ended.
 */
export async function trainWithProgress(
  trainer: TrainingRun & { tuneKernels(): Promise<KernelTuning[]> },
  options: ProgressOptions,
): Promise<TrainingOutcome> {
  const { config } = trainer;
  await Deno.mkdir(config.out_dir, { recursive: true });
  const metrics = await Deno.open(join(config.out_dir, "metrics.jsonl"), { append: true, create: true });
  const record = (entry: Record<string, unknown>) =>
    metrics.writeSync(new TextEncoder().encode(JSON.stringify(entry) + "\n"));
  let stop = false;
  const interrupt = () => {
    stop = true;
  };
  Deno.addSignalListener("SIGINT", interrupt);
  const bar = new ProgressBar(config.max_iters, trainer.iteration, Deno.stderr.isTerminal());
  if (options.softwareAdapter) {
    bar.print(
      "compiling the kernels as they are first used (on a software adapter up to a minute the first time)",
    );
  }
  const started = performance.now();
  let savedAt: number | null = options.resumed ? trainer.iteration : null;
  try {
    if (tunesKernels(config, options.softwareAdapter) && !config.eval_only) {
      const tuning = await timeTuning(() => trainer.tuneKernels());
      bar.print(tuningLine(tuning));
      record({ type: "tune", ...tuning });
    }
    const outcome = await runTraining(trainer, {
      shouldStop: () => stop,
      onStep: (iteration) => bar.update(iteration),
      onLog: (m) => {
        const extras = options.logExtras?.(m) ?? { text: "", fields: {} };
        bar.print(
          `iter ${m.iteration}: loss ${m.loss.toFixed(4)}, lr ${m.lr.toExponential(2)}, ` +
            `${m.msPerIter.toFixed(1)} ms/iter, ${Math.round(m.tokensPerSecond)} tok/s${extras.text}` +
            (m.nonFinite.steps > 0 ? `, non-finite steps: ${m.nonFinite.steps}` : ""),
        );
        record({
          type: "train",
          iter: m.iteration,
          loss: m.loss,
          lr: m.lr,
          grad_norm: m.gradNorm,
          ms_per_iter: m.msPerIter,
          tokens_per_s: m.tokensPerSecond,
          ...extras.fields,
          tokens: (m.iteration + 1) * trainer.tokensPerStep,
          ...(m.lossScale ? { loss_scale: m.lossScale.scale, skipped_steps: m.lossScale.skipped } : {}),
          ...(m.nonFinite.steps > 0 ? { nonfinite_steps: m.nonFinite.steps } : {}),
        });
      },
      onEval: async (m) => {
        if (m.saved) savedAt = m.iteration;
        bar.print(
          `step ${m.iteration}: train loss ${m.trainLoss.toFixed(4)}, val loss ${m.valLoss.toFixed(4)}` +
            (m.saved ? ` (saved to ${config.out_dir})` : ""),
        );
        record({
          type: "eval",
          iter: m.iteration,
          train_loss: m.trainLoss,
          val_loss: m.valLoss,
          lr: m.lr,
          tokens: m.iteration * trainer.tokensPerStep,
        });
        await refreshPlot(config.out_dir, (line) => bar.print(line));
      },
    });
    bar.clear();
    const took = formatDuration((performance.now() - started) / 1000);
    if (outcome.reason === "stopped") {
      console.log(
        `interrupted at iteration ${outcome.iteration}; ${options.saves} saved to ${outcome.checkpoint}`,
      );
    } else if (outcome.checkpoint) {
      console.log(
        `done: ${outcome.iteration} iterations in ${took}; ${options.saves} saved to ${outcome.checkpoint}`,
      );
    }
    return outcome;
  } catch (error) {
    bar.clear();
    if (!(error instanceof DeviceLostError)) throw error;
    // The weights on the device are gone; say what is safe on disk and how to go on.
    throw new GpuError(
      `${error.message}; ` +
        (savedAt === null
          ? `no ${options.saves} of this run was saved yet`
          : `${options.savePath} from iteration ${savedAt} is intact: continue with ${options.resumeFlag}`),
    );
  } finally {
    Deno.removeSignalListener("SIGINT", interrupt);
    metrics.close();
  }
}

/** Redraws `<out_dir>/loss.svg`; a failure is a note, never the end of a run. */
async function refreshPlot(outDir: string, print: (line: string) => void): Promise<void> {
  try {
    await writeLossPlot([outDir], join(outDir, "loss.svg"));
  } catch (error) {
    print(`note: could not redraw ${join(outDir, "loss.svg")}: ${(error as Error).message}`);
  }
}
