/**
 * The training loop around a {@link Trainer}, as nanoGPT's train.py runs it:
 * evaluate every eval_interval steps (saving the checkpoint when val improves,
 * or always with always_save_checkpoint), log every log_interval steps, save
 * when the run ends or is stopped. Logging and metrics go through callbacks so
 * a CLI, a notebook or a test can each show them their own way.
 *
 * @module
 */

import type { ModelConfig } from "./config.ts";
import type { StepResult } from "./trainer.ts";
import type { TrainConfig } from "./train_config.ts";

/**
 * What {@link runTraining} drives: a `Trainer`, or a `LoraTrainer`.
 *
 * @example
 * ```ts
 * const run: TrainingRun = Trainer.create(gpu, config, modelConfigFor(config, data.meta.vocab_size), data);
 * await runTraining(run);
 * ```
 */
export interface TrainingRun {
  /** The settings (out_dir, intervals, max_iters...). */
  readonly config: TrainConfig;
  /** The model trained (its architecture: the vocabulary sets what a diverged loss is). */
  readonly model: { readonly config: ModelConfig };
  /** Optimizer steps taken. */
  iteration: number;
  /** Best validation loss seen. */
  bestValLoss: number;
  /** Tokens consumed per optimizer step. */
  readonly tokensPerStep: number;
  /** The scheduled learning rate at an iteration. */
  learningRate(iteration: number): number;
  /** One optimizer step; its loss when `read`. */
  step(options?: { read?: boolean }): Promise<StepResult | null>;
  /** Mean train and val loss. */
  evaluate(): Promise<{ train: number; val: number }>;
  /** Writes what a resume needs into out_dir; returns the file a user wants (checkpoint or adapter). */
  save(): Promise<string>;
}

/**
 * One log line's numbers, passed to {@link TrainingHooks.onLog} every log_interval iterations.
 *
 * @example
 * ```ts
 * const onLog = (m: LogMetrics) => {
 *   console.log(`iter ${m.iteration}: loss ${m.loss.toFixed(4)}, lr ${m.lr}`);
 *   console.log(`${m.msPerIter.toFixed(0)} ms/iter, ${m.tokensPerSecond.toFixed(0)} tokens/s`);
 * };
 * await runTraining(trainer, { onLog });
 * ```
 */
export interface LogMetrics extends StepResult {
  /** Iteration just completed (0-based, nanoGPT's iter_num). */
  iteration: number;
  /** Wall-clock milliseconds per iteration since the previous log. */
  msPerIter: number;
  /** Training tokens per second since the previous log. */
  tokensPerSecond: number;
}

/**
 * One evaluation's numbers, passed to {@link TrainingHooks.onEval} every eval_interval iterations.
 *
 * @example
 * ```ts
 * const onEval = (m: EvalMetrics) => {
 *   const saved = m.saved ? " (checkpoint saved)" : "";
 *   console.log(`step ${m.iteration}: train ${m.trainLoss.toFixed(4)}, val ${m.valLoss.toFixed(4)}${saved}`);
 * };
 * await runTraining(trainer, { onEval });
 * ```
 */
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

/**
 * Callbacks and stop control of {@link runTraining}: how a CLI, a notebook or a
 * test sees progress and ends a run early.
 *
 * @example
 * ```ts
 * let stop = false;
 * Deno.addSignalListener("SIGINT", () => stop = true); // Ctrl-C: save and stop
 * const hooks: TrainingHooks = { onEval: (m) => console.log(m.valLoss), shouldStop: () => stop };
 * await runTraining(trainer, hooks);
 * ```
 */
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

/**
 * How a {@link runTraining} run ended, and where its checkpoint went.
 *
 * @example
 * ```ts
 * const outcome: TrainingOutcome = await runTraining(trainer);
 * console.log(`${outcome.reason} at ${outcome.iteration}`, outcome.checkpoint ?? "(nothing saved)");
 * ```
 */
export interface TrainingOutcome {
  /** Iterations completed. */
  iteration: number;
  /** Why it stopped. */
  reason: "finished" | "stopped" | "eval_only";
  /** The checkpoint file written at the end (or by eval_only: none). */
  checkpoint: string | null;
}

/**
 * A run that went wrong numerically: a NaN or infinite loss or gradient (without
 * `skip_nonfinite`), or a loss that diverged. Nothing is saved when it is thrown,
 * so out_dir keeps the last good checkpoint.
 *
 * @example
 * ```ts
 * try {
 *   await runTraining(trainer);
 * } catch (error) {
 *   if (error instanceof TrainingFault) console.error(`stopped at ${error.iteration}: ${error.message}`);
 *   else throw error;
 * }
 * ```
 */
export class TrainingFault extends Error {
  /** The iteration at which the fault happened. */
  readonly iteration: number;

  /**
   * Creates the error.
   *
   * @param message One line: what happened, where the last good checkpoint is, and what to change.
   * @param iteration The iteration at which it happened.
   */
  constructor(message: string, iteration: number) {
    super(message);
    this.name = "TrainingFault";
    this.iteration = iteration;
  }
}

/**
 * Trains until max_iters (or until stopped), evaluating, logging and saving.
 *
 * @param trainer A trainer (fresh or resumed), full or LoRA.
 * @param hooks Callbacks and a stop check.
 * @returns How it ended.
 * @throws {TrainingFault} On a NaN or infinite loss or gradient (unless `skip_nonfinite`), or a diverged loss.
 * @example
 * ```ts
 * await runTraining(trainer, { onLog: (m) => console.log(m.iteration, m.loss) });
 * ```
 */
export async function runTraining(trainer: TrainingRun, hooks: TrainingHooks = {}): Promise<TrainingOutcome> {
  const { config } = trainer;
  let lastLogTime = performance.now();
  let lastLogIteration = trainer.iteration;
  let firstLoss: number | null = null;
  while (true) {
    const iteration = trainer.iteration;
    if (iteration % config.eval_interval === 0 || config.eval_only) {
      const losses = await trainer.evaluate();
      const improved = losses.val < trainer.bestValLoss;
      if (improved) trainer.bestValLoss = losses.val;
      const saved = !config.eval_only && iteration > 0 && (improved || config.always_save_checkpoint);
      if (saved) await trainer.save();
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
      firstLoss ??= result.loss;
      checkHealth(trainer, result, iteration, firstLoss);
    }
  }
  const path = await trainer.save();
  const reason = trainer.iteration >= config.max_iters ? "finished" : "stopped";
  return { iteration: trainer.iteration, reason, checkpoint: path };
}

/**
 * Throws a {@link TrainingFault} for a non-finite step (unless skipped by
 * config) or a loss one nat worse than both guessing uniformly and where this
 * run started.
 */
function checkHealth(trainer: TrainingRun, result: StepResult, iteration: number, firstLoss: number): void {
  const { config } = trainer;
  const advice =
    `lower learning_rate (now ${config.learning_rate}) or raise warmup_iters (now ${config.warmup_iters})`;
  const kept = `nothing was saved since, so ${config.out_dir} keeps the last good checkpoint (if any)`;
  const { steps, firstIteration } = result.nonFinite;
  if (steps > 0 && !config.skip_nonfinite) {
    throw new TrainingFault(
      `The loss or gradient became NaN or infinite at iteration ${firstIteration}; that step changed no weight; ` +
        `${kept}; ${advice}, or pass --skip_nonfinite=true to skip such steps`,
      firstIteration!,
    );
  }
  const limit = Math.max(Math.log(trainer.model.config.vocab_size), firstLoss) + 1;
  if (result.loss > limit) {
    throw new TrainingFault(
      `Training diverged at iteration ${iteration}: loss ${result.loss.toFixed(3)} is above ${
        limit.toFixed(3)
      } ` +
        `(one nat worse than guessing uniformly and than where the run started); ${kept}; ${advice}`,
      iteration,
    );
  }
}
