/**
 * Watches every optimizer step for a NaN or infinite loss or gradient norm,
 * on the GPU, without a readback per step: one single-invocation dispatch after
 * the gradient norm counts the steps it has seen, the bad ones, and which step
 * was the first bad one. The trainer reads it when it reads the loss anyway, so
 * a fault is reported with the exact iteration it happened at even when the
 * loss is only looked at every log_interval steps. (AdamW itself already skips
 * a step whose gradient norm is not finite, so the weights stay the last good
 * ones.)
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { expectDType, expectLength } from "./wgsl.ts";

/**
 * What {@link NonFiniteWatch.read} reports.
 *
 * @example
 * ```ts
 * const { steps, firstIteration } = await watch.read();
 * if (steps > 0) console.log(`${steps} steps were NaN or infinite, the first at iteration ${firstIteration}`);
 * ```
 */
export interface NonFiniteReport {
  /** Steps whose loss (or, when watched, gradient norm) was NaN or infinite, since the watch began. */
  steps: number;
  /** The iteration of the first such step, or null when there was none. */
  firstIteration: number | null;
}

/**
 * Counts non-finite steps on the GPU; create one per training run.
 *
 * @example
 * ```ts
 * const watch = new NonFiniteWatch(gpu, trainer.iteration);
 * watch.record(rec, { loss: lossSum, normSquared }); // after the gradient norm, every step
 * const report = await watch.read(); // { steps: 0, firstIteration: null } while all is well
 * ```
 */
export class NonFiniteWatch {
  /** [steps seen, bad steps, first bad step's index + 1], u32. */
  readonly state: Tensor;
  #gpu: Gpu;
  #startIteration: number;

  /**
   * Allocates the state, zeroed.
   *
   * @param gpu The device.
   * @param startIteration The iteration of the first step it will see (a resumed run's iteration).
   */
  constructor(gpu: Gpu, startIteration: number) {
    this.#gpu = gpu;
    this.#startIteration = startIteration;
    this.state = gpu.tensor([3], "u32", { label: "non-finite watch", data: [0, 0, 0] });
  }

  /**
   * Records the check of one step: its loss, and its squared gradient norm
   * unless the gradients are allowed to overflow (f16 with a loss scaler, which
   * handles that itself).
   *
   * @param rec The recorder, after the step's loss and gradient norm.
   * @param args `loss` (f32 [1]); `normSquared` (f32 [1]) to watch the gradients too.
   */
  record(rec: Recorder, args: { loss: Tensor; normSquared?: Tensor }): void {
    const { loss, normSquared } = args;
    for (const [name, tensor] of [["loss", loss], ["normSquared", normSquared]] as const) {
      if (!tensor) continue;
      expectDType("nonFiniteWatch", name, tensor, ["f32"]);
      expectLength("nonFiniteWatch", name, tensor, 1);
    }
    const watched = normSquared ? "isFinite(loss[0]) && isFinite(normSquared[0])" : "isFinite(loss[0])";
    const code = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> state: array<u32, 3>;
@group(0) @binding(1) var<storage, read> loss: array<f32, 1>;
${normSquared ? "@group(0) @binding(2) var<storage, read> normSquared: array<f32, 1>;" : ""}

fn isFinite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(1)
fn main() {
  let seen = state[0] + 1u;
  state[0] = seen;
  if (${watched}) { return; }
  if (state[1] == 0u) { state[2] = seen; }
  state[1] = state[1] + 1u;
}`;
    const label = normSquared ? "non-finite watch (loss, grad norm)" : "non-finite watch (loss)";
    const bindings = normSquared ? [this.state, loss, normSquared] : [this.state, loss];
    rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, 1);
  }

  /**
   * Reads the counts back (waits for the submitted work).
   *
   * @returns How many steps were not finite, and the first one's iteration.
   */
  async read(): Promise<NonFiniteReport> {
    const [, bad, first] = await this.#gpu.read(this.state) as Uint32Array;
    return { steps: bad, firstIteration: bad > 0 ? this.#startIteration + first - 1 : null };
  }

  /** Frees the state. */
  release(): void {
    this.#gpu.release(this.state);
  }
}
