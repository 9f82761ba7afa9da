/**
 * A block of columns of a row-major matrix: add a narrow matrix, scaled, into
 * columns [column, column + w) of a wide one, or copy those columns out, scaled.
 * A fused projection (q, k and v side by side) keeps its parts as column blocks
 * of one activation; these reach one part without a transpose or a second layout.
 *
 * `addColumns` adds into `out` (+=); `copyColumns` overwrites `out`. Both are one
 * thread per element of the narrow matrix, f32 arithmetic, f32 or f16 storage.
 *
 * @module
 */

import { recordElementwise } from "./elementwise.ts";
import { GpuError } from "./errors.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { expectDType, float } from "./wgsl.ts";

/** Rows and width of a tensor seen as a matrix over its last dimension. */
function matrix(t: Tensor): { rows: number; width: number } {
  const width = t.shape[t.shape.length - 1];
  return { rows: t.length / width, width };
}

function checkBlock(kernel: string, wide: Tensor, narrow: Tensor, column: number): void {
  expectDType(kernel, "wide", wide, ["f32", "f16"]);
  expectDType(kernel, "narrow", narrow, ["f32", "f16"]);
  const w = matrix(wide);
  const n = matrix(narrow);
  if (w.rows !== n.rows) {
    throw new GpuError(`${kernel}: "${wide.label}" has ${w.rows} rows but "${narrow.label}" has ${n.rows}`);
  }
  if (!Number.isInteger(column) || column < 0 || column + n.width > w.width) {
    throw new GpuError(
      `${kernel}: columns [${column}, ${column + n.width}) lie outside the ${w.width} of "${wide.label}"`,
    );
  }
  if (wide.buffer === narrow.buffer) {
    throw new GpuError(
      `${kernel}: "${wide.label}" and "${narrow.label}" share a buffer; give them their own`,
    );
  }
}

/**
 * out[r, column + j] += scale · x[r, j].
 *
 * @param rec The recorder.
 * @param args `out` (R, W) and `x` (R, w), f32 or f16; the first `column` of the block, and `scale`.
 * @example
 * ```ts
 * addColumns(rec, { out: qkv, x: deltaV, column: 2 * qWidth, scale: alpha / rank });
 * ```
 */
export function addColumns(
  rec: Recorder,
  args: { out: Tensor; x: Tensor; column: number; scale: number },
): void {
  const { out, x, column } = args;
  checkBlock("addColumns", out, x, column);
  const W = matrix(out).width;
  const w = matrix(x).width;
  recordElementwise(rec, {
    label: `addColumns ${x.dtype}->${out.dtype} W=${W} w=${w} at ${column}`,
    decls: [{ name: "x", tensor: x }, { name: "out", tensor: out, write: true }],
    n: x.length,
    body: `let o = (i / ${w}u) * ${W}u + ${column}u + i % ${w}u;
  out[o] = ${out.dtype}(f32(out[o]) + f32(x[i]) * ${float(args.scale)});`,
  });
}

/**
 * out[r, j] = scale · x[r, column + j].
 *
 * @param rec The recorder.
 * @param args `out` (R, w) and `x` (R, W), f32 or f16; the first `column` of the block, and `scale`.
 * @example
 * ```ts
 * copyColumns(rec, { out: dyV, x: dqkv, column: 2 * qWidth, scale: alpha / rank });
 * ```
 */
export function copyColumns(
  rec: Recorder,
  args: { out: Tensor; x: Tensor; column: number; scale: number },
): void {
  const { out, x, column } = args;
  checkBlock("copyColumns", x, out, column);
  const W = matrix(x).width;
  const w = matrix(out).width;
  recordElementwise(rec, {
    label: `copyColumns ${x.dtype}->${out.dtype} W=${W} w=${w} at ${column}`,
    decls: [{ name: "x", tensor: x }, { name: "out", tensor: out, write: true }],
    n: out.length,
    body: `out[i] = ${out.dtype}(f32(x[(i / ${w}u) * ${W}u + ${column}u + i % ${w}u]) * ${
      float(args.scale)
    });`,
  });
}
