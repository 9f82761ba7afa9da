/**
 * RMSNorm (LLaMA style: a learned gain, no bias, no mean subtraction) over the
 * last dimension of x [N, C], its backward, and a forward fused with the residual
 * add that precedes every norm in a LLaMA block.
 *
 * Gradients: `dweight` is a parameter gradient and is always added into (`+=`);
 * `dx` is overwritten, or added into with `accumulate: true` (the model adds it
 * into the residual-stream gradient).
 *
 * Layout: 32 threads per row (a warp, as in llm.c's layernorm; more threads
 * when C > 1024) and 4 rows per 128-thread workgroup. A row is split across its
 * threads as vec4s when C % 4 == 0 (scalars otherwise), each thread keeping its
 * slice in registers so x is read once, and the row sums are a fixed-order tree
 * in workgroup memory (bit-identical run to run). On a software adapter a thread
 * per row instead (`threadPerRow`), reading x twice rather than holding it: there
 * a workgroup-memory access is a loop over the SIMD lanes and a barrier a trip
 * through every invocation, and at 768×128 this ran the forward 3× and the
 * backward 2× faster (1.4× and 1.5× at 1024×768).
 *
 * dweight sums over all N rows without float atomics (with a thread per row, a
 * second pass sums each column's dout·x·rstd over the rows): each backward workgroup
 * writes its rows' per-column sums to a scratch row of partials, and a second
 * pass adds the partials into dweight in a fixed order. For N = 16384, C = 768:
 * each 32-thread row group takes 4 consecutive rows (4096 groups, 131k threads,
 * enough to keep an H100-class GPU's memory busy; below N = 8192 a group takes
 * one row; a CPU adapter gets more rows per group, see {@link targetRowGroups}),
 * the workgroup's 4 groups add their sums in shared memory, so the
 * partials are [1024, 768] (3 MB written and read, 2% of the 150 MB compulsory
 * traffic), and the second pass splits each column's sum over 16 lanes (3072
 * threads). One thread per column looping over all rows would keep 768 threads
 * busy and leave the rest of the GPU idle.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import { GpuError } from "./errors.ts";
import type { Binding } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import {
  declare,
  expectDType,
  expectF16Support,
  expectLength,
  expectShape,
  float,
  type StorageDecl,
} from "./wgsl.ts";
import { expectLoopTrips } from "./selftest.ts";
import { stageReads, TEXEL_READ_MIN, texelReads, texelWriterWgsl } from "./texels.ts";

/**
 * Row groups the backward aims for before it gives each group more rows: 4096
 * (131k threads) keeps a big GPU's memory busy; a CPU adapter runs a few
 * workgroups at a time, so there fewer groups only save partials (measured on
 * lavapipe at N = 1024: 1.5x faster with 64 than with 4096).
 */
function targetRowGroups(gpu: Gpu): number {
  return gpu.info.fallback ? 64 : 4096;
}
/** Vectors of columns per workgroup in the dweight reduction, and lanes per column. */
const REDUCE_COLS = 16;
const REDUCE_LANES = 16;

/** How rows of C channels are split across a workgroup. */
interface RowLayout {
  /** Channels. */
  C: number;
  /** Rows. */
  N: number;
  /** Elements per vector: 4 when C % 4 == 0, else 1. */
  width: 1 | 4;
  /** Vectors per row. */
  vecs: number;
  /** Threads per row (a power of two, for the tree sum). */
  threads: number;
  /** Vectors each thread holds. */
  per: number;
  /** Rows (groups of `threads` threads) per workgroup. */
  rows: number;
}

/** Threads per row: the fewest, from 32 up to 256, that leave each at most this many vectors. */
const MAX_VECTORS_PER_THREAD = 8;
/** Threads per workgroup to aim for by putting several rows in one. */
const WORKGROUP_THREADS = 128;
/** Rows per workgroup with a thread per row: two of llvmpipe's 8-lane vectors. */
const THREAD_ROWS = 16;

/**
 * WGSL opening a thread-per-row kernel (see `threadPerRow`): the row, rows past
 * N returning, and `one`, 1 but opaque to the compiler, to bound the loops over a
 * row's vectors by (llvmpipe unrolls a constant-trip loop whole: a row of 250
 * vectors kept in registers that way compiled for 26 s).
 */
function threadRowEntry(layout: RowLayout): string {
  return `const C = ${layout.C}u;
const N = ${layout.N}u;
const VECS = ${layout.vecs}u; // vectors per row

@compute @workgroup_size(${THREAD_ROWS})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = ${WGSL_LINEAR_WORKGROUP} * ${THREAD_ROWS}u + lid.x;
  if (row >= N) { return; }
  let one = nwg.z;`;
}

function rowLayout(C: number, N: number): RowLayout {
  const width = C % 4 === 0 ? 4 : 1;
  const vecs = C / width;
  // A warp per row (llm.c's layernorm) while a row fits in 8 vectors per thread
  // (C <= 1024 in f32 vec4s); wider rows get more threads rather than more registers.
  let threads = 32;
  while (threads < 256 && threads * MAX_VECTORS_PER_THREAD < vecs) threads *= 2;
  return {
    C,
    N,
    width,
    vecs,
    threads,
    per: Math.ceil(vecs / threads),
    rows: Math.max(1, WORKGROUP_THREADS / threads),
  };
}

/** WGSL type names and expressions for one layout. */
function typing(layout: RowLayout) {
  const vec = layout.width === 4;
  return {
    /** The f32 compute type. */
    F: vec ? "vec4f" : "f32",
    /** The storage element of a tensor. */
    elem: (t: Tensor) => (vec ? `vec4<${t.dtype}>` : t.dtype),
    /** Component sum of a·b. */
    dot: (a: string, b: string) => (vec ? `dot(${a}, ${b})` : `(${a} * ${b})`),
  };
}

/** Constants and the fixed-order row sum shared by the row kernels. */
function rowPrelude(layout: RowLayout): string {
  return `
const C = ${layout.C}u;
const N = ${layout.N}u;
const VECS = ${layout.vecs}u; // vectors per row
const T = ${layout.threads}u; // threads per row
const R = ${layout.rows}u; // rows (groups of T threads) per workgroup
const PER = ${layout.per}u; // vectors per thread: thread t of a row holds t, t + T, t + 2T, ...
var<workgroup> red: array<f32, R * T>;

// Sums v over the T threads of lid's row as a fixed tree, so the result is
// bit-identical run to run. Every thread of the workgroup must call it.
fn rowSum(v: f32, lid: u32) -> f32 {
  let t = lid % T;
  red[lid] = v;
  workgroupBarrier();
  for (var s = T / 2u; s > 0u; s >>= 1u) {
    if (t < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let total = red[lid - t];
  workgroupBarrier(); // the next call overwrites red
  return total;
}`;
}

function sameRange(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.byteOffset === b.byteOffset && a.byteLength === b.byteLength &&
    a.dtype === b.dtype;
}

function overlaps(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength &&
    b.byteOffset < a.byteOffset + a.byteLength;
}

/** Refuses an output that overlaps another output or an input (threads of other rows would race). */
function expectDisjoint(
  kernel: string,
  outputs: readonly (readonly [string, Tensor])[],
  inputs: readonly (readonly [string, Tensor])[],
): void {
  outputs.forEach(([name, t], i) => {
    for (const [otherName, other] of [...outputs.slice(i + 1), ...inputs]) {
      if (overlaps(t, other)) {
        throw new GpuError(
          `${kernel}: ${name} "${t.label}" overlaps ${otherName} "${other.label}"; give ${name} its own memory`,
        );
      }
    }
  });
}

/** Checks x [..., C] against weight [C] and returns the layout. */
function rowsOf(kernel: string, x: Tensor, weight: Tensor): RowLayout {
  const C = x.shape.length > 0 ? x.shape[x.shape.length - 1] : 0;
  if (C < 1) {
    throw new GpuError(
      `${kernel}: x "${x.label}" has shape [${x.shape.join(", ")}], expected [N, C] with C >= 1`,
    );
  }
  expectShape(kernel, "weight", weight, [C]);
  expectDType(kernel, "weight", weight, ["f32", "f16"]);
  return rowLayout(C, x.length / C);
}

function expectEps(kernel: string, eps: number): void {
  if (!Number.isFinite(eps) || eps < 0) {
    throw new GpuError(`${kernel}: eps ${eps} must be a finite number >= 0 (LLaMA uses 1e-5 or 1e-6)`);
  }
}

/**
 * The forward row kernel, plain or fused with the residual add. The fused kernel
 * normalizes the residual sum as stored (rounded to f16 when residualOut is f16),
 * so its backward, which reads residualOut back as x, sees what the forward used.
 */
function recordForward(
  rec: Recorder,
  kernel: string,
  io: RmsnormForwardArgs,
  residual?: { residualOut: Tensor; branch: Tensor; inPlace: boolean },
): void {
  const { out, rstd, x, weight, eps } = io;
  const layout = rowsOf(kernel, x, weight);
  expectEps(kernel, eps);
  for (const [name, t] of [["x", x], ["out", out]] as const) expectDType(kernel, name, t, ["f32", "f16"]);
  expectShape(kernel, "out", out, x.shape);
  expectDType(kernel, "rstd", rstd, ["f32"]);
  expectLength(kernel, "rstd", rstd, layout.N);
  const { F, elem, dot } = typing(layout);
  const tensors = [out, rstd, x, weight];
  const texels = layout.width === 4 && (io.texels ?? (rec.gpu.info.fallback && x.length >= TEXEL_READ_MIN));
  // Staged before the kernel runs, so an in-place residual reads the old x from its copy.
  const staged = texels
    ? stageReads(rec, kernel, [["x", x], ...(residual ? [["branch", residual.branch] as const] : []), [
      "weight",
      weight,
    ]])
    : null;
  const read = (name: string, index: string, storage = name) =>
    staged ? `fetch_${name}(${index})` : `${F}(${storage}[${index}])`;
  let decls: StorageDecl[];
  let load: string;
  // With a thread per row, x is read again for the output rather than kept in registers.
  let reload: string;
  if (residual) {
    const { residualOut, branch, inPlace } = residual;
    for (const [name, t] of [["branch", branch], ["residualOut", residualOut]] as const) {
      expectDType(kernel, name, t, ["f32", "f16"]);
      expectShape(kernel, name, t, x.shape);
    }
    expectDisjoint(kernel, [["residualOut", residualOut], ["out", out], ["rstd", rstd]], [
      ...(inPlace ? [] : [["x", x] as const]),
      ["branch", branch],
      ["weight", weight],
    ]);
    tensors.push(residualOut, branch);
    const xName = inPlace ? "residualOut" : "x";
    decls = [
      ...(inPlace || staged ? [] : [{ name: "x", tensor: x, element: elem(x) }]),
      ...(staged ? [] : [
        { name: "branch", tensor: branch, element: elem(branch) },
        { name: "weight", tensor: weight, element: elem(weight) },
      ]),
      { name: "residualOut", tensor: residualOut, write: true, element: elem(residualOut) },
    ];
    load = `let s = ${elem(residualOut)}(${read("x", "i", xName)} + ${read("branch", "i")});
      residualOut[i] = s;
      let v = ${F}(s);`;
    // The staged x is the old one even in place; storage has the sum by now.
    reload = staged
      ? `${F}(${elem(residualOut)}(${read("x", "i")} + ${read("branch", "i")}))`
      : `${F}(residualOut[i])`;
  } else {
    expectDisjoint(kernel, [["out", out], ["rstd", rstd]], [["x", x], ["weight", weight]]);
    decls = staged ? [] : [
      { name: "x", tensor: x, element: elem(x) },
      { name: "weight", tensor: weight, element: elem(weight) },
    ];
    load = `let v = ${read("x", "i")};`;
    reload = read("x", "i");
  }
  decls.push(
    { name: "out", tensor: out, write: true, element: elem(out) },
    { name: "rstd", tensor: rstd, write: true },
  );
  expectF16Support(kernel, rec.gpu.features.f16, tensors);
  const { wgsl, bindings } = declare(decls);
  // A kept texel copy of out (a decoding step's matmul input) is written as well; a vec4 is a texel.
  const mirror = layout.width === 4 ? rec.texelCache?.mirror(rec, out) ?? null : null;
  const reads = texelReads(staged ?? [], bindings.length + (mirror ? 1 : 0));
  const threadPerRow = io.threadPerRow ?? rec.gpu.info.fallback;
  const store = (value: string) =>
    `let o = ${elem(out)}(${value});
      out[i] = o;${mirror ? "\n      storeOut(i, vec4<f32>(o));" : ""}`;
  const threadCode = `${threadRowEntry(layout)}
  var ss = 0.0;
  for (var c = 0u; c < VECS * one; c++) {
    let i = row * VECS + c;
    ${load}
    ss += ${dot("v", "v")};
  }
  let r = inverseSqrt(ss / f32(C) + EPS);
  rstd[row] = r;
  for (var c = 0u; c < VECS * one; c++) {
    let i = row * VECS + c;
    ${store(`${reload} * r * ${read("weight", "c")}`)}
  }
}`;
  const warpCode = `${rowPrelude(layout)}

@compute @workgroup_size(R * T)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let t = lid.x % T;
  let row = ${WGSL_LINEAR_WORKGROUP} * R + lid.x / T;
  let live = row < N; // rows past the end still take part in the barriers
  var xs: array<${F}, PER>;
  var ss = 0.0;
  if (live) {
    for (var k = 0u; k < PER; k++) {
      let c = t + k * T;
      if (c < VECS) {
        let i = row * VECS + c;
        ${load}
        xs[k] = v;
        ss += ${dot("v", "v")};
      }
    }
  }
  let r = inverseSqrt(rowSum(ss, lid.x) / f32(C) + EPS);
  if (!live) { return; }
  if (t == 0u) { rstd[row] = r; }
  for (var k = 0u; k < PER; k++) {
    let c = t + k * T;
    if (c < VECS) {
      let i = row * VECS + c;
      ${store(`xs[k] * r * ${read("weight", "c")}`)}
    }
  }
}`;
  const code = `${wgsl}
${mirror ? texelWriterWgsl("storeOut", bindings.length, mirror) : ""}
${reads.wgsl}
const EPS = ${float(eps)};
${threadPerRow ? threadCode : warpCode}`;
  const label = `${kernel} C=${layout.C} ${
    threadPerRow ? "thread" : "warp"
  } per row ${x.dtype}->${out.dtype}${mirror ? " +texels" : ""}${staged ? " from texels" : ""}`;
  rec.dispatch(
    rec.gpu.pipelines.get(label, code),
    [...bindings, ...(mirror ? [mirror.view] : []), ...reads.views],
    grid(rec.gpu, Math.ceil(layout.N / (threadPerRow ? THREAD_ROWS : layout.rows))),
  );
  if (mirror) rec.texelCache!.markCurrent(rec, out);
}

/**
 * Arguments of {@link rmsnormForward}.
 *
 * @example
 * ```ts
 * const args: RmsnormForwardArgs = { out: xn, rstd, x, weight: gain, eps: 1e-5 };
 * rmsnormForward(rec, args);
 * ```
 */
export interface RmsnormForwardArgs {
  /** Output [N, C], f32 or f16; overwritten. */
  out: Tensor;
  /** 1/rms of each row [N], f32; overwritten (the backward reads it). */
  rstd: Tensor;
  /** Input [..., C], f32 or f16 (any leading shape, e.g. [B, T, C]). */
  x: Tensor;
  /** Gain [C], f32 or f16. */
  weight: Tensor;
  /** Added to the mean square (LLaMA uses 1e-5 or 1e-6); baked into the kernel. */
  eps: number;
  /**
   * Read the inputs from staged copies (default: on a software adapter, for 2^14
   * or more elements of x, when C % 4 == 0).
   */
  texels?: boolean;
  /**
   * A thread per row instead of a warp (default: on a software adapter, where a
   * row sum through workgroup memory costs a lane loop per access and a barrier
   * per level; 1.4–3× faster there).
   */
  threadPerRow?: boolean;
}

/**
 * RMSNorm forward: rstd[n] = 1/sqrt(mean(x[n]²) + eps) (saved for the backward)
 * and out[n] = x[n] · rstd[n] · weight. Rows are the last dimension of x.
 *
 * @param rec The recorder.
 * @param args Output `out` and `rstd`, input `x`, `weight`, `eps` and the layout
 *   options (see {@link RmsnormForwardArgs}).
 * @example
 * ```ts
 * const rec = gpu.recorder();
 * rmsnormForward(rec, { out: xn, rstd, x, weight: lnWeight, eps: 1e-5 });
 * rec.submit();
 * ```
 */
export function rmsnormForward(rec: Recorder, args: RmsnormForwardArgs): void {
  recordForward(rec, "rmsnormForward", args);
}

/**
 * The residual add fused into the following RMSNorm: residualOut = x + branch,
 * then {@link rmsnormForward} of residualOut, in one pass over memory (the
 * unfused pair reads the sum back). `residualOut` may be `x` itself (x += branch).
 *
 * @param rec The recorder.
 * @param args `residualOut` [N, C], `out` [N, C] (f32 or f16, overwritten),
 *   `rstd` [N] (f32), `x` and `branch` [N, C] (f32 or f16), `weight` [C], `eps`,
 *   `texels` and `threadPerRow` as in {@link RmsnormForwardArgs}.
 * @example
 * ```ts
 * // The residual stream takes the attention output, and the MLP's norm reads it.
 * residualRmsnormForward(rec, { residualOut: x, out: xn, rstd, x, branch: attnOut, weight, eps: 1e-5 });
 * ```
 */
export function residualRmsnormForward(
  rec: Recorder,
  args: RmsnormForwardArgs & { residualOut: Tensor; branch: Tensor },
): void {
  const { residualOut, x, branch } = args;
  recordForward(rec, "residualRmsnormForward", args, {
    residualOut,
    branch,
    inPlace: sameRange(residualOut, x),
  });
}

/** Partial dweight sums, one buffer per size and device, allocated on first use and kept for the run. */
const scratch = new WeakMap<Gpu, Map<number, Tensor>>();

function partials(gpu: Gpu, blocks: number, C: number): Tensor {
  let bySize = scratch.get(gpu);
  if (!bySize) scratch.set(gpu, bySize = new Map());
  const key = blocks * C;
  let t = bySize.get(key);
  if (!t) {
    t = gpu.tensor([blocks, C], "f32", { label: "rmsnorm dweight partials" });
    bySize.set(key, t);
  }
  return t;
}

/**
 * Arguments of {@link rmsnormBackward}.
 *
 * @example
 * ```ts
 * const args: RmsnormBackwardArgs = { dx, dweight, dout, x, weight, rstd };
 * rmsnormBackward(rec, args);
 * ```
 */
export interface RmsnormBackwardArgs {
  /** Input gradient [N, C], f32 or f16: overwritten, or added into with `accumulate`. */
  dx: Tensor;
  /** Gain gradient [C], f32, always added into; omit it for a frozen gain (no second pass). */
  dweight?: Tensor;
  /** Output gradient [N, C], f32 or f16. */
  dout: Tensor;
  /** The forward's input [N, C]. */
  x: Tensor;
  /** Gain [C], f32 or f16. */
  weight: Tensor;
  /** The forward's rstd [N], f32. */
  rstd: Tensor;
  /** Add into dx rather than overwrite it. */
  accumulate?: boolean;
  /** As in {@link RmsnormForwardArgs}: dout, x, weight and an accumulated dx from staged copies. */
  texels?: boolean;
  /** As in {@link RmsnormForwardArgs}. */
  threadPerRow?: boolean;
}

/**
 * RMSNorm backward. With g = dout·weight and r = rstd[n]:
 * dx = r·(g − x·r²·mean(g·x)) and dweight += Σ_n dout·x·r. Two dispatches, each
 * sum in a fixed order, so the result is deterministic: with a warp per row, the
 * rows (dx, and each workgroup's partial dweight sums) and a sum of the partials
 * into dweight; with a thread per row, the rows (dx) and a sum over the rows of
 * each column of dout·x·r.
 *
 * @param rec The recorder.
 * @param args Gradients `dx` and `dweight`, `dout`, the forward's `x`, `weight`
 *   and `rstd`, and options (see {@link RmsnormBackwardArgs}).
 * @example
 * ```ts
 * // The norm's input gradient joins the residual-stream gradient dresidual.
 * rmsnormBackward(rec, { dx: dresidual, dweight, dout: dxn, x, weight, rstd, accumulate: true });
 * ```
 */
export function rmsnormBackward(rec: Recorder, args: RmsnormBackwardArgs): void {
  const kernel = "rmsnormBackward";
  const { dx, dweight, dout, x, weight, rstd, accumulate = false } = args;
  const layout = rowsOf(kernel, x, weight);
  for (const [name, t] of [["x", x], ["dout", dout], ["dx", dx]] as const) {
    expectDType(kernel, name, t, ["f32", "f16"]);
    expectShape(kernel, name, t, x.shape);
  }
  if (dweight) {
    expectDType(kernel, "dweight", dweight, ["f32"]);
    expectShape(kernel, "dweight", dweight, [layout.C]);
  }
  expectDType(kernel, "rstd", rstd, ["f32"]);
  expectLength(kernel, "rstd", rstd, layout.N);
  expectDisjoint(kernel, [["dx", dx], ...(dweight ? [["dweight", dweight] as const] : [])], [
    ["dout", dout],
    ["x", x],
    ["weight", weight],
    ["rstd", rstd],
  ]);
  expectF16Support(kernel, rec.gpu.features.f16, [dx, dout, x, weight]);

  const { F, elem, dot } = typing(layout);
  const texels = layout.width === 4 &&
    (args.texels ?? (rec.gpu.info.fallback && x.length >= TEXEL_READ_MIN));
  // Staged before the kernel runs, so an accumulating dx is read from its copy as it was.
  const staged = texels
    ? stageReads(rec, kernel, [
      ["dout", dout],
      ["x", x],
      ["weight", weight],
      ...(accumulate ? [["dx", dx] as const] : []),
    ])
    : null;
  const read = (name: string, index: string) =>
    staged ? `fetch_${name}(${index})` : `${F}(${name}[${index}])`;
  const dxValue = accumulate ? `${read("dx", "i")} + d` : "d";
  const storageReads = (names: string[]) =>
    staged ? [] : [
      { name: "dout", tensor: dout, element: elem(dout) },
      { name: "x", tensor: x, element: elem(x) },
      { name: "weight", tensor: weight, element: elem(weight) },
    ].filter((d) => names.includes(d.name));

  // A thread per row sums dweight over the rows in lanes of N / REDUCE_LANES rows each:
  // past the adapter's loop limit (N > 2^20 on lavapipe) the warp layout takes it by default.
  const columnTrips = Math.ceil(layout.N / REDUCE_LANES) + 1 + Math.log2(REDUCE_LANES) + 1;
  const threadPerRow = args.threadPerRow ?? (rec.gpu.info.fallback && columnTrips <= rec.gpu.loopLimit + 1);
  if (threadPerRow && dweight) expectLoopTrips(rec.gpu, kernel, columnTrips, "use threadPerRow: false");
  if (threadPerRow) {
    const rows = declare([
      ...storageReads(["dout", "x", "weight"]),
      { name: "rstd", tensor: rstd },
      { name: "dx", tensor: dx, write: true, element: elem(dx) },
    ]);
    const reads = texelReads(staged ?? [], rows.bindings.length);
    const g = `${read("dout", "i")} * ${read("weight", "c")}`;
    const rowsCode = `${rows.wgsl}
${reads.wgsl}
${threadRowEntry(layout)}
  let r = rstd[row];
  var gx = 0.0;
  for (var c = 0u; c < VECS * one; c++) {
    let i = row * VECS + c;
    gx += ${dot(g, read("x", "i"))};
  }
  let coef = r * r * gx / f32(C); // r² · mean(g · x)
  for (var c = 0u; c < VECS * one; c++) {
    let i = row * VECS + c;
    let d = r * (${g} - ${read("x", "i")} * coef);
    dx[i] = ${elem(dx)}(${dxValue});
  }
}`;
    const label = `rmsnormBackward rows C=${layout.C} thread per row ${x.dtype}${
      accumulate ? " accumulate" : ""
    }${staged ? " from texels" : ""}`;
    rec.dispatch(
      rec.gpu.pipelines.get(label, rowsCode),
      [...rows.bindings, ...reads.views],
      grid(rec.gpu, Math.ceil(layout.N / THREAD_ROWS)),
    );
    if (!dweight) return;
    const columns = declare([
      ...storageReads(["dout", "x"]),
      { name: "rstd", tensor: rstd },
      { name: "dweight", tensor: dweight, write: true, element: F },
    ]);
    const columnReads = texelReads(
      (staged ?? []).filter(([name]) => name === "dout" || name === "x"),
      columns.bindings.length,
    );
    recordColumnSum(
      rec,
      layout,
      `${columns.wgsl}\n${columnReads.wgsl}\nconst N = ${layout.N}u;`,
      [...columns.bindings, ...columnReads.views],
      `for (var n = lid.y; n < N; n += LANES) {
      let i = n * VECS + c;
      s += ${read("dout", "i")} * ${read("x", "i")} * rstd[n];
    }`,
    );
    return;
  }

  // Consecutive rows per row group: doubled, up to 16, while at least the target
  // number of row groups remains; beyond 16 only if the partials would not fit
  // one storage binding.
  const groupsPerBlock = layout.rows; // row groups per workgroup
  let rowsPerGroup = 1;
  const target = targetRowGroups(rec.gpu);
  while (rowsPerGroup < 16 && layout.N / (2 * rowsPerGroup) >= target) rowsPerGroup *= 2;
  const maxBinding = rec.gpu.limits.maxStorageBufferBindingSize;
  while (Math.ceil(layout.N / (groupsPerBlock * rowsPerGroup)) * layout.C * 4 > maxBinding) rowsPerGroup *= 2;
  const blocks = Math.ceil(layout.N / (groupsPerBlock * rowsPerGroup)); // workgroups, one partial row each
  const partial = partials(rec.gpu, blocks, layout.C);
  const rows = declare([
    ...storageReads(["dout", "x", "weight"]),
    { name: "rstd", tensor: rstd },
    { name: "dx", tensor: dx, write: true, element: elem(dx) },
    { name: "partial", tensor: partial, write: true, element: F },
  ]);
  const reads = texelReads(staged ?? [], rows.bindings.length);
  const rowsCode = `${rows.wgsl}
${reads.wgsl}
${rowPrelude(layout)}
const ROWS = ${rowsPerGroup}u; // consecutive rows per row group
const BLOCKS = ${blocks}u; // workgroups
var<workgroup> comb: array<${F}, R * T>;

@compute @workgroup_size(R * T)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let block = ${WGSL_LINEAR_WORKGROUP}; // uniform across the workgroup, so the barriers below are too
  if (block >= BLOCKS) { return; }
  let t = lid.x % T;
  let group = lid.x / T;
  var ws: array<${F}, PER>;
  var xs: array<${F}, PER>;
  var gs: array<${F}, PER>; // dout · weight
  var dw: array<${F}, PER>; // this row group's Σ dout · x · rstd
  for (var k = 0u; k < PER; k++) {
    let c = t + k * T;
    if (c < VECS) { ws[k] = ${read("weight", "c")}; }
  }
  let first = (block * R + group) * ROWS;
  // Every row group runs all ROWS steps: rows past the end still take part in the barriers.
  for (var j = 0u; j < ROWS; j++) {
    let row = first + j;
    let live = row < N;
    var r = 0.0;
    var gx = 0.0;
    if (live) {
      r = rstd[row];
      for (var k = 0u; k < PER; k++) {
        let c = t + k * T;
        if (c < VECS) {
          let i = row * VECS + c;
          let d = ${read("dout", "i")};
          let v = ${read("x", "i")};
          xs[k] = v;
          gs[k] = d * ws[k];
          gx += ${dot("gs[k]", "v")};
          dw[k] += d * v * r;
        }
      }
    }
    let coef = r * r * rowSum(gx, lid.x) / f32(C); // r² · mean(g · x)
    if (live) {
      for (var k = 0u; k < PER; k++) {
        let c = t + k * T;
        if (c < VECS) {
          let i = row * VECS + c;
          let d = r * (gs[k] - xs[k] * coef);
          dx[i] = ${elem(dx)}(${dxValue});
        }
      }
    }
  }
  // The workgroup's row groups add their sums in group order: one row of partials per workgroup.
  for (var k = 0u; k < PER; k++) {
    comb[lid.x] = dw[k];
    workgroupBarrier();
    let c = t + k * T;
    if (group == 0u && c < VECS) {
      var s = comb[t];
      for (var q = 1u; q < R; q++) { s += comb[q * T + t]; }
      partial[block * VECS + c] = s;
    }
    workgroupBarrier();
  }
}`;
  const rowsLabel = `rmsnormBackward rows C=${layout.C} ${x.dtype}${accumulate ? " accumulate" : ""}${
    staged ? " from texels" : ""
  }`;
  rec.dispatch(
    rec.gpu.pipelines.get(rowsLabel, rowsCode),
    [...rows.bindings, ...reads.views],
    grid(rec.gpu, blocks),
  );
  if (!dweight) return;

  const sum = declare([
    { name: "partial", tensor: partial, element: F },
    { name: "dweight", tensor: dweight, write: true, element: F },
  ]);
  recordColumnSum(
    rec,
    layout,
    `${sum.wgsl}\nconst BLOCKS = ${blocks}u;`,
    sum.bindings,
    "for (var b = lid.y; b < BLOCKS; b += LANES) { s += partial[b * VECS + c]; }",
  );
}

/**
 * dweight[c] += Σ of each vector column c's values, in a fixed order: `lanes`
 * (WGSL adding this lane's share into `s` for column c, lane lid.y of LANES)
 * then a tree over the lanes in workgroup memory.
 */
function recordColumnSum(
  rec: Recorder,
  layout: RowLayout,
  decls: string,
  bindings: Binding[],
  lanes: string,
): void {
  const { F } = typing(layout);
  const code = `${decls}
const VECS = ${layout.vecs}u;
const COLS = ${REDUCE_COLS}u; // vector columns per workgroup
const LANES = ${REDUCE_LANES}u; // lanes splitting each column's sum
var<workgroup> acc: array<${F}, ${REDUCE_COLS * REDUCE_LANES}>;

@compute @workgroup_size(COLS, LANES)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let c = wid.x * COLS + lid.x;
  var s = ${F}(0.0);
  if (c < VECS) {
    ${lanes}
  }
  acc[lid.y * COLS + lid.x] = s;
  workgroupBarrier();
  for (var h = LANES / 2u; h > 0u; h >>= 1u) {
    if (lid.y < h) { acc[lid.y * COLS + lid.x] += acc[(lid.y + h) * COLS + lid.x]; }
    workgroupBarrier();
  }
  if (lid.y == 0u && c < VECS) { dweight[c] += acc[lid.x]; }
}`;
  rec.dispatch(
    rec.gpu.pipelines.get(`rmsnormBackward dweight sum C=${layout.C}`, code),
    bindings,
    Math.ceil(layout.vecs / REDUCE_COLS),
  );
}
