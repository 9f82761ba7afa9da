/**
 * The matmul for GPUs: a workgroup computes a BM×BN tile of `out`, staging
 * BK-deep slabs of both operands in workgroup memory (see `matmul.ts` for the
 * layout and why each form has its own kernel), each thread a TM×TN block of
 * accumulators.
 *
 * @module
 */

import { GpuError } from "./errors.ts";
import type { MatmulProblem, MatmulTile } from "./matmul.ts";
import type { Recorder } from "./recorder.ts";
import { grid, WGSL_LINEAR_WORKGROUP } from "./recorder.ts";
import { recordElementwise } from "./elementwise.ts";
import { scratchTensor } from "./scratch.ts";
import { expectLoopTrips } from "./selftest.ts";
import { Tensor } from "./tensor.ts";
import { declare, type StorageDecl } from "./wgsl.ts";

/**
 * out = op(a)·op(b) (or += with `accumulate`) with the tiled kernel.
 *
 * @param rec The recorder.
 * @param p The validated product.
 * @param tile The blocking.
 * @param fix What to change when the kernel's loops would run past the adapter's limit.
 * @throws {GpuError} When the tile does not fit the device, or its loops would run past the limit.
 */
export function tiledMatmul(rec: Recorder, p: MatmulProblem, tile: MatmulTile, fix: string): void {
  checkTile(tile, rec);
  if (tile.f16Sums && (p.a.dtype !== "f16" || p.b.dtype !== "f16")) {
    throw new GpuError(
      `matmul: f16Sums multiplies in f16 and needs f16 a and b, got ${p.a.dtype} and ${p.b.dtype}; leave it unset`,
    );
  }
  expectLoopTrips(rec.gpu, "matmul", tiledLoopTrips(p, tile), fix);
  const tiles = p.batch * Math.ceil(p.m / tile.bm) * Math.ceil(p.n / tile.bn);
  if (tiles === 0) return;
  const split = splitOf(p, tile);
  // With split-K each range of K writes a partial product, and a second dispatch adds them up.
  const partials = split.count > 1 ? splitPartials(rec, p, split) : null;
  const q: MatmulProblem = partials ? { ...p, out: partials, accumulate: false } : p;
  const { wgsl, bindings } = declare(storage(q));
  const pipeline = rec.gpu.pipelines.get(productLabel("matmul", p, tile), wgsl + tiledKernel(q, tile, split));
  rec.dispatch(pipeline, bindings, grid(rec.gpu, tiles * split.count));
  if (partials) sumPartials(rec, p, partials, split.count);
}

/** The scratch tensor split-K's partial products go to: (count, batch, M, N) f32. */
function splitPartials(rec: Recorder, p: MatmulProblem, split: Split): Tensor {
  const length = split.count * p.batch * p.m * p.n;
  if (length * 4 > rec.gpu.limits.maxStorageBufferBindingSize) {
    throw new GpuError(
      `matmul: split-K's ${split.count} partial products take ${length * 4} bytes, past the adapter's ` +
        `${rec.gpu.limits.maxStorageBufferBindingSize} a binding may hold; use a smaller splitK`,
    );
  }
  return scratchTensor(rec.gpu, "matmul split-K partials", length);
}

/** out (+)= the sum of the `count` partial products, in order. */
function sumPartials(rec: Recorder, p: MatmulProblem, partials: Tensor, count: number): void {
  const size = p.batch * p.m * p.n;
  recordElementwise(rec, {
    label: `matmul split-K sum ${count}x${size}${p.accumulate ? " +=" : ""} ->${p.out.dtype}`,
    decls: [{ name: "partials", tensor: partials }, { name: "out", tensor: p.out, write: true }],
    n: size,
    body: `var sum = 0.0;
  for (var s = 0u; s < ${count}u; s++) { sum += partials[s * N + i]; }
  out[i] = ${p.out.dtype}(sum${p.accumulate ? " + f32(out[i])" : ""});`,
  });
}

/** How K is split: `count` ranges of `depth` (a multiple of bk), the last one possibly shorter. */
interface Split {
  count: number;
  depth: number;
}

function splitOf(p: MatmulProblem, tile: MatmulTile): Split {
  const wanted = tile.splitK ?? 1;
  const depth = Math.ceil(Math.ceil(p.k / wanted) / tile.bk) * tile.bk;
  return wanted === 1 || p.k === 0 ? { count: 1, depth: p.k } : { count: Math.ceil(p.k / depth), depth };
}

/**
 * Loop trips of one invocation of the tiled kernel, at most (see
 * `expectLoopTrips`): per step along K, the step itself, the slab loads of a and
 * b (each unit read by scalars adds a loop over its 4 values) and the groups of
 * 4 depths.
 */
function tiledLoopTrips(p: MatmulProblem, tile: MatmulTile): number {
  const threads = (tile.bm / tile.tm) * (tile.bn / tile.tn);
  const load = (s: Slab) => {
    const units = Math.ceil((s.tileRows * s.tileCols) / 4 / threads);
    return units * (s.vector ? 1 : 6) + 1;
  };
  const [a, b] = slabs(p, tile);
  return Math.ceil(p.k / tile.bk) * (1 + load(a) + load(b) + tile.bk / 4 + 1) + 1;
}

function checkTile(tile: MatmulTile, rec: Recorder): void {
  const { bm, bn, bk, tm, tn } = tile;
  const limits = rec.gpu.limits;
  // Both slabs, plus one vec4 of padding per row of a transposed b.
  const bytes = slabBytes(tile) * (bk * (bm + bn) + 4 * bn);
  const ok = [bm, bn, bk, tm, tn, tile.splitK ?? 1].every((v) => Number.isInteger(v) && v > 0) &&
    tm % 4 === 0 &&
    tn % 4 === 0 && bk % 4 === 0 && bm % tm === 0 && bn % tn === 0 &&
    bn / tn <= limits.maxComputeWorkgroupSizeX && bm / tm <= limits.maxComputeWorkgroupSizeY &&
    (bm / tm) * (bn / tn) <= limits.maxComputeInvocationsPerWorkgroup &&
    bytes <= limits.maxComputeWorkgroupStorageSize;
  if (!ok) {
    throw new GpuError(
      `matmul: tile ${JSON.stringify(tile)} is not usable; tm, tn and bk must be multiples of 4 dividing ` +
        "bm, bn, splitK a whole number, and the threads and workgroup memory must fit the device; pass one of " +
        "MATMUL_TILES",
    );
  }
}

const XYZW = ["x", "y", "z", "w"];

/** The type workgroup memory holds and the products are summed in: f16 with `f16Sums`. */
function slabType(tile: MatmulTile): "f32" | "f16" {
  return tile.f16Sums ? "f16" : "f32";
}

function slabBytes(tile: MatmulTile): number {
  return tile.f16Sums ? 2 : 4;
}

/** Whether `t` can be read as vec4s along a contiguous dimension of `inner` elements. */
function vectorizable(t: Tensor, inner: number): boolean {
  const vecBytes = 4 * Tensor.bytesPerElement(t.dtype);
  return inner % 4 === 0 && t.length > 0 && t.byteOffset % vecBytes === 0;
}

/**
 * With `transposeB`, thread tx owns the strided columns j·TX + tx (j < tn) rather than
 * 4 adjacent ones, so neighbouring threads read neighbouring rows of the [n][k] slab
 * (conflict-free with one vec4 of padding); its stores then go out as scalars.
 */
function stridedColumns(p: MatmulProblem): boolean {
  return p.transposeB;
}

/** How each operand and `out` are declared: vec4 arrays where every access is aligned. */
function storage(p: MatmulProblem): StorageDecl[] {
  const vec = (t: Tensor, inner: number) => vectorizable(t, inner) ? { element: `vec4<${t.dtype}>` } : {};
  const outVec = !stridedColumns(p) ? vec(p.out, p.n) : {};
  return [
    { name: "a", tensor: p.a, ...vec(p.a, p.transposeA ? p.m : p.k) },
    { name: "b", tensor: p.b, ...vec(p.b, p.transposeB ? p.k : p.n) },
    { name: "out", tensor: p.out, write: true, ...outVec },
  ];
}

/**
 * A product's pipeline label: kernel, form, dtypes, sizes and blocking.
 *
 * @param kernel The kernel's name, e.g. "matmul".
 * @param p The product.
 * @param tile The tiled kernel's blocking, or null.
 * @returns The label.
 */
export function productLabel(kernel: string, p: MatmulProblem, tile: MatmulTile | null): string {
  const form = `${p.transposeA ? "Aᵀ" : "A"}·${p.transposeB ? "Bᵀ" : "B"}${p.accumulate ? " +=" : ""}`;
  const blocking = tile ? blockingName(tile) : "";
  return `${kernel} ${form} ${p.a.dtype}·${p.b.dtype}->${p.out.dtype} ${p.batch}x${p.m}x${p.n}x${p.k}${blocking}`;
}

/**
 * A blocking as labels show it, with a leading space: " 64x64x16/8x8", then its options.
 *
 * @param tile The blocking.
 * @returns The name.
 */
export function blockingName(tile: MatmulTile): string {
  const options = [
    tile.f16Sums ? " f16 sums" : "",
    tile.prefetch ? " prefetch" : "",
    (tile.splitK ?? 1) > 1 ? ` split ${tile.splitK}` : "",
  ].join("");
  return ` ${tile.bm}x${tile.bn}x${tile.bk}/${tile.tm}x${tile.tn}${options}`;
}

/**
 * One operand's slab as it lies in memory: `tileRows` rows strided by `colExtent`
 * elements, `tileCols` contiguous columns. Workgroup memory holds it in the same
 * layout, as rows of vec4s.
 */
interface Slab {
  name: "a" | "b";
  shared: "As" | "Bs";
  rowExtent: number;
  tileRows: number;
  colExtent: number;
  tileCols: number;
  /** WGSL expressions of the slab's first row and column. */
  row0: string;
  col0: string;
  vector: boolean;
  /** vec4s of padding per row of workgroup memory. */
  pad: number;
}

function slabs(p: MatmulProblem, tile: MatmulTile): [Slab, Slab] {
  const [aDecl, bDecl] = storage(p);
  const { bm, bn, bk } = tile;
  // [extent, tile size, first-index expression] of the m, n and k dimensions.
  const dims = { m: [p.m, bm, "m0"], n: [p.n, bn, "n0"], k: [p.k, bk, "k0"] } as const;
  const slab = (
    name: "a" | "b",
    rows: keyof typeof dims,
    cols: keyof typeof dims,
    decl: StorageDecl,
  ): Slab => ({
    name,
    shared: name === "a" ? "As" : "Bs",
    rowExtent: dims[rows][0],
    tileRows: dims[rows][1],
    row0: dims[rows][2],
    colExtent: dims[cols][0],
    tileCols: dims[cols][1],
    col0: dims[cols][2],
    vector: decl.element !== undefined,
    pad: name === "b" && p.transposeB ? 1 : 0,
  });
  // a is stored [M, K] or, transposed, [K, M]; b is [K, N] or [N, K].
  return [
    p.transposeA ? slab("a", "k", "m", aDecl) : slab("a", "m", "k", aDecl),
    p.transposeB ? slab("b", "n", "k", bDecl) : slab("b", "k", "n", bDecl),
  ];
}

/**
 * WGSL that reads the vec4 of slab unit `v` from storage into `x` (a `var` of
 * vec4<w> holding zeros): neighbouring units are neighbouring vec4s, and reads
 * past the matrix edge leave the zeros. Bounds tests appear only for a dimension
 * that is not a multiple of its tile. `k` is the WGSL expression of the slab's
 * first depth.
 */
function readUnit(s: Slab, w: "f32" | "f16", k: string): string {
  const cols4 = s.tileCols / 4;
  const row0 = s.row0 === "k0" ? k : s.row0;
  const col0 = s.col0 === "k0" ? k : s.col0;
  const rowCheck = s.rowExtent % s.tileRows !== 0;
  const colCheck = s.colExtent % s.tileCols !== 0;
  let read: string;
  if (s.vector) {
    read = `x = vec4<${w}>(${s.name}[${s.name}Base / 4u + gr * ${s.colExtent / 4}u + gc / 4u]);`;
    const conditions = [rowCheck ? `gr < ${s.rowExtent}u` : "", colCheck ? `gc < ${s.colExtent}u` : ""];
    const condition = conditions.filter((c) => c !== "").join(" && ");
    if (condition) read = `if (${condition}) { ${read} }`;
  } else {
    const one = `x[j] = ${w}(${s.name}[i + j]);`;
    read = `let i = ${s.name}Base + gr * ${s.colExtent}u + gc;
        for (var j = 0u; j < 4u; j++) { ${colCheck ? `if (gc + j < ${s.colExtent}u) { ${one} }` : one} }`;
    if (rowCheck) read = `if (gr < ${s.rowExtent}u) {\n        ${read}\n      }`;
  }
  return `let gr = ${row0} + v / ${cols4}u;
      let gc = ${col0} + (v % ${cols4}u) * 4u;
      ${read}`;
}

/**
 * WGSL that copies one slab from storage into workgroup memory, each thread
 * moving whole vec4s. The copy stays a loop: its indexes depend on the thread
 * anyway, and unrolled copies of the guarded scalar loads mostly cost compile time.
 */
function loadSlab(s: Slab, threads: number, w: "f32" | "f16"): string {
  const cols4 = s.tileCols / 4;
  return `for (var v = tid; v < ${s.tileRows * cols4}u; v += ${threads}u) {
      var x = vec4<${w}>();
      ${readUnit(s, w, "k0")}
      ${s.shared}[v / ${cols4}u][v % ${cols4}u] = x;
    }`;
}

/** Vec4 units of a slab each thread moves with `prefetch`: one register apiece. */
function prefetchUnits(s: Slab, threads: number): number {
  return Math.ceil((s.tileRows * s.tileCols) / 4 / threads);
}

/**
 * With `prefetch`: WGSL that reads this thread's units of the slab at depth `k`
 * into registers `pf_{name}{u}`, to be stored by {@link storePrefetched} after
 * the slab before it has been used.
 */
function prefetchSlab(s: Slab, threads: number, w: "f32" | "f16", k: string): string {
  const units = s.tileRows * s.tileCols / 4;
  return Array.from({ length: prefetchUnits(s, threads) }, (_, u) => {
    const body = `var x = vec4<${w}>();
      ${readUnit(s, w, k)}
      pf_${s.name}${u} = x;`;
    const guarded = (u + 1) * threads > units ? `if (v < ${units}u) {\n      ${body}\n    }` : body;
    return `{
    let v = tid + ${u * threads}u;
    ${guarded}
  }`;
  }).join("\n  ");
}

/** WGSL that stores the registers {@link prefetchSlab} filled into workgroup memory. */
function storePrefetched(s: Slab, threads: number): string {
  const cols4 = s.tileCols / 4;
  const units = s.tileRows * cols4;
  return Array.from({ length: prefetchUnits(s, threads) }, (_, u) => {
    const v = `tid + ${u * threads}u`;
    const store = `${s.shared}[(${v}) / ${cols4}u][(${v}) % ${cols4}u] = pf_${s.name}${u};`;
    return (u + 1) * threads > units ? `if (${v} < ${units}u) { ${store} }` : store;
  }).join("\n    ");
}

/**
 * WGSL for one group of 4 k values (k0 + 4g .. k0 + 4g + 3): read this thread's
 * operand values from workgroup memory, then tm·tn FMAs into vec4 accumulators
 * `acc{c}_{r}_{d}` (row (c, r), columns 4d..4d+3 of the thread's block), or with
 * `f16Sums` into the slab's f16 sums `sum{c}_{r}_{d}`.
 */
function computeGroup(p: MatmulProblem, tile: MatmulTile): string[] {
  const w = slabType(tile);
  const into = tile.f16Sums ? "sum" : "acc";
  const tx = tile.bn / tile.tn;
  const ty = tile.bm / tile.tm;
  const tm4 = tile.tm / 4;
  const tn4 = tile.tn / 4;
  const lines: string[] = [];
  // a(c, r, kk): A at row (c, r) and depth 4g + kk.
  let a: (c: number, r: number, kk: number) => string;
  if (p.transposeA) {
    for (let kk = 0; kk < 4; kk++) {
      for (let c = 0; c < tm4; c++) lines.push(`let a${kk}_${c} = As[g * 4u + ${kk}u][${c * ty}u + ty];`);
    }
    a = (c, r, kk) => `a${kk}_${c}.${XYZW[r]}`;
  } else {
    for (let c = 0; c < tm4; c++) {
      for (let r = 0; r < 4; r++) lines.push(`let a${c}_${r} = As[row${c} + ${r}u][g];`);
    }
    a = (c, r, kk) => `a${c}_${r}.${XYZW[kk]}`;
  }
  // b{kk}_{d}: B at depth 4g + kk for the thread's column group d.
  if (p.transposeB) {
    for (let j = 0; j < tile.tn; j++) lines.push(`let bt${j} = Bs[col${j}][g];`);
    for (let kk = 0; kk < 4; kk++) {
      for (let d = 0; d < tn4; d++) {
        const parts = [0, 1, 2, 3].map((s) => `bt${4 * d + s}.${XYZW[kk]}`);
        lines.push(`let b${kk}_${d} = vec4<${w}>(${parts.join(", ")});`);
      }
    }
  } else {
    for (let kk = 0; kk < 4; kk++) {
      for (let d = 0; d < tn4; d++) lines.push(`let b${kk}_${d} = Bs[g * 4u + ${kk}u][${d * tx}u + tx];`);
    }
  }
  for (let kk = 0; kk < 4; kk++) {
    for (let c = 0; c < tm4; c++) {
      for (let r = 0; r < 4; r++) {
        for (let d = 0; d < tn4; d++) {
          const x = `${into}${c}_${r}_${d}`;
          lines.push(`${x} = fma(vec4<${w}>(${a(c, r, kk)}), b${kk}_${d}, ${x});`);
        }
      }
    }
  }
  return lines;
}

/** WGSL that writes (or adds) the accumulators to `out`, skipping rows and columns past its edge. */
function storeBlock(p: MatmulProblem, tile: MatmulTile, vector: boolean): string[] {
  const mCheck = p.m % tile.bm !== 0;
  const nCheck = p.n % tile.bn !== 0;
  const t = p.out.dtype;
  const lines: string[] = [];
  for (let c = 0; c < tile.tm / 4; c++) {
    for (let r = 0; r < 4; r++) {
      const row: string[] = [`let m = m0 + row${c} + ${r}u;`, `let o = outBase + m * ${p.n}u + n0;`];
      for (let d = 0; d < tile.tn / 4; d++) {
        const acc = `acc${c}_${r}_${d}`;
        if (vector) {
          const i = `(o + col${d}) / 4u`;
          const value = p.accumulate ? `${acc} + vec4<f32>(out[${i}])` : acc;
          const write = `out[${i}] = vec4<${t}>(${value});`;
          row.push(nCheck ? `if (n0 + col${d} < ${p.n}u) { ${write} }` : write);
          continue;
        }
        for (let s = 0; s < 4; s++) {
          const col = stridedColumns(p) ? `col${4 * d + s}` : `col${d} + ${s}u`;
          const value = p.accumulate ? `${acc}.${XYZW[s]} + f32(out[o + ${col}])` : `${acc}.${XYZW[s]}`;
          const write = `out[o + ${col}] = ${t}(${value});`;
          row.push(nCheck ? `if (n0 + ${col} < ${p.n}u) { ${write} }` : write);
        }
      }
      const open = mCheck ? `if (m0 + row${c} + ${r}u < ${p.m}u) {` : "{";
      lines.push(`${open}\n    ${row.join("\n    ")}\n  }`);
    }
  }
  return lines;
}

function tiledKernel(p: MatmulProblem, tile: MatmulTile, split: Split): string {
  const { bm, bn, bk, tm, tn } = tile;
  const tx = bn / tn;
  const ty = bm / tm;
  const tilesM = Math.ceil(p.m / bm);
  const tilesN = Math.ceil(p.n / bn);
  const [a, b] = slabs(p, tile);
  const outVector = storage(p)[2].element !== undefined;
  const rows = Array.from({ length: tm / 4 }, (_, c) => `let row${c} = (${c * ty}u + ty) * 4u;`);
  const cols = stridedColumns(p)
    ? Array.from({ length: tn }, (_, j) => `let col${j} = ${j * tx}u + tx;`)
    : Array.from({ length: tn / 4 }, (_, d) => `let col${d} = (${d * tx}u + tx) * 4u;`);
  const blocks: string[] = [];
  for (let c = 0; c < tm / 4; c++) {
    for (let r = 0; r < 4; r++) {
      for (let d = 0; d < tn / 4; d++) blocks.push(`${c}_${r}_${d}`);
    }
  }
  const accs = blocks.map((x) => `var acc${x} = vec4<f32>();`);
  // With f16Sums each slab's products are summed in f16, then added to the f32 accumulators.
  const w = slabType(tile);
  const sums = tile.f16Sums ? blocks.map((x) => `var sum${x} = vec4<f16>();`) : [];
  const addSums = tile.f16Sums ? blocks.map((x) => `acc${x} += vec4<f32>(sum${x});`) : [];
  const shared = (s: Slab) =>
    `var<workgroup> ${s.shared}: array<array<vec4<${w}>, ${s.tileCols / 4 + s.pad}>, ${s.tileRows}>;`;
  // With split-K, workgroup (split, batch, tile) takes depths kStart..kEnd and writes its own partial product.
  const splits = split.count > 1;
  const kFirst = splits ? "kStart" : "0u";
  const kLimit = splits ? "kEnd" : `${p.k}u`;
  const locate = splits
    ? `if (linear >= ${split.count * p.batch}u * TILES) { return; }
  let part = linear / (${p.batch}u * TILES);
  let kStart = part * ${split.depth}u;
  let kEnd = min(kStart + ${split.depth}u, ${p.k}u);
  let batch = (linear / TILES) % ${p.batch}u;`
    : `if (linear >= ${p.batch}u * TILES) { return; }
  let batch = linear / TILES;`;
  const outBase = splits ? `(part * ${p.batch}u + batch) * ${p.m * p.n}u` : `batch * ${p.m * p.n}u`;
  // With prefetch, the next slab's loads are issued before this slab's FMAs, into registers.
  const threads = tx * ty;
  const prologue = tile.prefetch
    ? [a, b].flatMap((s) =>
      Array.from({ length: prefetchUnits(s, threads) }, (_, u) => `var pf_${s.name}${u} = vec4<${w}>();`)
    )
      .concat([prefetchSlab(a, threads, w, kFirst), prefetchSlab(b, threads, w, kFirst)]).join("\n  ")
    : "";
  const fill = tile.prefetch
    ? `${storePrefetched(a, threads)}
    ${storePrefetched(b, threads)}
    workgroupBarrier();
    if (k0 + ${bk}u < ${kLimit}) {
  ${prefetchSlab(a, threads, w, `k0 + ${bk}u`)}
  ${prefetchSlab(b, threads, w, `k0 + ${bk}u`)}
    }`
    : `${loadSlab(a, threads, w)}
    ${loadSlab(b, threads, w)}
    workgroupBarrier();`;
  // Tiles are visited GROUP_ROWS tile rows at a time, column by column, so workgroups
  // that run together share slabs of both operands in cache.
  const groupRows = Math.min(8, tilesM);
  return `
const TILES = ${tilesM * tilesN}u;
const GROUP = ${groupRows * tilesN}u;
${shared(a)}
${shared(b)}

@compute @workgroup_size(${tx}, ${ty})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let linear = ${WGSL_LINEAR_WORKGROUP};
  ${locate}
  let tile = linear % TILES;
  let first = (tile / GROUP) * ${groupRows}u;
  let rows = min(${tilesM}u - first, ${groupRows}u);
  let m0 = (first + (tile % GROUP) % rows) * ${bm}u;
  let n0 = ((tile % GROUP) / rows) * ${bn}u;
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * ${tx}u + tx;
  let aBase = batch * ${p.aStride}u;
  let bBase = batch * ${p.bStride}u;
  let outBase = ${outBase};
  ${rows.join("\n  ")}
  ${cols.join("\n  ")}
  ${accs.join("\n  ")}
  ${prologue}
  for (var k0 = ${kFirst}; k0 < ${kLimit}; k0 += ${bk}u) {
    ${fill}${sums.length ? `\n    ${sums.join("\n    ")}` : ""}
    for (var g = 0u; g < ${bk / 4}u; g++) {
      ${computeGroup(p, tile).join("\n      ")}
    }${addSums.length ? `\n    ${addSums.join("\n    ")}` : ""}
    workgroupBarrier();
  }
  ${storeBlock(p, tile, outVector).join("\n  ")}
}
`;
}
