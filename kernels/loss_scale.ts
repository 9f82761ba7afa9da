/**
 * Dynamic loss scaling for f16 training (PyTorch's GradScaler scheme), kept on
 * the GPU so a step needs no readback: the loss gradient is multiplied by a
 * scale S so small f16 gradients do not flush to zero; AdamW divides S back out
 * and skips the step when the gradient norm is not finite; then this kernel
 * halves S after an overflow, or doubles it after `growthInterval` good steps.
 *
 * The state is one f32 tensor: [S, good steps in a row, skipped steps in all,
 * the S the last step used]. Counters are exact in f32 up to 2^24.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { declare, expectDType, expectLength, float } from "./wgsl.ts";

/**
 * Settings of a {@link LossScaler}: where the scale starts, how fast it grows
 * back after an overflow, and its bounds. The defaults are PyTorch's GradScaler's.
 *
 * @example
 * ```ts
 * const options: LossScalerOptions = { initialScale: 2 ** 12, growthInterval: 500 };
 * const scaler = new LossScaler(gpu, options); // doubles after 500 good steps in a row
 * ```
 */
export interface LossScalerOptions {
  /** Starting scale. Default 2^16. */
  initialScale?: number;
  /** Good steps before the scale doubles. Default 2000. */
  growthInterval?: number;
  /** The scale never falls below this. Default 1. */
  minScale?: number;
  /** The scale never grows past this. Default 2^24. */
  maxScale?: number;
}

/**
 * The scaler's state as {@link LossScaler.read} reports it: for logging, and
 * for saving with a checkpoint so that {@link LossScaler.reset} can resume it.
 *
 * @example
 * ```ts
 * // After an overflow: { scale: 32768, goodSteps: 0, skipped: 1, lastScale: 65536 }
 * const state: LossScaleState = await scaler.read();
 * // ... after loading the checkpoint that saved it:
 * scaler.reset(state);
 * ```
 */
export interface LossScaleState {
  /** The scale the next step uses. */
  scale: number;
  /** The scale the last step used. */
  lastScale: number;
  /** Good steps since the last change. */
  goodSteps: number;
  /** Steps skipped for a non-finite gradient since the start. */
  skipped: number;
}

/**
 * The GPU-resident loss scale of f16 training and its update kernel: the loss
 * gradient is multiplied by {@link LossScaler.scale}, AdamW divides it back out,
 * and {@link LossScaler.record} adapts it to the step's gradient norm.
 *
 * @example
 * ```ts
 * const scaler = new LossScaler(gpu);
 * // one step, all on the GPU:
 * crossEntropyBackward(rec, { dlogits: logits, logits, lse, targets, count, scale: scaler.scale });
 * // ... the rest of the backward, then gradNorm.record(rec, { out: normSquared, grads }) ...
 * adamw.record(rec, { params, grads, m, v, decayMask, normSquared, hyper, lossScale: scaler.scale });
 * scaler.record(rec, { normSquared });
 * rec.submit();
 * console.log(await scaler.read()); // { scale: 65536, goodSteps: 1, skipped: 0, lastScale: 65536 }
 * ```
 */
export class LossScaler {
  /** [scale, good steps, skipped, last scale], f32. */
  readonly state: Tensor;
  /** A view of the current scale, f32 [1]: what the loss gradient is multiplied by. */
  readonly scale: Tensor;
  #gpu: Gpu;
  #options: Required<LossScalerOptions>;

  /**
   * Allocates the state at the initial scale.
   *
   * @param gpu The device.
   * @param options Initial scale, growth interval, bounds.
   * @example
   * ```ts
   * const scaler = new LossScaler(gpu);
   * // per step: crossEntropyBackward(..., scale: scaler.scale); adamw.record(..., lossScale: scaler.scale);
   * scaler.record(rec, { normSquared });
   * ```
   */
  constructor(gpu: Gpu, options: LossScalerOptions = {}) {
    this.#gpu = gpu;
    this.#options = {
      initialScale: options.initialScale ?? 2 ** 16,
      growthInterval: options.growthInterval ?? 2000,
      minScale: options.minScale ?? 1,
      maxScale: options.maxScale ?? 2 ** 24,
    };
    this.state = gpu.tensor([4], "f32", { label: "loss scale state" });
    this.scale = this.state.view(0, [1], "loss scale");
    this.reset();
  }

  /**
   * Restores a state (a resumed run), or the initial one.
   *
   * @param state What {@link LossScaler.read} returned, or nothing for the initial state.
   */
  reset(state?: LossScaleState): void {
    const s = state ?? { scale: this.#options.initialScale, goodSteps: 0, skipped: 0, lastScale: 0 };
    this.#gpu.write(this.state, [s.scale, s.goodSteps, s.skipped, s.lastScale]);
  }

  /**
   * Records the update that follows a step: reads Σg² of the scaled gradients
   * and halves the scale (counting a skipped step) when it is not finite, else
   * counts a good step and doubles the scale every `growthInterval` of them.
   *
   * @param rec The recorder, after the optimizer's dispatch.
   * @param args `normSquared`: f32 [1] from the gradient norm.
   */
  record(rec: Recorder, args: { normSquared: Tensor }): void {
    expectDType("lossScale", "normSquared", args.normSquared, ["f32"]);
    expectLength("lossScale", "normSquared", args.normSquared, 1);
    const { wgsl, bindings } = declare([
      { name: "normSquared", tensor: args.normSquared },
      { name: "state", tensor: this.state, write: true },
    ]);
    const o = this.#options;
    const code = `${wgsl}
fn isFinite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}
@compute @workgroup_size(1)
fn main() {
  let scale = state[0];
  state[3] = scale;
  // As AdamW judges it: the unscaled norm must be finite too.
  if (!isFinite(normSquared[0]) || !isFinite(sqrt(normSquared[0]) / scale)) {
    state[0] = max(scale * 0.5, ${float(o.minScale)});
    state[1] = 0.0;
    state[2] = state[2] + 1.0;
    return;
  }
  let good = state[1] + 1.0;
  if (good >= ${float(o.growthInterval)}) {
    state[0] = min(scale * 2.0, ${float(o.maxScale)});
    state[1] = 0.0;
  } else {
    state[1] = good;
  }
}`;
    rec.dispatch(rec.gpu.pipelines.get("loss scale update", code), bindings, 1);
  }

  /**
   * Reads the state back (waits for the submitted work).
   *
   * @returns Scale, last scale, good steps, skipped steps.
   */
  async read(): Promise<LossScaleState> {
    const [scale, goodSteps, skipped, lastScale] = await this.#gpu.readFloats(this.state);
    return { scale, goodSteps, skipped, lastScale };
  }

  /** Frees the state. */
  release(): void {
    this.#gpu.release(this.state);
  }
}
