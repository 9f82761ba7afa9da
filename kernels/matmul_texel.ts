/**
 * The matmul for software adapters (Mesa's llvmpipe/lavapipe), where a load's
 * cost depends on what it reads from, not on how the tile is blocked.
 *
 * llvmpipe runs 8 invocations as the lanes of one AVX2 vector, and a load from
 * a storage buffer or workgroup memory costs 8 to 18 times a texel fetch there
 * (see `texels.ts`), whatever the blocking. So this kernel copies both operands
 * into staging textures and reads them by texel fetches.
 *
 * A workgroup of {@link TEXEL_LANES} invocations computes {@link TEXEL_ROWS} rows of
 * `out` (fewer when M is smaller: a decoding step has one row per sequence, and
 * each row costs a fetch per step); each invocation owns 4 adjacent columns,
 * held as a vec4 accumulator per row. Row indexes depend only on the workgroup, so those fetches are the same
 * for all lanes; column fetches differ per lane. Each step of 4 depths reads
 * TEXEL_ROWS + 4 texels for 16·TEXEL_ROWS FMAs per invocation.
 *
 * A texel must hold 4 consecutive elements of one row of each operand, so the
 * contiguous dimension of each (K for a and bᵀ, M for aᵀ, N for b) must be a
 * multiple of 4, and so must K, the steps along it; {@link texelMatmulFits} says
 * when a call qualifies.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { MatmulProblem } from "./matmul.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import { Tensor } from "./tensor.ts";
import { canStageTexels, stageTexels, texelFetchWgsl } from "./texels.ts";

/** Rows of `out` per workgroup, fetched once per step and shared by its lanes. */
export const TEXEL_ROWS = 8;
/** Invocations per workgroup: one vector of llvmpipe's 8 lanes. */
export const TEXEL_LANES = 8;

/**
 * Rows per workgroup for `p`: {@link TEXEL_ROWS}, or M when smaller (rounded up to
 * the 4 rows of an aᵀ texel).
 *
 * @param p The product.
 * @returns The row count baked into its kernel.
 */
export function texelRows(p: MatmulProblem): number {
  if (p.m >= TEXEL_ROWS) return TEXEL_ROWS;
  return Math.max(1, p.transposeA ? Math.ceil(p.m / 4) * 4 : p.m);
}

/**
 * Whether the texel kernel can run this product on `gpu`: each operand's rows
 * hold whole texels and start on a texel, and both fit a staging texture.
 *
 * @param gpu The device.
 * @param p The product.
 * @returns True when {@link texelMatmul} applies.
 */
export function texelMatmulFits(gpu: Gpu, p: MatmulProblem): boolean {
  // The loop along K takes 4 depths a step, so K is a multiple of 4 in every form.
  const aRow = p.transposeA ? p.m : p.k;
  const bRow = p.transposeB ? p.k : p.n;
  return p.k % 4 === 0 && aRow % 4 === 0 && bRow % 4 === 0 && canStageTexels(gpu, p.a) &&
    canStageTexels(gpu, p.b);
}

/**
 * out = op(a)·op(b) (or += with `accumulate`) by texel fetches; call only when
 * {@link texelMatmulFits} holds.
 *
 * @param rec The recorder.
 * @param p The validated product.
 */
export function texelMatmul(rec: Recorder, p: MatmulProblem): void {
  const quads = Math.ceil(p.n / 4);
  const total = p.batch * Math.ceil(p.m / texelRows(p)) * Math.ceil(quads / TEXEL_LANES);
  if (total === 0) return;
  const a = stageTexels(rec, p.a, "matmul a");
  const b = stageTexels(rec, p.b, "matmul b");
  const code = kernel(p, a.width, b.width);
  const label = `matmul texel ${p.transposeA ? "Aᵀ" : "A"}·${p.transposeB ? "Bᵀ" : "B"}${
    p.accumulate ? " +=" : ""
  } ${p.a.dtype}·${p.b.dtype}->${p.out.dtype} ${p.batch}x${p.m}x${p.n}x${p.k}`;
  const pipeline = rec.gpu.pipelines.get(label, code);
  rec.dispatch(pipeline, [a.view, b.view, p.out], grid(rec.gpu, total));
}

// ---------------------------------------------------------------------------------------------
// WGSL generation

const XYZW = ["x", "y", "z", "w"];

function kernel(p: MatmulProblem, widthA: number, widthB: number): string {
  const TM = texelRows(p);
  const quads = Math.ceil(p.n / 4);
  const groups = Math.ceil(quads / TEXEL_LANES);
  const tiles = Math.ceil(p.m / TM) * groups;
  const k4 = p.k / 4;
  const lines: string[] = [];
  // Per step along K (4 values, kk = 0..3): a{i}_{kk} is a at row m0 + i, b{kk} the
  // lane's 4 columns of b.
  const aValue: string[][] = Array.from({ length: TM }, () => []);
  if (p.transposeA) {
    // aᵀ is [K, M]: a texel holds 4 rows at one depth.
    for (let kk = 0; kk < 4; kk++) {
      for (let c = 0; c < TM / 4; c++) {
        lines.push(`let at${kk}_${c} = fetchA(aBase + (k * 4u + ${kk}u) * ${p.m / 4}u + m0 / 4u + ${c}u);`);
        for (let r = 0; r < 4; r++) aValue[4 * c + r][kk] = `at${kk}_${c}.${XYZW[r]}`;
      }
    }
  } else {
    // a is [M, K]: a texel holds 4 depths of one row.
    for (let i = 0; i < TM; i++) {
      lines.push(`let ar${i} = fetchA(aBase + (m0 + ${i}u) * ${k4}u + k);`);
      for (let kk = 0; kk < 4; kk++) aValue[i][kk] = `ar${i}.${XYZW[kk]}`;
    }
  }
  const bValue: string[] = [];
  if (p.transposeB) {
    // bᵀ is [N, K]: a texel holds 4 depths of one column.
    for (let c = 0; c < 4; c++) lines.push(`let bt${c} = fetchB(bBase + (n + ${c}u) * ${k4}u + k);`);
    for (let kk = 0; kk < 4; kk++) {
      bValue.push(`vec4<f32>(${[0, 1, 2, 3].map((c) => `bt${c}.${XYZW[kk]}`).join(", ")})`);
    }
  } else {
    // b is [K, N]: a texel holds the lane's 4 columns at one depth.
    for (let kk = 0; kk < 4; kk++) {
      lines.push(`let b${kk} = fetchB(bBase + (k * 4u + ${kk}u) * ${p.n / 4}u + q);`);
      bValue.push(`b${kk}`);
    }
  }
  for (let kk = 0; kk < 4; kk++) {
    for (let i = 0; i < TM; i++) {
      lines.push(`acc${i} = fma(vec4<f32>(${aValue[i][kk]}), ${bValue[kk]}, acc${i});`);
    }
  }
  const accs = Array.from({ length: TM }, (_, i) => `var acc${i} = vec4<f32>();`);
  const stores = Array.from({ length: TM }, (_, i) => storeRow(p, i));
  const f16 = p.out.dtype === "f16";
  const outElement = vectorOut(p) ? `vec4<${p.out.dtype}>` : p.out.dtype;
  return `${f16 ? "enable f16;\n" : ""}@group(0) @binding(0) var texA: texture_2d<f32>;
@group(0) @binding(1) var texB: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<${outElement}>;

${texelFetchWgsl("fetchA", "texA", widthA)}
${texelFetchWgsl("fetchB", "texB", widthB)}

@compute @workgroup_size(${TEXEL_LANES})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let linear = ${WGSL_LINEAR_WORKGROUP};
  if (linear >= ${p.batch * tiles}u) { return; }
  let batch = linear / ${tiles}u;
  let tile = linear % ${tiles}u;
  let m0 = (tile / ${groups}u) * ${TM}u;
  let q = (tile % ${groups}u) * ${TEXEL_LANES}u + lid.x;
  let n = q * 4u;
  let aBase = batch * ${p.aStride / 4}u;
  let bBase = batch * ${p.bStride / 4}u;
  let outBase = batch * ${p.m * p.n}u;
  ${accs.join("\n  ")}
  for (var k = 0u; k < ${k4}u; k++) {
    ${lines.join("\n    ")}
  }
  ${stores.join("\n  ")}
}
`;
}

/** Whether `out` is written as vec4s: rows of whole vec4s starting on one. */
function vectorOut(p: MatmulProblem): boolean {
  return p.n % 4 === 0 && p.out.byteOffset % (4 * Tensor.bytesPerElement(p.out.dtype)) === 0;
}

/** WGSL that writes (or adds) accumulator row `i`, skipping rows and columns past the edge. */
function storeRow(p: MatmulProblem, i: number): string {
  const t = p.out.dtype;
  const acc = `acc${i}`;
  const body: string[] = [`let o = outBase + (m0 + ${i}u) * ${p.n}u + n;`];
  if (vectorOut(p)) {
    const value = p.accumulate ? `${acc} + vec4<f32>(out[o / 4u])` : acc;
    body.push(`out[o / 4u] = vec4<${t}>(${value});`);
  } else {
    for (let c = 0; c < 4; c++) {
      const value = p.accumulate ? `${acc}.${XYZW[c]} + f32(out[o + ${c}u])` : `${acc}.${XYZW[c]}`;
      const write = `out[o + ${c}u] = ${t}(${value});`;
      body.push(p.n % 4 === 0 ? write : `if (n + ${c}u < ${p.n}u) { ${write} }`);
    }
  }
  const conditions = [`q < ${Math.ceil(p.n / 4)}u`];
  if (p.m % texelRows(p) !== 0) conditions.push(`m0 + ${i}u < ${p.m}u`);
  return `if (${conditions.join(" && ")}) {\n    ${body.join("\n    ")}\n  }`;
}
