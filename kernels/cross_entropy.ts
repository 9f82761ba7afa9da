/**
 * Fused softmax + cross-entropy over the vocabulary, the mean loss, and its
 * gradient with respect to the logits.
 *
 * - {@link crossEntropyForward}: per-row loss and log-sum-exp (saved for backward).
 * - {@link lossMean}: mean loss over the rows that count, and that count, on the GPU.
 * - {@link crossEntropyBackward}: dlogits = (softmax − onehot(target))·scale/count.
 *   `dlogits` is an activation gradient and is **overwritten**; it may be the
 *   logits tensor itself (in place, saving an N·V buffer).
 *
 * Ignored rows: a target equal to `ignoreIndex` (default {@link IGNORE_INDEX},
 * 0xFFFFFFFF: PyTorch's -100 has no u32 spelling, and the largest u32 can never be
 * a real class) contributes no loss, no count and a zero gradient. A target that
 * is neither ignored nor below V is a data bug: its loss is NaN, so the mean loss
 * turns NaN where the trainer reads it, and its gradient is the plain softmax.
 *
 * Layout: each row is handled by L lanes (a power of two, more for a larger V; see
 * {@link crossEntropyLanes}) and a workgroup holds R = 256/L rows, so V = 65 (char
 * level) and V = 50257 (GPT-2) both fill their workgroups. A row's max and sum of exponentials are reduced
 * online (one pass over the logits, one exp per element), then across the lanes by
 * a fixed tree in workgroup memory: the result is the same bits on every run.
 *
 * Sizes: N rows (B·T), V vocabulary. Logits may be f16 (f32 arithmetic).
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { declare, expectDType, expectF16Support, expectLength, float, type StorageDecl } from "./wgsl.ts";

/**
 * The default ignore index: a target of 0xFFFFFFFF (the largest u32) marks a row
 * that adds no loss and gets no gradient, e.g. padding or a prompt's tokens.
 *
 * @example
 * ```ts
 * // Learn only the answer: the first 3 of 6 positions are the prompt.
 * const targets = gpu.tensor([6], "u32", { data: [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 17, 4, 9] });
 * crossEntropyForward(rec, { losses, lse, logits, targets }); // losses[0..3) = 0
 * ```
 */
export const IGNORE_INDEX = 0xFFFFFFFF;

const WORKGROUP = 256;

/**
 * Threads per row for a vocabulary of `vocab`, a power of two from 1 to 256.
 *
 * On a GPU: about 8 logits per lane, so V = 50257 gets 256 lanes and V = 65 gets
 * 16 lanes × 16 rows per workgroup.
 *
 * On a CPU adapter (lavapipe) each workgroup barrier of the lane reduction costs a
 * pass over all 256 invocations, so fewer lanes win (measured there: 1 lane per
 * row beats 16 by 4x at V = 65), but not 1 for a large V: llvmpipe stops every
 * loop of an invocation, silently, once its loops have run 65535 iterations in
 * all. At most 4096 logits per lane keeps far from that (V = 50257: 16 lanes).
 *
 * @param vocab V.
 * @param fallback The adapter is a CPU implementation (`gpu.info.fallback`).
 * @returns Lanes per row L; a workgroup holds 256 / L rows.
 */
export function crossEntropyLanes(vocab: number, fallback = false): number {
  const perLane = fallback ? 4096 : 8;
  const wanted = Math.ceil(vocab / perLane);
  let lanes = 1;
  while (lanes < wanted && lanes < WORKGROUP) lanes *= 2;
  return lanes;
}

/**
 * Arguments of {@link crossEntropyForward}: the per-row losses and log-sum-exps
 * to write, the logits and the targets.
 *
 * @example
 * ```ts
 * const args: CrossEntropyForwardArgs = {
 *   losses: gpu.tensor([B * T]),
 *   lse: gpu.tensor([B * T]),
 *   logits, // [B, T, V]
 *   targets, // u32 [B * T]
 * };
 * crossEntropyForward(rec, args);
 * ```
 */
export interface CrossEntropyForwardArgs {
  /** Per-row loss, f32 [N]: lse − logit[target], 0 for ignored rows. Overwritten. */
  losses: Tensor;
  /** Per-row log-sum-exp of the logits, f32 [N], saved for backward (0 for ignored rows). Overwritten. */
  lse: Tensor;
  /** Logits, f32 or f16 [..., V] (N·V elements). */
  logits: Tensor;
  /** Target class per row, u32 [N]. */
  targets: Tensor;
  /** Targets equal to this are ignored. Default {@link IGNORE_INDEX}. */
  ignoreIndex?: number;
  /** Lanes per row (a power of two ≤ 256); default {@link crossEntropyLanes}. For benchmarks. */
  lanes?: number;
}

/**
 * Records the fused softmax cross-entropy forward: for each row,
 * lse = log Σ exp(logits) (max-subtracted) and loss = lse − logits[target].
 *
 * @param rec The recorder.
 * @param args Outputs `losses`, `lse`; inputs `logits`, `targets`; `ignoreIndex`.
 * @example
 * ```ts
 * crossEntropyForward(rec, { losses, lse, logits, targets });
 * lossMean(rec, { out: loss, count, losses, targets, accumulate: true });
 * crossEntropyBackward(rec, { dlogits: logits, logits, lse, targets, count, scale: 1 / gradAccum });
 * ```
 */
export function crossEntropyForward(rec: Recorder, args: CrossEntropyForwardArgs): void {
  const kernel = "crossEntropyForward";
  const { losses, lse, logits, targets } = args;
  const ignore = checkIgnoreIndex(kernel, args.ignoreIndex);
  const { n, vocab } = rowsOf(kernel, logits);
  expectDType(kernel, "logits", logits, ["f32", "f16"]);
  expectDType(kernel, "targets", targets, ["u32"]);
  expectDType(kernel, "losses", losses, ["f32"]);
  expectDType(kernel, "lse", lse, ["f32"]);
  expectLength(kernel, "targets", targets, n);
  expectLength(kernel, "losses", losses, n);
  expectLength(kernel, "lse", lse, n);
  expectF16Support(kernel, rec.gpu.features.f16, [logits]);
  const lanes = checkLanes(kernel, args.lanes ?? crossEntropyLanes(vocab, rec.gpu.info.fallback));
  const rows = WORKGROUP / lanes;
  const { wgsl, bindings } = declare([
    { name: "logits", tensor: logits },
    { name: "targets", tensor: targets },
    { name: "losses", tensor: losses, write: true },
    { name: "lse", tensor: lse, write: true },
  ]);
  // A running (max m, sum s of exp(x - m)) per lane; s == 0 marks a lane that saw
  // nothing, so no -inf sentinel (which WGSL cannot spell) enters an exp().
  const code = `${wgsl}
const N = ${n}u;
const V = ${vocab}u;
const L = ${lanes}u;
const R = ${rows}u;
const IGNORE = ${ignore}u;
var<workgroup> maxes: array<f32, ${WORKGROUP}>;
var<workgroup> sums: array<f32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let slot = lid.x;
  let lane = slot % L;
  let row = ${WGSL_LINEAR_WORKGROUP} * R + slot / L;
  var t = IGNORE;
  if (row < N) { t = targets[row]; }
  let live = row < N && t != IGNORE;
  let base = row * V;
  var m = 0.0;
  var s = 0.0;
  if (live && lane < V) {
    m = f32(logits[base + lane]);
    s = 1.0;
    for (var j = lane + L; j < V; j += L) {
      let x = f32(logits[base + j]);
      if (x > m) {
        s = s * exp(m - x) + 1.0;
        m = x;
      } else {
        s += exp(x - m);
      }
    }
  }
  maxes[slot] = m;
  sums[slot] = s;
  for (var stride = L / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lane < stride) {
      let m2 = maxes[slot + stride];
      let s2 = sums[slot + stride];
      if (s2 > 0.0) {
        if (s == 0.0) {
          m = m2;
          s = s2;
        } else {
          let mx = max(m, m2);
          s = s * exp(m - mx) + s2 * exp(m2 - mx);
          m = mx;
        }
        maxes[slot] = m;
        sums[slot] = s;
      }
    }
  }
  if (lane != 0u || row >= N) { return; }
  if (!live) {
    losses[row] = 0.0;
    lse[row] = 0.0;
    return;
  }
  let l = m + log(s);
  lse[row] = l;
  if (t < V) {
    losses[row] = l - f32(logits[base + t]);
  } else {
    let nanBits = 0x7fc00000u | (t & 0u); // runtime value: a constant NaN is a compile error
    losses[row] = bitcast<f32>(nanBits);
  }
}`;
  const pipeline = rec.gpu.pipelines.get(`${kernel} ${logits.dtype} V=${vocab}`, code);
  rec.dispatch(pipeline, bindings, grid(rec.gpu, Math.ceil(n / rows)));
}

/**
 * Arguments of {@link lossMean}: where to put the mean loss and the count of
 * rows that count, and the per-row losses and targets they come from.
 *
 * @example
 * ```ts
 * const args: LossMeanArgs = { out: gpu.tensor([1]), count: gpu.tensor([1], "u32"), losses, targets };
 * lossMean(rec, args);
 * rec.submit();
 * console.log((await gpu.read(args.out))[0]); // e.g. 4.17 for untrained logits over V = 65
 * ```
 */
export interface LossMeanArgs {
  /** f32 [1]: the mean loss (or `out += mean` with `accumulate`). 0 when every row is ignored. */
  out: Tensor;
  /** u32 [1]: rows not ignored; {@link crossEntropyBackward} divides by it. Overwritten. */
  count: Tensor;
  /** Per-row losses from {@link crossEntropyForward}, f32 [N]. */
  losses: Tensor;
  /** Targets, u32 [N]. */
  targets: Tensor;
  /** Targets equal to this are ignored. Default {@link IGNORE_INDEX}. */
  ignoreIndex?: number;
  /** Add the mean into `out` instead of overwriting it (micro-step accumulation). */
  accumulate?: boolean;
}

/**
 * Records the mean of the per-row losses over the rows that are not ignored, and
 * their count. One workgroup, a fixed summation order: deterministic. With
 * `accumulate`, `out += mean`, so a trainer sums micro-step losses on the GPU and
 * reads them only when it logs.
 *
 * @param rec The recorder.
 * @param args Outputs `out`, `count`; inputs `losses`, `targets`; options.
 * @example
 * ```ts
 * lossMean(rec, { out: lossSum, count, losses, targets, accumulate: microStep > 0 });
 * ```
 */
export function lossMean(rec: Recorder, args: LossMeanArgs): void {
  const kernel = "lossMean";
  const { out, count, losses, targets } = args;
  const ignore = checkIgnoreIndex(kernel, args.ignoreIndex);
  const n = losses.length;
  expectDType(kernel, "out", out, ["f32"]);
  expectDType(kernel, "count", count, ["u32"]);
  expectDType(kernel, "losses", losses, ["f32"]);
  expectDType(kernel, "targets", targets, ["u32"]);
  expectLength(kernel, "out", out, 1);
  expectLength(kernel, "count", count, 1);
  expectLength(kernel, "targets", targets, n);
  const { wgsl, bindings } = declare([
    { name: "losses", tensor: losses },
    { name: "targets", tensor: targets },
    { name: "out", tensor: out, write: true },
    { name: "count", tensor: count, write: true },
  ]);
  const code = `${wgsl}
const N = ${n}u;
const IGNORE = ${ignore}u;
var<workgroup> sums: array<f32, ${WORKGROUP}>;
var<workgroup> counts: array<u32, ${WORKGROUP}>;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  var c = 0u;
  for (var i = lid.x; i < N; i += ${WORKGROUP}u) {
    if (targets[i] != IGNORE) {
      s += losses[i];
      c += 1u;
    }
  }
  sums[lid.x] = s;
  counts[lid.x] = c;
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (lid.x < stride) {
      sums[lid.x] += sums[lid.x + stride];
      counts[lid.x] += counts[lid.x + stride];
    }
  }
  if (lid.x != 0u) { return; }
  let total = counts[0];
  var mean = 0.0;
  if (total > 0u) { mean = sums[0] / f32(total); }
  out[0] = ${args.accumulate ? "out[0] + " : ""}mean;
  count[0] = total;
}`;
  rec.dispatch(rec.gpu.pipelines.get(`${kernel} N=${n}`, code), bindings, 1);
}

/**
 * Arguments of {@link crossEntropyBackward}: the logits' gradient to write,
 * what the forward took and saved, the count from {@link lossMean}, and a scale.
 *
 * @example
 * ```ts
 * const args: CrossEntropyBackwardArgs = {
 *   dlogits: logits, // in place: [B, T, V]
 *   logits, lse, targets, count,
 *   scale: 1 / 4, // averaged over 4 micro-steps
 * };
 * crossEntropyBackward(rec, args);
 * ```
 */
export interface CrossEntropyBackwardArgs {
  /** f32 or f16 [..., V], overwritten; may be `logits` itself (in place). */
  dlogits: Tensor;
  /** The logits of the forward, f32 or f16 [..., V]. */
  logits: Tensor;
  /** Per-row log-sum-exp from {@link crossEntropyForward}, f32 [N]. */
  lse: Tensor;
  /** Targets, u32 [N]. */
  targets: Tensor;
  /** u32 [1] from {@link lossMean}: rows not ignored (read on the GPU). */
  count: Tensor;
  /** Targets equal to this are ignored. Default {@link IGNORE_INDEX}. */
  ignoreIndex?: number;
  /**
   * Gradient scale, default 1: a number (baked into the kernel: keep it fixed for
   * a run, e.g. 1/gradient_accumulation_steps) or an f32 [1] tensor read on the GPU
   * (a dynamic loss scale that changes without recompiling or a CPU round trip).
   */
  scale?: number | Tensor;
  /** Lanes per row (a power of two ≤ 256); default {@link crossEntropyLanes}. For benchmarks. */
  lanes?: number;
}

/**
 * Records the gradient of the mean cross-entropy with respect to the logits:
 * dlogits = (softmax(logits) − onehot(target))·scale/count for rows not ignored,
 * 0 for ignored rows (and all zeros when count is 0). Overwrites `dlogits`.
 *
 * @param rec The recorder.
 * @param args Output `dlogits`; saved `lse`; inputs `logits`, `targets`, `count`; options.
 * @example
 * ```ts
 * crossEntropyBackward(rec, { dlogits: logits, logits, lse, targets, count }); // in place
 * ```
 */
export function crossEntropyBackward(rec: Recorder, args: CrossEntropyBackwardArgs): void {
  const kernel = "crossEntropyBackward";
  const { dlogits, logits, lse, targets, count } = args;
  const ignore = checkIgnoreIndex(kernel, args.ignoreIndex);
  const { n, vocab } = rowsOf(kernel, logits);
  expectDType(kernel, "dlogits", dlogits, ["f32", "f16"]);
  expectDType(kernel, "logits", logits, ["f32", "f16"]);
  expectDType(kernel, "lse", lse, ["f32"]);
  expectDType(kernel, "targets", targets, ["u32"]);
  expectDType(kernel, "count", count, ["u32"]);
  expectLength(kernel, "dlogits", dlogits, n * vocab);
  expectLength(kernel, "lse", lse, n);
  expectLength(kernel, "targets", targets, n);
  expectLength(kernel, "count", count, 1);
  expectF16Support(kernel, rec.gpu.features.f16, [dlogits, logits]);
  const scale = args.scale ?? 1;
  if (typeof scale !== "number") {
    expectDType(kernel, "scale", scale, ["f32"]);
    expectLength(kernel, "scale", scale, 1);
  }
  const inPlace = dlogits.buffer === logits.buffer && dlogits.byteOffset === logits.byteOffset;
  if (inPlace && dlogits.dtype !== logits.dtype) {
    throw new GpuError(
      `${kernel}: dlogits "${dlogits.label}" is ${dlogits.dtype} but shares its buffer with ${logits.dtype} logits; ` +
        "in place needs one dtype",
    );
  }
  const lanes = checkLanes(kernel, args.lanes ?? crossEntropyLanes(vocab, rec.gpu.info.fallback));
  const rows = WORKGROUP / lanes;
  const decls: StorageDecl[] = [
    ...(inPlace ? [] : [{ name: "logits", tensor: logits }]),
    { name: "lse", tensor: lse },
    { name: "targets", tensor: targets },
    { name: "count", tensor: count },
    ...(typeof scale === "number" ? [] : [{ name: "scale", tensor: scale }]),
    { name: "dlogits", tensor: dlogits, write: true },
  ];
  const { wgsl, bindings } = declare(decls);
  const source = inPlace ? "dlogits" : "logits";
  const out = dlogits.dtype;
  const code = `${wgsl}
const N = ${n}u;
const V = ${vocab}u;
const L = ${lanes}u;
const R = ${rows}u;
const IGNORE = ${ignore}u;
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let lane = lid.x % L;
  let row = ${WGSL_LINEAR_WORKGROUP} * R + lid.x / L;
  if (row >= N) { return; }
  let t = targets[row];
  let base = row * V;
  let live = t != IGNORE;
  // max(count, 1): count is 0 only when every row is ignored, and then none is live.
  let factor = ${typeof scale === "number" ? float(scale) : "scale[0]"} / f32(max(count[0], 1u));
  let l = lse[row];
  // One loop for live and ignored rows alike: lavapipe caps the loop iterations of
  // an invocation in all, and a second loop would count against the first.
  for (var j = lane; j < V; j += L) {
    var g = 0.0;
    if (live) {
      let p = exp(f32(${source}[base + j]) - l);
      g = select(p, p - 1.0, j == t) * factor;
    }
    dlogits[base + j] = ${out}(g);
  }
}`;
  const label = `${kernel} ${logits.dtype}->${out} V=${vocab}${inPlace ? " in place" : ""}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, grid(rec.gpu, Math.ceil(n / rows)));
}

/** N and V of a logits tensor [..., V]. */
function rowsOf(kernel: string, logits: Tensor): { n: number; vocab: number } {
  const vocab = logits.shape[logits.shape.length - 1];
  if (logits.shape.length < 1 || !(vocab > 0)) {
    throw new GpuError(
      `${kernel}: logits "${logits.label}" has shape [${
        logits.shape.join(", ")
      }], expected [..., V] with V ≥ 1`,
    );
  }
  return { n: logits.length / vocab, vocab };
}

function checkIgnoreIndex(kernel: string, value: number | undefined): number {
  const ignore = value ?? IGNORE_INDEX;
  if (!Number.isInteger(ignore) || ignore < 0 || ignore > 0xFFFFFFFF) {
    throw new GpuError(
      `${kernel}: ignoreIndex ${ignore} is not a u32; use 0..4294967295 (default 0xFFFFFFFF)`,
    );
  }
  return ignore;
}

function checkLanes(kernel: string, lanes: number): number {
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > WORKGROUP || (lanes & (lanes - 1)) !== 0) {
    throw new GpuError(`${kernel}: lanes ${lanes} must be a power of two from 1 to ${WORKGROUP}`);
  }
  return lanes;
}
