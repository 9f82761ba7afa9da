/**
 * The matmul for software adapters (Mesa's llvmpipe/lavapipe), where a load's
 * cost depends on what it reads from, not on how the tile is blocked.
 *
 * llvmpipe runs 8 invocations as the lanes of one AVX2 vector, and a load from
 * a storage buffer or workgroup memory costs 8 to 18 times a texel fetch there
 * (see `texels.ts`), whatever the blocking. So this kernel copies both operands
 * into staging textures and reads them by texel fetches.
 *
 * A workgroup of {@link TEXEL_LANES} invocations computes a {@link TexelTile}:
 * `rows` rows of `out` by `quads` groups of 4 adjacent columns per invocation,
 * each held as a vec4 accumulator. Row indexes depend only on the workgroup, so
 * those fetches are the same for all lanes; column fetches differ per lane. Each
 * step of 4 depths reads `rows + 4·quads` texels for `16·rows·quads` FMAs per
 * invocation, so bigger tiles fetch less per FMA until spilled accumulators
 * cost more than the fetches they save ({@link texelTile} picks the size).
 *
 * A texel holds 4 consecutive elements of one row of an operand, and the loop
 * takes 4 depths a step. An operand whose rows (K for a and bᵀ, M for aᵀ, N for
 * b) are whole texels, with K a multiple of 4, is copied into its texture as it
 * is; any other is written by a padding kernel (each row starting on a texel,
 * zeros after it and in the rows past K), which needs an unbatched operand.
 * {@link texelMatmulFits} says when a call qualifies.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { MatmulProblem } from "./matmul.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import { GpuError } from "./errors.ts";
import { Tensor } from "./tensor.ts";
import {
  canStagePaddedTexels,
  canStageTexels,
  type StagedTexels,
  stagePaddedTexels,
  stageTexels,
  texelReaderWgsl,
} from "./texels.ts";

/** Invocations per workgroup: one vector of llvmpipe's 8 lanes. */
export const TEXEL_LANES = 8;

/**
 * The blocking of the texel kernel: a workgroup computes `rows` rows of `out`
 * by `4·quads·TEXEL_LANES` columns; each lane holds `rows`×`quads` vec4
 * accumulators. Row fetches are shared by the lanes, so each serves
 * `16·quads` FMAs per lane; a column fetch serves `4·rows`.
 *
 * @example
 * ```ts
 * // 16 rows by 96 columns per workgroup
 * matmul(rec, { out, a, b, texel: { rows: 16, quads: 3 } });
 * ```
 */
export interface TexelTile {
  /** Rows of `out` per workgroup (a multiple of 4 when a is transposed). */
  rows: number;
  /** Column quads per lane, each `TEXEL_LANES` quads past the one before. */
  quads: number;
}

/**
 * The blocking {@link texelMatmul} uses for `p`: 16 rows by 4 quads per lane, which
 * fetches 16 + 16 texels per step for 1024 FMAs a lane (8 + 4 for 128 at 8×1;
 * on lavapipe 16×4 ran the 1024³ product 1.2× faster than 8×1); fewer where
 * M or N is so small that the bigger tile would mostly compute past the edge,
 * and M rows when M is below 8 (a decoding step: one row per sequence, each row
 * a fetch per step).
 *
 * @param p The product.
 * @returns The tile.
 */
export function texelTile(p: MatmulProblem): TexelTile {
  if (p.m < 8) return { rows: Math.max(1, p.transposeA ? Math.ceil(p.m / 4) * 4 : p.m), quads: 1 };
  // The largest size that pads the edge by at most a 4-row (4-quad) block beyond the smallest.
  const padded = (size: number, block: number) => Math.ceil(size / block) * block;
  const rows = padded(p.m, 16) <= padded(p.m, 8) + 4 ? 16 : 8;
  const quadCount = Math.ceil(p.n / 4);
  const fits = (quads: number) =>
    padded(quadCount, quads * TEXEL_LANES) <= padded(quadCount, TEXEL_LANES) + 4;
  return { rows, quads: [4, 2, 1].find(fits)! };
}

/**
 * An operand as its staging texture holds it: `rows` rows of `cols` elements,
 * each row starting on a texel; with `padded`, columns up to the next multiple
 * of 4 and rows up to `paddedRows` are zeros (see `stagePaddedTexels`).
 */
interface OperandLayout {
  rows: number;
  cols: number;
  paddedRows: number;
  padded: boolean;
}

/**
 * How a and b are staged: a step takes 4 depths, so K is padded to a multiple of
 * 4 with zero rows or columns, and so is each row's length.
 */
function operandLayouts(p: MatmulProblem): { a: OperandLayout; b: OperandLayout } {
  const paddedK = Math.ceil(p.k / 4) * 4;
  const layout = (rows: number, cols: number, paddedRows: number): OperandLayout => ({
    rows,
    cols,
    paddedRows,
    padded: cols % 4 !== 0 || paddedRows !== rows,
  });
  return {
    a: p.transposeA ? layout(p.k, p.m, paddedK) : layout(p.m, p.k, p.m),
    b: p.transposeB ? layout(p.n, p.k, p.n) : layout(p.k, p.n, paddedK),
  };
}

/**
 * Whether the texel kernel can run this product on `gpu`: each operand fits a
 * staging texture, and one whose rows are not whole texels (or whose K is not
 * a multiple of 4) is unbatched, so a kernel can pad it on the way in.
 *
 * @param gpu The device.
 * @param p The product.
 * @returns True when {@link texelMatmul} applies.
 */
export function texelMatmulFits(gpu: Gpu, p: MatmulProblem): boolean {
  const layouts = operandLayouts(p);
  const fits = (t: Tensor, layout: OperandLayout, stride: number) =>
    layout.padded
      ? stride === 0 && canStagePaddedTexels(gpu, layout.paddedRows, layout.cols)
      : canStageTexels(gpu, t);
  return fits(p.a, layouts.a, p.aStride) && fits(p.b, layouts.b, p.bStride) &&
    (p.batch === 1 || (!layouts.a.padded && !layouts.b.padded));
}

/**
 * out = op(a)·op(b) (or += with `accumulate`) by texel fetches; call only when
 * {@link texelMatmulFits} holds.
 *
 * @param rec The recorder.
 * @param p The validated product.
 * @param tile The blocking, by default {@link texelTile}'s.
 * @throws {GpuError} When the tile is not whole rows and quads (or its rows not a multiple of 4 for aᵀ).
 */
export function texelMatmul(rec: Recorder, p: MatmulProblem, tile: TexelTile = texelTile(p)): void {
  checkTexelTile(p, tile);
  const total = p.batch * Math.ceil(p.m / tile.rows) *
    Math.ceil(Math.ceil(p.n / 4) / (TEXEL_LANES * tile.quads));
  if (total === 0) return;
  const layouts = operandLayouts(p);
  const stage = (t: Tensor, layout: OperandLayout, slot: string) =>
    layout.padded ? stagePaddedTexels(rec, t, layout, slot) : stageTexels(rec, t, slot);
  const a = stage(p.a, layouts.a, "matmul a");
  const b = stage(p.b, layouts.b, "matmul b");
  const code = kernel(p, tile, a, b);
  const label = `matmul texel ${tile.rows}x${tile.quads} ${p.transposeA ? "Aᵀ" : "A"}·${
    p.transposeB ? "Bᵀ" : "B"
  }${p.accumulate ? " +=" : ""} ${p.a.dtype}·${p.b.dtype}->${p.out.dtype} ${p.batch}x${p.m}x${p.n}x${p.k}`;
  const pipeline = rec.gpu.pipelines.get(label, code);
  rec.dispatch(pipeline, [a.view, b.view, p.out], grid(rec.gpu, total));
}

function checkTexelTile(p: MatmulProblem, { rows, quads }: TexelTile): void {
  const whole = (v: number) => Number.isInteger(v) && v >= 1 && v <= 64;
  if (!whole(rows) || !whole(quads) || (p.transposeA && rows % 4 !== 0)) {
    throw new GpuError(
      `matmul: a texel tile needs whole rows and quads from 1 to 64${
        p.transposeA ? ", rows a multiple of 4 for aᵀ" : ""
      }; got rows=${rows} quads=${quads}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// WGSL generation

const XYZW = ["x", "y", "z", "w"];

function kernel(p: MatmulProblem, tile: TexelTile, a: StagedTexels, b: StagedTexels): string {
  const { rows: TM, quads: TQ } = tile;
  const groups = Math.ceil(Math.ceil(p.n / 4) / (TEXEL_LANES * TQ));
  const tiles = Math.ceil(p.m / TM) * groups;
  // Texels per row of each staged operand (rows start on a texel) and steps along K.
  const k4 = Math.ceil(p.k / 4);
  const aRow4 = p.transposeA ? Math.ceil(p.m / 4) : k4;
  const bRow4 = p.transposeB ? k4 : Math.ceil(p.n / 4);
  // Per step along K (4 values, kk = 0..3): aValue[i][kk] is a at row m0 + i,
  // bValue[j][kk] the 4 columns of the lane's quad j of b. aFetches[i] are the
  // fetches of a that row i is the first to use.
  const aValue: string[][] = Array.from({ length: TM }, () => []);
  const aFetches: string[][] = Array.from({ length: TM }, () => []);
  if (p.transposeA) {
    // aᵀ is [K, M]: a texel holds 4 rows at one depth.
    for (let c = 0; c < TM / 4; c++) {
      for (let kk = 0; kk < 4; kk++) {
        aFetches[4 * c].push(
          `let at${kk}_${c} = fetchA(aBase + (k * 4u + ${kk}u) * ${aRow4}u + m0 / 4u + ${c}u);`,
        );
        for (let r = 0; r < 4; r++) aValue[4 * c + r][kk] = `at${kk}_${c}.${XYZW[r]}`;
      }
    }
  } else {
    // a is [M, K]: a texel holds 4 depths of one row.
    for (let i = 0; i < TM; i++) {
      aFetches[i].push(`let ar${i} = fetchA(aBase + (m0 + ${i}u) * ${aRow4}u + k);`);
      for (let kk = 0; kk < 4; kk++) aValue[i][kk] = `ar${i}.${XYZW[kk]}`;
    }
  }
  const lines: string[] = [];
  const bValue: string[][] = Array.from({ length: TQ }, () => []);
  for (let j = 0; j < TQ; j++) {
    if (p.transposeB) {
      // bᵀ is [N, K]: a texel holds 4 depths of one column.
      for (let c = 0; c < 4; c++) {
        lines.push(`let bt${j}_${c} = fetchB(bBase + (n${j} + ${c}u) * ${bRow4}u + k);`);
      }
      for (let kk = 0; kk < 4; kk++) {
        bValue[j].push(`vec4<f32>(${[0, 1, 2, 3].map((c) => `bt${j}_${c}.${XYZW[kk]}`).join(", ")})`);
      }
    } else {
      // b is [K, N]: a texel holds the quad's 4 columns at one depth.
      for (let kk = 0; kk < 4; kk++) {
        lines.push(`let b${j}_${kk} = fetchB(bBase + (k * 4u + ${kk}u) * ${bRow4}u + q${j});`);
        bValue[j].push(`b${j}_${kk}`);
      }
    }
  }
  // One accumulator's 4 FMAs in a row, so it is loaded and stored once per step
  // (there are more accumulators than registers); a row of a is fetched just
  // before its first use, keeping few values live.
  for (let i = 0; i < TM; i++) {
    lines.push(...aFetches[i]);
    for (let j = 0; j < TQ; j++) {
      for (let kk = 0; kk < 4; kk++) {
        lines.push(`acc${i}_${j} = fma(vec4<f32>(${aValue[i][kk]}), ${bValue[j][kk]}, acc${i}_${j});`);
      }
    }
  }
  const accs: string[] = [];
  const stores: string[] = [];
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TQ; j++) {
      accs.push(`var acc${i}_${j} = vec4<f32>();`);
      stores.push(storeQuad(p, tile, i, j));
    }
  }
  // Quad j of a lane is TEXEL_LANES quads past quad j - 1, so each fetch of b reads
  // adjacent texels across the lanes.
  const quads = Array.from(
    { length: TQ },
    (_, j) =>
      `let q${j} = group * ${TEXEL_LANES * TQ}u + ${j * TEXEL_LANES}u + lid.x;\n  let n${j} = q${j} * 4u;`,
  );
  const f16 = p.out.dtype === "f16";
  const outElement = vectorOut(p) ? `vec4<${p.out.dtype}>` : p.out.dtype;
  return `${
    f16 ? "enable f16;\n" : ""
  }@group(0) @binding(2) var<storage, read_write> out: array<${outElement}>;

${texelReaderWgsl("fetchA", 0, a, { fixedWidth: true })}
${texelReaderWgsl("fetchB", 1, b, { fixedWidth: true })}

@compute @workgroup_size(${TEXEL_LANES})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let linear = ${WGSL_LINEAR_WORKGROUP};
  if (linear >= ${p.batch * tiles}u) { return; }
  let batch = linear / ${tiles}u;
  let tile = linear % ${tiles}u;
  let m0 = (tile / ${groups}u) * ${TM}u;
  let group = tile % ${groups}u;
  ${quads.join("\n  ")}
  let aBase = batch * ${Math.floor(p.aStride / 4)}u; // whole texels: a batched operand is not padded
  let bBase = batch * ${Math.floor(p.bStride / 4)}u;
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

/** WGSL that writes (or adds) accumulator (i, j), skipping rows and columns past the edge. */
function storeQuad(p: MatmulProblem, tile: TexelTile, i: number, j: number): string {
  const t = p.out.dtype;
  const acc = `acc${i}_${j}`;
  const body: string[] = [`let o = outBase + (m0 + ${i}u) * ${p.n}u + n${j};`];
  if (vectorOut(p)) {
    const value = p.accumulate ? `${acc} + vec4<f32>(out[o / 4u])` : acc;
    body.push(`out[o / 4u] = vec4<${t}>(${value});`);
  } else {
    for (let c = 0; c < 4; c++) {
      const value = p.accumulate ? `${acc}.${XYZW[c]} + f32(out[o + ${c}u])` : `${acc}.${XYZW[c]}`;
      const write = `out[o + ${c}u] = ${t}(${value});`;
      body.push(p.n % 4 === 0 ? write : `if (n${j} + ${c}u < ${p.n}u) { ${write} }`);
    }
  }
  const conditions = [`q${j} < ${Math.ceil(p.n / 4)}u`];
  if (p.m % tile.rows !== 0) conditions.push(`m0 + ${i}u < ${p.m}u`);
  return `if (${conditions.join(" && ")}) {\n    ${body.join("\n    ")}\n  }`;
}
