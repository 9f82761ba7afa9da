/**
 * The training loop around a {@link Trainer}, as nanoGPT's train.py runs it:
 * evaluate every eval_interval steps (saving the checkpoint when val improves,
 * or always with always_save_checkpoint), log every log_interval steps, save
 * when the run ends or is stopped. Logging and metrics go through callbacks so
 * a CLI, a notebook or a test can each show them their own way.
 *
 * @module
 */

import { join } from "node:path";
import { saveCheckpoint } from "./checkpoint.ts";
import type { StepResult, Trainer } from "./trainer.ts";

/** One log line's numbers. */
export interface LogMetrics extends StepResult {
  /** Iteration just completed (0-based, nanoGPT's iter_num). */
  iteration: number;
  /** Wall-clock milliseconds per iteration since the previous log. */
  msPerIter: number;
  /** Training tokens per second since the previous log. */
  tokensPerSecond: number;
}

/** One evaluation's numbers. */
export interface EvalMetrics {
  /** Iteration at which it ran. */
  iteration: number;
  /** Mean loss on training batches. */
  trainLoss: number;
  /** Mean loss on validation batches. */
  valLoss: number;
  /** Learning rate at this iteration. */
  lr: number;
  /** Whether a checkpoint was written. */
  saved: boolean;
}

/** Callbacks and stop control of {@link runTraining}. */
export interface TrainingHooks {
  /** Every log_interval iterations. */
  onLog?: (metrics: LogMetrics) => void | Promise<void>;
  /** After each evaluation. */
  onEval?: (metrics: EvalMetrics) => void | Promise<void>;
  /** After every step (cheap: no GPU round trip), e.g. for a progress bar. */
  onStep?: (iteration: number) => void;
  /** Checked before each step: true stops the loop (the checkpoint is still saved). */
  shouldStop?: () => boolean;
}

/** How a run ended. */
export interface TrainingOutcome {
  /** Iterations completed. */
  iteration: number;
  /** Why it stopped. */
  reason: "finished" | "stopped" | "eval_only";
  /** The checkpoint file written at the end (or by eval_only: none). */
  checkpoint: string | null;
}

/**
 * Trains until max_iters (or until stopped), evaluating, logging and saving.
 *
 * @param trainer A trainer (fresh or resumed).
 * @param hooks Callbacks and a stop check.
 * @returns How it ended.
 * @example
 * ```ts
 * await runTraining(trainer, { onLog: (m) => console.log(m.iteration, m.loss) });
 * ```
 */
export async function runTraining(trainer: Trainer, hooks: TrainingHooks = {}): Promise<TrainingOutcome> {
  const { config } = trainer;
  const path = join(config.out_dir, "ckpt.safetensors");
  const save = async () => {
    await Deno.mkdir(config.out_dir, { recursive: true });
    await saveCheckpoint(path, await trainer.checkpoint());
  };
  let lastLogTime = performance.now();
  let lastLogIteration = trainer.iteration;
  while (true) {
    const iteration = trainer.iteration;
    if (iteration % config.eval_interval === 0 || config.eval_only) {
      const losses = await trainer.evaluate();
      const improved = losses.val < trainer.bestValLoss;
      if (improved) trainer.bestValLoss = losses.val;
      const saved = !config.eval_only && iteration > 0 && (improved || config.always_save_checkpoint);
      if (saved) await save();
      await hooks.onEval?.({
        iteration,
        trainLoss: losses.train,
        valLoss: losses.val,
        lr: trainer.learningRate(iteration),
        saved,
      });
      lastLogTime = performance.now(); // evaluation time is not training time
      lastLogIteration = iteration;
      if (config.eval_only) return { iteration, reason: "eval_only", checkpoint: null };
    }
    if (iteration >= config.max_iters || hooks.shouldStop?.()) break;
    const read = iteration % config.log_interval === 0 || iteration === config.max_iters - 1;
    const result = await trainer.step({ read });
    hooks.onStep?.(trainer.iteration);
    if (result) {
      const now = performance.now();
      const steps = Math.max(1, trainer.iteration - lastLogIteration);
      const msPerIter = (now - lastLogTime) / steps;
      lastLogTime = now;
      lastLogIteration = trainer.iteration;
      await hooks.onLog?.({
        ...result,
        iteration,
        msPerIter,
        tokensPerSecond: (trainer.tokensPerStep * 1000) / msPerIter,
      });
    }
  }
  await save();
  const reason = trainer.iteration >= config.max_iters ? "finished" : "stopped";
  return { iteration: trainer.iteration, reason, checkpoint: path };
}
