/**
 * Elementwise kernels the model needs between the big ops: fill, add (residual),
 * scale, and f32 <-> f16 casts. All overwrite their output; `add` may name its
 * output as one of its inputs to accumulate in place.
 *
 * Every kernel here is one thread per element (memory-bound: one read and one
 * write per element is all there is to do), dispatched as a {@link grid}.
 *
 * @module
 */

import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { declare, expectDType, expectF16Support, expectLength, float, type StorageDecl } from "./wgsl.ts";

const WORKGROUP = 256;

/**
 * Records a one-thread-per-element kernel over `n` elements: `body` is WGSL that
 * reads and writes the declared bindings at index `i`; `helpers` holds WGSL
 * functions the body calls, and may declare `textures`, bound after the tensors.
 *
 * @param rec The recorder.
 * @param options The kernel's label, bindings, element count and body.
 */
export function recordElementwise(
  rec: Recorder,
  options: {
    label: string;
    decls: readonly StorageDecl[];
    n: number;
    body: string;
    helpers?: string;
    textures?: readonly GPUTextureView[];
  },
): void {
  const { label, decls, n, body } = options;
  expectF16Support(label, rec.gpu.features.f16, decls.map((d) => d.tensor));
  const declared = declare(decls);
  const bindings = [...declared.bindings, ...(options.textures ?? [])];
  const wgsl = declared.wgsl;
  const code = `${wgsl}
const N = ${n}u;${options.helpers ?? ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WGSL_LINEAR_WORKGROUP} * ${WORKGROUP}u + lid.x;
  if (i >= N) { return; }
  ${body}
}`;
  rec.dispatch(rec.gpu.pipelines.get(label, code), bindings, grid(rec.gpu, Math.ceil(n / WORKGROUP)));
}

/**
 * out[i] = value.
 *
 * @param rec The recorder.
 * @param args `out` (f32, f16, u32 or i32) and the `value`.
 * @example
 * ```ts
 * fill(rec, { out: grads, value: 0 });
 * ```
 */
export function fill(rec: Recorder, args: { out: Tensor; value: number }): void {
  const { out, value } = args;
  const literal = out.dtype === "u32" || out.dtype === "i32"
    ? `${out.dtype}(${Math.trunc(value)})`
    : float(value);
  recordElementwise(rec, {
    label: `fill ${out.dtype}`,
    decls: [{ name: "out", tensor: out, write: true }],
    n: out.length,
    body: `out[i] = ${out.dtype}(${literal});`,
  });
}

/**
 * out[i] = a[i] + b[i], computed in f32. `out` may be `a` itself (x += b: the
 * residual stream), which is how the model accumulates.
 *
 * @param rec The recorder.
 * @param args `out`, `a`, `b`: same length, f32 or f16 each.
 * @example
 * ```ts
 * // The residual stream x [B, T, C] takes the attention block's output.
 * add(rec, { out: x, a: x, b: attnOut });
 * ```
 */
export function add(rec: Recorder, args: { out: Tensor; a: Tensor; b: Tensor }): void {
  const { out, a, b } = args;
  for (const [name, t] of [["out", out], ["a", a], ["b", b]] as const) {
    expectDType("add", name, t, ["f32", "f16"]);
    expectLength("add", name, t, out.length);
  }
  const inPlace = out.buffer === a.buffer && out.byteOffset === a.byteOffset;
  const decls: StorageDecl[] = inPlace
    ? [{ name: "b", tensor: b }, { name: "out", tensor: out, write: true }]
    : [{ name: "a", tensor: a }, { name: "b", tensor: b }, { name: "out", tensor: out, write: true }];
  const aRead = inPlace ? "out[i]" : "a[i]";
  recordElementwise(rec, {
    label: `add ${a.dtype}+${b.dtype}->${out.dtype}${inPlace ? " in place" : ""}`,
    decls,
    n: out.length,
    body: `out[i] = ${out.dtype}(f32(${aRead}) + f32(b[i]));`,
  });
}

/**
 * out[i] = x[i] · factor (`out` may be `x`).
 *
 * @param rec The recorder.
 * @param args `out`, `x` (f32 or f16) and the `factor`, baked into the kernel.
 * @example
 * ```ts
 * // Average gradients accumulated over 4 micro-batches, in place.
 * scale(rec, { out: grads, x: grads, factor: 1 / 4 });
 * ```
 */
export function scale(rec: Recorder, args: { out: Tensor; x: Tensor; factor: number }): void {
  const { out, x, factor } = args;
  expectDType("scale", "out", out, ["f32", "f16"]);
  expectDType("scale", "x", x, ["f32", "f16"]);
  expectLength("scale", "x", x, out.length);
  const inPlace = out.buffer === x.buffer && out.byteOffset === x.byteOffset;
  recordElementwise(rec, {
    label: `scale ${x.dtype}->${out.dtype}${inPlace ? " in place" : ""}`,
    decls: inPlace
      ? [{ name: "out", tensor: out, write: true }]
      : [{ name: "x", tensor: x }, { name: "out", tensor: out, write: true }],
    n: out.length,
    body: `out[i] = ${out.dtype}(f32(${inPlace ? "out" : "x"}[i]) * ${float(factor)});`,
  });
}

/**
 * out[i] = x[i] converted between f32 and f16, rounding to nearest even. WGSL
 * leaves overflow to the implementation; the adapters we test give ±inf, and a
 * loss scaler checks finiteness rather than relying on it.
 *
 * @param rec The recorder.
 * @param args `out` and `x` of the same length, one f32 and one f16 (or equal dtypes: a copy).
 * @example
 * ```ts
 * // f16 weights for the forward from the f32 master copy.
 * const master = gpu.tensor([V, C], "f32");
 * const half = gpu.tensor([V, C], "f16");
 * cast(rec, { out: half, x: master });
 * ```
 */
export function cast(rec: Recorder, args: { out: Tensor; x: Tensor }): void {
  const { out, x } = args;
  expectDType("cast", "out", out, ["f32", "f16"]);
  expectDType("cast", "x", x, ["f32", "f16"]);
  expectLength("cast", "x", x, out.length);
  recordElementwise(rec, {
    label: `cast ${x.dtype}->${out.dtype}`,
    decls: [{ name: "x", tensor: x }, { name: "out", tensor: out, write: true }],
    n: out.length,
    body: `out[i] = ${out.dtype}(x[i]);`,
  });
}
