/**
 * Dropout from a counter-based RNG: the keep/drop decision for element i is a
 * hash of (step seed, stream, i), so forward and backward regenerate the same
 * mask without storing it, and a run is reproducible from its seed alone.
 * `stream` tells apart the call sites of one step (layer, branch, micro-step).
 *
 * Kept elements are scaled by 1/(1-p) (inverted dropout, as PyTorch does).
 * `dropoutBackward` overwrites dx, or adds into it with `accumulate: true`.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { recordElementwise } from "./elementwise.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { expectDType, expectLength, float, type StorageDecl } from "./wgsl.ts";

/**
 * The per-step seed, in a small GPU buffer written once per step (so one
 * recording can be replayed every step with a fresh mask). Every dropout kernel
 * reads it; a forward and its backward see the same mask as long as the seed is
 * not set between them.
 *
 * @example
 * ```ts
 * const seed = new DropoutSeed(gpu); // once per run
 * seed.set(runSeed, step); // every step, before submitting it
 * dropout(rec, { out: h, x: h, p: 0.1, seed, stream: 0 });
 * dropoutBackward(rec, { dx: dh, dout: dh, p: 0.1, seed, stream: 0 }); // the same mask
 * ```
 */
export class DropoutSeed {
  /** The 2-word seed tensor read by the kernels. */
  readonly tensor: Tensor;
  #gpu: Gpu;

  /**
   * Allocates the seed buffer.
   *
   * @param gpu The device.
   * @example
   * ```ts
   * const seed = new DropoutSeed(gpu);
   * seed.set(1337, iteration); // before submitting the step
   * ```
   */
  constructor(gpu: Gpu) {
    this.#gpu = gpu;
    this.tensor = gpu.tensor([2], "u32", { label: "dropout seed" });
  }

  /**
   * Sets the seed for the next submitted step. Written with the queue, so it
   * takes effect for work submitted after this call.
   *
   * @param runSeed The run's seed.
   * @param step The iteration (different masks every step).
   */
  set(runSeed: number, step: number): void {
    this.#gpu.write(this.tensor, [runSeed >>> 0, step >>> 0]);
  }
}

/** WGSL: a uniform in [0, 1) from (seed words, stream, index); two rounds of the PCG hash. */
function keepExpression(p: number, stream: number): string {
  return `keep(seed[0], seed[1], ${stream >>> 0}u, i, ${float(p)})`;
}

const HASH_WGSL = `
fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
fn keep(run: u32, step: u32, stream: u32, i: u32, p: f32) -> bool {
  let h = pcg(pcg(pcg(run ^ pcg(step)) ^ stream) ^ i);
  return f32(h >> 8u) * (1.0 / 16777216.0) >= p;
}`;

function checkP(kernel: string, p: number): void {
  if (!(p > 0 && p < 1)) {
    throw new GpuError(`${kernel}: p must be in (0, 1), got ${p}; skip the kernel when p is 0`);
  }
}

/**
 * out = a + dropout(b): the residual add of a branch with dropout. `out` may be `a`.
 *
 * @param rec The recorder.
 * @param args `out`, `a`, `b` (f32 or f16, equal lengths), `p`, `seed`, and a `stream` unique to this call site.
 * @example
 * ```ts
 * // The residual stream x [B, T, C] takes layer l's attention output with dropout.
 * dropoutAdd(rec, { out: x, a: x, b: attnProj, p: 0.1, seed, stream: 2 * l + 1 });
 * // backward: a's gradient is dx itself, b's is dropped with the same mask
 * dropoutBackward(rec, { dx: dattnProj, dout: dx, p: 0.1, seed, stream: 2 * l + 1 });
 * ```
 */
export function dropoutAdd(
  rec: Recorder,
  args: { out: Tensor; a: Tensor; b: Tensor; p: number; seed: DropoutSeed; stream: number },
): void {
  const { out, a, b, p, seed, stream } = args;
  checkP("dropoutAdd", p);
  for (const [name, t] of [["out", out], ["a", a], ["b", b]] as const) {
    expectDType("dropoutAdd", name, t, ["f32", "f16"]);
    expectLength("dropoutAdd", name, t, out.length);
  }
  const inPlace = out.buffer === a.buffer && out.byteOffset === a.byteOffset;
  const decls: StorageDecl[] = [
    { name: "seed", tensor: seed.tensor },
    ...(inPlace ? [] : [{ name: "a", tensor: a }]),
    { name: "b", tensor: b },
    { name: "out", tensor: out, write: true },
  ];
  recordElementwise(rec, {
    label: `dropout add ${out.dtype}`,
    decls,
    n: out.length,
    body: `var branch = 0.0;
  if (${keepExpression(p, stream)}) { branch = f32(b[i]) * ${float(1 / (1 - p))}; }
  out[i] = ${out.dtype}(f32(${inPlace ? "out" : "a"}[i]) + branch);`,
    helpers: HASH_WGSL,
  });
}

/**
 * out = dropout(x). `out` may be `x`.
 *
 * @param rec The recorder.
 * @param args `out`, `x` (f32 or f16), `p`, `seed`, `stream`.
 * @example
 * ```ts
 * // Drop 10% of the embeddings x [B, T, C] in place, scaling the rest by 1/0.9.
 * dropout(rec, { out: x, x, p: 0.1, seed, stream: 0 });
 * ```
 */
export function dropout(
  rec: Recorder,
  args: { out: Tensor; x: Tensor; p: number; seed: DropoutSeed; stream: number },
): void {
  const { out, x, p, seed, stream } = args;
  checkP("dropout", p);
  expectDType("dropout", "x", x, ["f32", "f16"]);
  expectLength("dropout", "x", x, out.length);
  const inPlace = out.buffer === x.buffer && out.byteOffset === x.byteOffset;
  recordElementwise(rec, {
    label: `dropout ${out.dtype}`,
    decls: [
      { name: "seed", tensor: seed.tensor },
      ...(inPlace ? [] : [{ name: "x", tensor: x }]),
      { name: "out", tensor: out, write: true },
    ],
    n: out.length,
    body: `var value = 0.0;
  if (${keepExpression(p, stream)}) { value = f32(${inPlace ? "out" : "x"}[i]) * ${float(1 / (1 - p))}; }
  out[i] = ${out.dtype}(value);`,
    helpers: HASH_WGSL,
  });
}

/**
 * dx = dropout'(dout): the same mask as the forward call with this seed and
 * stream, scaled by 1/(1-p). Overwrites dx, or adds into it with `accumulate`.
 *
 * @param rec The recorder.
 * @param args `dx`, `dout` (f32 or f16), `p`, `seed`, `stream`, `accumulate`.
 * @example
 * ```ts
 * // Backward of dropout(rec, { out: x, x, p: 0.1, seed, stream: 0 }), in place on the gradient dx.
 * dropoutBackward(rec, { dx, dout: dx, p: 0.1, seed, stream: 0 });
 * ```
 */
export function dropoutBackward(
  rec: Recorder,
  args: { dx: Tensor; dout: Tensor; p: number; seed: DropoutSeed; stream: number; accumulate?: boolean },
): void {
  const { dx, dout, p, seed, stream } = args;
  checkP("dropoutBackward", p);
  expectDType("dropoutBackward", "dout", dout, ["f32", "f16"]);
  expectLength("dropoutBackward", "dout", dout, dx.length);
  const inPlace = dx.buffer === dout.buffer && dx.byteOffset === dout.byteOffset;
  if (inPlace && args.accumulate) throw new GpuError("dropoutBackward: cannot accumulate into dout itself");
  const base = args.accumulate ? "f32(dx[i])" : "0.0";
  recordElementwise(rec, {
    label: `dropout backward ${dx.dtype}${args.accumulate ? " +=" : ""}`,
    decls: [
      { name: "seed", tensor: seed.tensor },
      ...(inPlace ? [] : [{ name: "dout", tensor: dout }]),
      { name: "dx", tensor: dx, write: true },
    ],
    n: dx.length,
    body: `var grad = 0.0;
  if (${keepExpression(p, stream)}) { grad = f32(${inPlace ? "dx" : "dout"}[i]) * ${float(1 / (1 - p))}; }
  dx[i] = ${dx.dtype}(${base} + grad);`,
    helpers: HASH_WGSL,
  });
}
