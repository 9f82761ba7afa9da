import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/errors.ts";
import {
  chooseMatmulTile,
  matmul,
  MATMUL_TILES,
  matmulKernel,
  matmulNaive,
  type MatmulTile,
} from "../kernels/matmul.ts";
import type { TexelTile } from "../kernels/matmul_texel.ts";
import type { DType, Tensor } from "../kernels/tensor.ts";
import { assertClose, finiteDifferences, randomArray, testGpu, type Tolerance } from "./harness.ts";
import { matmulBackwardRef, type MatmulDims, matmulRef } from "./reference/matmul.ts";
import { SWEEP_TILES } from "../scripts/bench/matmul_tiles.ts";

// [M, N, K]: degenerate, odd (scalar loads, every bounds test) and larger than a tile
// in every dimension. Multiples of 4 that are not tile multiples (vec4 loads and
// stores) come in the f16, accumulate, batched and blocking tests.
const SHAPES: [number, number, number][] = [[1, 1, 1], [7, 13, 5], [33, 65, 17], [130, 67, 129]];
const FORMS = [[false, false], [true, false], [false, true], [true, true]] as const;

// f32: inputs are exact f32 values in [-1, 1), so the only error is the f32 rounding
// of sums of up to 129 products (about √K·2^-24·Σ|a·b| ≈ 1e-6 here); the error does
// not shrink with |ref| where terms cancel, hence the absolute part.
const F32: Tolerance = { atol: 1e-5, rtol: 1e-5 };
// f16 out: one f16 rounding of the f32 sum (2^-11 ≈ 4.9e-4 relative) on top of F32.
const F16_OUT: Tolerance = { atol: 1e-3, rtol: 1e-3 };
// f16Sums: each slab's products summed in f16, about √bk·2^-11·|partial sum| a slab (0.012 measured at
// K 129, 16 deep); a slab or group of depths lost would be off by ~1.
const F16_SUMS: Tolerance = { atol: 5e-2, rtol: 0 };

interface Case extends MatmulDims {
  dtypes?: [DType, DType, DType];
  accumulate?: boolean;
  tile?: MatmulTile;
  texel?: boolean | TexelTile;
  naive?: boolean;
  seed?: number;
}

const round = (dtype: DType) => (v: number) => dtype === "f16" ? Math.f16round(v) : Math.fround(v);

function formName(c: MatmulDims): string {
  return `${c.transposeA ? "Aᵀ" : "A"}·${c.transposeB ? "Bᵀ" : "B"}`;
}

function describe(c: Case): string {
  const texel = typeof c.texel === "object" ? `texel ${c.texel.rows}x${c.texel.quads} ` : "texel ";
  const kernel = c.naive ? "naive " : c.texel ? texel : "";
  const size = `${c.batch ? `${c.batch}x` : ""}${c.m}x${c.n}x${c.k}`;
  const dtypes = (c.dtypes ?? ["f32", "f32", "f32"]).join("·");
  return `${kernel}${formName(c)}${c.accumulate ? " +=" : ""} ${size} ${dtypes}`;
}

/** Runs one product on the GPU and returns it with the float64 reference. */
async function runCase(gpu: Gpu, c: Case): Promise<{ got: Float32Array; want: Float64Array }> {
  const { m, n, k } = c;
  const [da, db, dout] = c.dtypes ?? ["f32", "f32", "f32"];
  const batched = c.batch !== undefined;
  const batch = c.batch ?? 1;
  const aBatched = batched && (c.aBatched ?? true);
  const bBatched = batched && (c.bBatched ?? true);
  const seed = c.seed ?? 1;
  const a = randomArray((aBatched ? batch : 1) * m * k, seed).map(round(da));
  const b = randomArray((bBatched ? batch : 1) * k * n, seed + 1).map(round(db));
  const init = randomArray(batch * m * n, seed + 2).map(round(dout));
  const lead = (on: boolean) => (on ? [batch] : []);
  const ta = gpu.tensor([...lead(aBatched), ...(c.transposeA ? [k, m] : [m, k])], da, {
    label: "a",
    data: a,
  });
  const tb = gpu.tensor([...lead(bBatched), ...(c.transposeB ? [n, k] : [k, n])], db, {
    label: "b",
    data: b,
  });
  const out = gpu.tensor([...lead(batched), m, n], dout, { label: "out", data: init });
  const rec = gpu.recorder();
  const args = {
    out,
    a: ta,
    b: tb,
    transposeA: c.transposeA,
    transposeB: c.transposeB,
    accumulate: c.accumulate,
    tile: c.tile,
    texel: c.texel,
  };
  if (c.naive) matmulNaive(rec, args);
  else matmul(rec, args);
  rec.submit();
  const got = await gpu.readFloats(out);
  for (const t of [ta, tb, out]) gpu.release(t);
  const want = matmulRef(a, b, { ...c, batch, aBatched, bBatched });
  if (c.accumulate) want.forEach((v, i) => want[i] = v + init[i]);
  return { got, want };
}

async function check(gpu: Gpu, c: Case, tolerance: Tolerance): Promise<void> {
  const { got, want } = await runCase(gpu, c);
  assertClose(got, want, tolerance, describe(c)); // |got - want| <= atol + rtol·|want|
}

Deno.test("matmul and the naive kernel match the reference in every form at every test shape", async () => {
  const gpu = await testGpu();
  for (const [m, n, k] of SHAPES) {
    for (const [transposeA, transposeB] of FORMS) {
      const c = { m, n, k, transposeA, transposeB };
      const tiled = await runCase(gpu, c);
      const naive = await runCase(gpu, { ...c, naive: true });
      assertClose(tiled.got, tiled.want, F32, describe(c)); // |got - want| <= atol + rtol·|want|
      // Both chain fma over k in the same order, so any blocking gives the same bits.
      assertClose(tiled.got, naive.got, { atol: 0, rtol: 0 }, `${describe(c)} vs naive`);
    }
  }
});

Deno.test("the large and cpu blockings match the reference in every form, with and without edge tiles", async () => {
  const gpu = await testGpu();
  const { large, cpu } = MATMUL_TILES;
  // Larger than the tile in every dimension and odd (scalar loads, partial tiles), in
  // every form; then whole tiles with vec4 loads only, where no bounds test is emitted.
  // The cpu blocking (16x16 per thread: slow to compile with edges) in two forms only.
  const cases: [MatmulTile, number[], (readonly [boolean, boolean])[]][] = [
    [large, [130, 67, 129], [...FORMS]],
    [large, [128, 64, 48], [FORMS[0], FORMS[3]]],
    [cpu, [131, 133, 9], [FORMS[2]]],
    [cpu, [128, 256, 16], [FORMS[1]]],
  ];
  for (const [tile, [m, n, k], forms] of cases) {
    for (const [transposeA, transposeB] of forms) {
      await check(gpu, { m, n, k, transposeA, transposeB, tile }, F32);
    }
  }
  assert.equal(chooseMatmulTile(gpu, { m: 33, n: 65, k: 17 }), MATMUL_TILES.small);
  assert.equal(chooseMatmulTile(gpu, { m: 1024, n: 1024, k: 1024 }), gpu.info.fallback ? cpu : large);
});

Deno.test("the blockings the bench sweeps on GPUs match the reference, with edge tiles", async () => {
  const gpu = await testGpu();
  // A·B as the sweep times it, larger than every tile and odd in every dimension; then A·Bᵀ.
  const known = Object.values(MATMUL_TILES);
  for (const tile of Object.values(SWEEP_TILES).filter((t) => !known.includes(t))) {
    if (tile.f16Sums && !gpu.features.f16) continue;
    const dtypes: [DType, DType, DType] = tile.f16Sums ? ["f16", "f16", "f32"] : ["f32", "f32", "f32"];
    const tolerance = tile.f16Sums ? F16_SUMS : F32;
    await check(
      gpu,
      { m: 131, n: 133, k: 21, transposeA: false, transposeB: false, tile, dtypes },
      tolerance,
    );
    await check(gpu, { m: 129, n: 130, k: 20, transposeA: false, transposeB: true, tile, dtypes }, tolerance);
  }
});

Deno.test("the texel kernel matches the naive kernel bit for bit in every form and tile, with edge rows and columns", async () => {
  const gpu = await testGpu();
  // K and contiguous dimensions are multiples of 4 (a texel); M is not a multiple of a
  // tile's rows and N/4 not of its lanes' quads; bᵀ also takes an N that is not a
  // multiple of 4. 48x192x36 is a whole number of 16x64 and 12x96 tiles, not of 16x128; M below 8
  // (a decoding step) takes fewer rows per workgroup.
  // K, M (for aᵀ) and N (for b) that are not multiples of 4 take zero-padded staging.
  const shapes: Record<string, [number, number, number][]> = {
    "false,false": [[13, 36, 20], [40, 72, 36], [48, 192, 36], [1, 4, 4], [3, 36, 8], [13, 37, 21]],
    "true,false": [[12, 36, 20], [40, 72, 36], [4, 12, 8], [13, 38, 21], [3, 12, 5]],
    "false,true": [[13, 37, 20], [40, 72, 36], [9, 1, 8], [1, 37, 20], [13, 37, 21]],
    "true,true": [[20, 7, 12], [48, 192, 36], [21, 7, 13]],
  };
  const tiles: (true | TexelTile)[] = [
    true,
    { rows: 8, quads: 1 },
    { rows: 16, quads: 2 },
    { rows: 16, quads: 4 },
    { rows: 12, quads: 3 },
  ];
  for (const [transposeA, transposeB] of FORMS) {
    for (const [m, n, k] of shapes[`${transposeA},${transposeB}`]) {
      const naive = await runCase(gpu, { m, n, k, transposeA, transposeB, naive: true });
      for (const texel of tiles) {
        const c = { m, n, k, transposeA, transposeB, texel };
        const got = await runCase(gpu, c);
        assertClose(got.got, got.want, F32, describe(c)); // |got - want| <= atol + rtol·|want|
        // Both chain fma over k in order, so they agree to the bit.
        assertClose(got.got, naive.got, { atol: 0, rtol: 0 }, `${describe(c)} vs naive`);
      }
    }
  }
});

Deno.test("the texel kernel accumulates, reads f16, batches and shares operands", async () => {
  const gpu = await testGpu();
  const texel = true;
  await check(gpu, { m: 13, n: 36, k: 20, accumulate: true, texel }, F32);
  await check(gpu, { m: 20, n: 37, k: 12, transposeA: true, transposeB: true, accumulate: true, texel }, F32);
  for (const [transposeA, transposeB] of FORMS) {
    await check(
      gpu,
      { m: 36, n: 68, k: 20, transposeA, transposeB, dtypes: ["f16", "f16", "f16"], texel },
      F16_OUT,
    );
    await check(gpu, { batch: 3, m: 12, n: 20, k: 8, transposeA, transposeB, texel }, F32);
  }
  await check(gpu, { m: 13, n: 36, k: 20, dtypes: ["f32", "f16", "f32"], texel }, F32);
  // Zero-padded staging (K, M and N not multiples of 4) from f16 and into +=.
  await check(gpu, { m: 13, n: 37, k: 21, transposeA: true, dtypes: ["f16", "f16", "f16"], texel }, F16_OUT);
  await check(gpu, { m: 13, n: 37, k: 21, accumulate: true, texel }, F32);
  await check(gpu, { batch: 3, m: 13, n: 24, k: 20, transposeB: true, bBatched: false, texel }, F32); // x·Wᵀ
  await check(gpu, { batch: 2, m: 8, n: 12, k: 4, aBatched: false, accumulate: true, texel }, F32);
});

Deno.test("software adapters take the texel kernel when the shapes allow it, and texel: true says when not", async () => {
  const gpu = await testGpu();
  const a = gpu.tensor([64, 32], "f32", { label: "a" });
  const b = gpu.tensor([48, 32], "f32", { label: "b" });
  const out = gpu.tensor([64, 48], "f32", { label: "out" });
  const odd = gpu.tensor([2, 64, 30], "f32", { label: "odd" });
  const odd2 = gpu.tensor([2, 48, 30], "f32", { label: "odd2" });
  const oddOut = gpu.tensor([2, 64, 48], "f32", { label: "oddOut" });
  const row = gpu.tensor([1, 48], "f32", { label: "row" });
  const expected = gpu.info.fallback ? /^texel / : /^tiled /;
  assert.match(matmulKernel(gpu, { out, a, b, transposeB: true }), expected);
  // 64 rows take 16-row tiles; 48 columns pad to 64 either way, so two quads a lane.
  assert.match(matmulKernel(gpu, { out, a, b, transposeB: true, texel: true }), /^texel 16x64$/);
  assert.match(
    matmulKernel(gpu, { out, a, b, transposeB: true, texel: { rows: 8, quads: 3 } }),
    /^texel 8x96$/,
  );
  // 20 rows pad to 24 in 8-row tiles and to 32 in 16-row ones; 68 columns (17 quads)
  // to 96 or 128 columns.
  const narrow = gpu.tensor([20, 68], "f32", { label: "narrow" });
  const wide = gpu.tensor([68, 32], "f32", { label: "wide" });
  assert.match(
    matmulKernel(gpu, { out: narrow, a: a.view(0, [20, 32]), b: wide, transposeB: true, texel: true }),
    /^texel 8x32$/,
  );
  // One row per sequence, as in a decoding step: one row per workgroup, no idle rows.
  assert.match(
    matmulKernel(gpu, { out: row, a: a.view(0, [1, 32]), b, transposeB: true, texel: true }),
    /^texel 1x32$/,
  );
  assert.match(matmulKernel(gpu, { out, a, b, transposeB: true, tile: MATMUL_TILES.small }), /^tiled 32x32/);
  // An odd K pads on the way into the texture, but not for a batch.
  const oddA = odd.view(0, [64, 30]);
  const oddB = odd2.view(0, [48, 30]);
  assert.match(matmulKernel(gpu, { out, a: oddA, b: oddB, transposeB: true }), expected);
  assert.match(matmulKernel(gpu, { out: oddOut, a: odd, b: odd2, transposeB: true }), /^tiled /);
  assert.throws(
    () => matmulKernel(gpu, { out: oddOut, a: odd, b: odd2, transposeB: true, texel: true }),
    (e: unknown) =>
      e instanceof GpuError &&
      /no batch when K or a row .* is not a multiple of 4; got batch=2 M=64 N=48 K=30; leave texel unset$/
        .test(e.message),
  );
  assert.throws(
    () => matmul(gpu.recorder(), { out, a, b, transposeB: true, texel: { rows: 0, quads: 2 } }),
    /^GpuError: matmul: a texel tile needs whole rows and quads from 1 to 64; got rows=0 quads=2$/,
  );
  const aT = gpu.tensor([32, 64], "f32", { label: "aᵀ" });
  assert.throws(
    () =>
      matmul(gpu.recorder(), {
        out,
        a: aT,
        b,
        transposeA: true,
        transposeB: true,
        texel: { rows: 6, quads: 1 },
      }),
    /rows a multiple of 4 for aᵀ; got rows=6 quads=1$/,
  );
  for (const t of [a, b, out, odd, odd2, oddOut, row, narrow, wide, aT]) gpu.release(t);
});

Deno.test("prefetching the next slab into registers gives the same bits in every form, at edges, in f16 and batched", async () => {
  const gpu = await testGpu();
  // The same FMAs in the same order as without prefetch: equal bit for bit. Odd sizes (scalar loads, partial
  // tiles, a thread with no unit in the last register) and whole tiles (vec4 loads); a shared b; f16 sums.
  const f16: [DType, DType, DType] = ["f16", "f16", "f32"];
  const cases: [MatmulTile, Case][] = [
    ...FORMS.map(([transposeA, transposeB]): [MatmulTile, Case] => [
      MATMUL_TILES.large,
      { m: 130, n: 67, k: 129, transposeA, transposeB },
    ]),
    [MATMUL_TILES.small, { m: 64, n: 96, k: 48, transposeB: true, accumulate: true }],
    [{ bm: 32, bn: 64, bk: 4, tm: 4, tn: 8 }, { m: 70, n: 64, k: 30, batch: 2, bBatched: false }],
    [{ bm: 32, bn: 64, bk: 4, tm: 4, tn: 8 }, { m: 33, n: 65, k: 17, transposeA: true }],
    ...(gpu.features.f16
      ? [
        [{ ...MATMUL_TILES.large, f16Sums: true }, { m: 65, n: 66, k: 40, dtypes: f16 }] as [
          MatmulTile,
          Case,
        ],
      ]
      : []),
  ];
  for (const [tile, c] of cases) {
    const plain = await runCase(gpu, { ...c, tile });
    const prefetched = await runCase(gpu, { ...c, tile: { ...tile, prefetch: true } });
    const differ = prefetched.got.findIndex((v, i) => !Object.is(v, plain.got[i]));
    assert.equal(differ, -1, `${describe(c)} ${JSON.stringify(tile)}: element ${differ}`);
    assertClose(plain.got, plain.want, tile.f16Sums ? F16_SUMS : F32, describe(c));
  }
});

Deno.test("split-K adds its ranges' partial products to the reference, in every form, into += and f16 outputs", async () => {
  const gpu = await testGpu();
  const { large, small } = MATMUL_TILES;
  // K 129 in 3 ranges of 48 (the last 33, past the 16-deep slabs' edge); 5 asked of K 20 gives 2 of 16; shared b.
  const cases: [MatmulTile, Case, Tolerance][] = [
    ...FORMS.map(([transposeA, transposeB]): [MatmulTile, Case, Tolerance] => [
      { ...large, splitK: 3 },
      { m: 130, n: 67, k: 129, transposeA, transposeB },
      F32,
    ]),
    [
      { ...small, splitK: 5 },
      { m: 36, n: 68, k: 20, accumulate: true, dtypes: ["f32", "f32", "f16"] },
      F16_OUT,
    ],
    [{ ...large, splitK: 2, prefetch: true }, {
      m: 70,
      n: 64,
      k: 64,
      batch: 3,
      bBatched: false,
      accumulate: true,
    }, F32],
  ];
  for (const [tile, c, tolerance] of cases) await check(gpu, { ...c, tile }, tolerance);
  const [x, out] = [gpu.tensor([4, 4]), gpu.tensor([4, 4])];
  assert.throws(
    () => matmul(gpu.recorder(), { out, a: x, b: x, tile: { ...large, splitK: 1.5 } }),
    /splitK a whole number/,
  );
  // 4 ranges of a 4096² product: 256 MiB of partials, past the 128 MiB binding an adapter may stop at.
  const big = { m: 4096, n: 4096, k: 64 };
  if (4 * big.m * big.n * 4 > gpu.limits.maxStorageBufferBindingSize) {
    const [a, b] = [gpu.tensor([big.m, big.k]), gpu.tensor([big.k, big.n])];
    const o = gpu.tensor([big.m, big.n]);
    assert.throws(
      () => matmul(gpu.recorder(), { out: o, a, b, tile: { ...large, splitK: 4 } }),
      /split-K's 4 partial products take 268435456 bytes, past the adapter's \d+ a binding may hold; use a smaller splitK$/,
    );
    for (const t of [a, b, o]) gpu.release(t);
  }
  for (const t of [x, out]) gpu.release(t);
});

Deno.test("f16 sums in the tiled kernel stay within f16 summation error of the reference, in every form", async () => {
  const gpu = await testGpu();
  if (!gpu.features.f16) return;
  const tile: MatmulTile = { ...MATMUL_TILES.large, f16Sums: true };
  const f16 = ["f16", "f16", "f16"] as [DType, DType, DType];
  for (const [transposeA, transposeB] of FORMS) {
    await check(gpu, { m: 130, n: 67, k: 129, transposeA, transposeB, tile, dtypes: f16 }, F16_SUMS);
  }
  await check(gpu, { m: 64, n: 128, k: 48, tile, dtypes: ["f16", "f16", "f32"], accumulate: true }, F16_SUMS);
  const a = gpu.tensor([4, 4], "f32");
  const b = gpu.tensor([4, 4], "f16");
  const out = gpu.tensor([4, 4], "f32");
  assert.throws(
    () => matmul(gpu.recorder(), { out, a, b, tile }),
    /^GpuError: matmul: f16Sums multiplies in f16 and needs f16 a and b, got f32 and f16; leave it unset$/,
  );
  for (const t of [a, b, out]) gpu.release(t);
});

Deno.test("matmul accumulates into out (+=) with f32 and f16 outputs", async () => {
  const gpu = await testGpu();
  await check(gpu, { m: 36, n: 68, k: 20, accumulate: true }, F32);
  await check(gpu, { m: 33, n: 65, k: 17, transposeA: true, accumulate: true }, F32); // dW += dyᵀ·x
  const f16 = ["f16", "f16", "f16"] as [DType, DType, DType];
  await check(gpu, { m: 36, n: 68, k: 20, transposeB: true, accumulate: true, dtypes: f16 }, F16_OUT);
});

Deno.test("matmul reads f16 operands (vec4 and scalar loads) with f32 accumulation", async () => {
  const gpu = await testGpu();
  for (const [transposeA, transposeB] of FORMS) {
    await check(gpu, { m: 36, n: 68, k: 20, transposeA, transposeB, dtypes: ["f16", "f16", "f16"] }, F16_OUT);
  }
  // f16 inputs are exact in f32, so an f32 output carries only f32 rounding.
  await check(gpu, { m: 33, n: 65, k: 17, dtypes: ["f16", "f16", "f32"] }, F32);
  await check(gpu, { m: 33, n: 65, k: 17, transposeB: true, dtypes: ["f32", "f16", "f32"] }, F32);
  await check(gpu, { m: 7, n: 13, k: 5, transposeA: true, dtypes: ["f16", "f32", "f16"] }, F16_OUT);
});

Deno.test("batched matmul matches the reference, with per-batch and shared operands", async () => {
  const gpu = await testGpu();
  for (const [transposeA, transposeB] of FORMS) {
    await check(gpu, { batch: 3, m: 33, n: 65, k: 17, transposeA, transposeB }, F32);
  }
  await check(gpu, { batch: 3, m: 36, n: 68, k: 20, transposeB: true, bBatched: false }, F32); // x·Wᵀ
  await check(gpu, { batch: 2, m: 7, n: 13, k: 5, aBatched: false, naive: true }, F32);
  await check(gpu, { batch: 2, m: 7, n: 13, k: 5, aBatched: false }, F32);
  // More workgroups than one grid dimension holds: a 2-D grid with one spare workgroup.
  const tile = { bm: 4, bn: 4, bk: 4, tm: 4, tn: 4 }; // one thread per workgroup keeps 70001 of them cheap
  await check(gpu, { batch: 70_001, m: 1, n: 1, k: 3, bBatched: false, tile }, F32);
});

Deno.test("matmul works on views of one flat buffer, including out beside an input", async () => {
  const gpu = await testGpu();
  const [m, n, k] = [12, 8, 16];
  // Each view starts at a multiple of the device's storage offset alignment, as bindings must.
  const align = gpu.limits.minStorageBufferOffsetAlignment / 4;
  const pad = (x: number) => Math.ceil(x / align) * align;
  const flat = gpu.tensor([pad(m * k) + pad(k * n) + m * n], "f32", { label: "flat" });
  const a = flat.view(0, [m, k], "a");
  const b = flat.view(pad(m * k), [k, n], "b");
  const out = flat.view(pad(m * k) + pad(k * n), [m, n], "out");
  const av = randomArray(m * k, 7).map(Math.fround);
  const bv = randomArray(k * n, 8).map(Math.fround);
  gpu.write(a, av);
  gpu.write(b, bv);
  const rec = gpu.recorder();
  matmul(rec, { out, a, b });
  rec.submit();
  assertClose(await gpu.readFloats(out), matmulRef(av, bv, { m, n, k }), F32, "views"); // atol + rtol·|ref|
  gpu.release(flat);
});

/** L(a, b) = Σ w ⊙ (a·b) in float64, the scalar whose gradient the backward identities give. */
function loss(a: Float64Array, b: Float64Array, w: Float64Array, dims: MatmulDims): number {
  return matmulRef(a, b, dims).reduce((s, v, i) => s + v * w[i], 0);
}

async function product(
  gpu: Gpu,
  out: Tensor,
  args: { a: Tensor; b: Tensor; transposeA?: boolean; transposeB?: boolean; accumulate?: boolean },
): Promise<Float32Array> {
  const rec = gpu.recorder();
  matmul(rec, { out, ...args });
  rec.submit();
  return await gpu.readFloats(out);
}

Deno.test("matmul backward identities match the analytic gradient and finite differences", async () => {
  const gpu = await testGpu();
  // C = A·B with A [M, K], B [K, N]; L = Σ dC ⊙ C gives dA = dC·Bᵀ and dB = Aᵀ·dC.
  const dims = { m: 5, n: 6, k: 7 };
  const { m, n, k } = dims;
  const a = randomArray(m * k, 11).map(Math.fround);
  const b = randomArray(k * n, 12).map(Math.fround);
  const dc = randomArray(m * n, 13).map(Math.fround);
  const ta = gpu.tensor([m, k], "f32", { data: a });
  const tb = gpu.tensor([k, n], "f32", { data: b });
  const tdc = gpu.tensor([m, n], "f32", { data: dc });
  const da = await product(gpu, gpu.tensor([m, k]), { a: tdc, b: tb, transposeB: true });
  const db = await product(gpu, gpu.tensor([k, n]), { a: ta, b: tdc, transposeA: true });
  const want = matmulBackwardRef(dc, a, b, dims);
  assertClose(da, want.da, F32, "dA = dC·Bᵀ vs analytic"); // atol + rtol·|ref|
  assertClose(db, want.db, F32, "dB = Aᵀ·dC vs analytic");
  // Central differences of the float64 forward: truncation error is 0 for a bilinear
  // loss, so only cancellation in (L(x+h) - L(x-h)) / 2h remains, ~1e-16·|L|/h.
  const h = 1e-3;
  const fdA = finiteDifferences((x) => loss(x, b, dc, dims), a, h);
  const fdB = finiteDifferences((x) => loss(a, x, dc, dims), b, h);
  const FD = { atol: 1e-5, rtol: 1e-5 };
  assertClose(da, fdA, FD, "dA vs finite differences"); // atol + rtol·|fd|
  assertClose(db, fdB, FD, "dB vs finite differences");
});

Deno.test("linear layer backward: dx = dy·W and dW += dyᵀ·x match the reference", async () => {
  const gpu = await testGpu();
  // y = x·Wᵀ with x [N, C], W [OUT, C] (Hugging Face layout): the model's forward.
  const [rows, c, outF] = [9, 13, 6];
  const dims = { m: rows, n: outF, k: c, transposeB: true };
  const x = randomArray(rows * c, 21).map(Math.fround);
  const w = randomArray(outF * c, 22).map(Math.fround);
  const dy = randomArray(rows * outF, 23).map(Math.fround);
  const dwInit = randomArray(outF * c, 24).map(Math.fround);
  const tx = gpu.tensor([rows, c], "f32", { data: x });
  const tw = gpu.tensor([outF, c], "f32", { data: w });
  const tdy = gpu.tensor([rows, outF], "f32", { data: dy });
  const dx = await product(gpu, gpu.tensor([rows, c]), { a: tdy, b: tw });
  const dw = await product(gpu, gpu.tensor([outF, c], "f32", { data: dwInit }), {
    a: tdy,
    b: tx,
    transposeA: true,
    accumulate: true,
  });
  const want = matmulBackwardRef(dy, x, w, dims);
  assertClose(dx, want.da, F32, "dx"); // atol + rtol·|ref|
  assertClose(dw, want.db.map((v, i) => v + dwInit[i]), F32, "dW += dyᵀ·x");
  const h = 1e-3;
  const FD = { atol: 1e-5, rtol: 1e-5 };
  assertClose(dx, finiteDifferences((v) => loss(v, w, dy, dims), x, h), FD, "dx vs finite differences");
  const fdW = finiteDifferences((v) => loss(x, v, dy, dims), w, h);
  assertClose(dw, fdW.map((v, i) => v + dwInit[i]), FD, "dW vs finite differences");
});

Deno.test("matmul refuses a K whose loops would pass the adapter's loop limit, naming K", async () => {
  const gpu = await testGpu();
  const [a, b, out] = [gpu.tensor([4, 64]), gpu.tensor([64, 4]), gpu.tensor([4, 4])];
  const measured = gpu.loopLimit;
  try {
    gpu.loopLimit = 8; // fewer than 64 depths take on any kernel
    for (const tile of [undefined, { bm: 32, bn: 32, bk: 4, tm: 4, tn: 4 }]) {
      assert.throws(
        () => matmul(gpu.recorder(), { out, a, b, tile }),
        /^GpuError: matmul: one invocation would make \d+ loop trips, past the 8 .*; split the product along K \(64\)$/,
      );
    }
  } finally {
    gpu.loopLimit = measured;
    for (const t of [a, b, out]) gpu.release(t);
  }
});

Deno.test("matmul refuses bad shapes, dtypes and overlapping outputs with the argument named", async () => {
  const gpu = await testGpu();
  const made: Tensor[] = [];
  const t = (shape: number[], label: string, dtype: DType = "f32") => {
    made.push(gpu.tensor(shape, dtype, { label }));
    return made[made.length - 1];
  };
  const [x, w, w3, y] = [t([4, 3], "x"), t([5, 2], "w"), t([3, 2], "w3"), t([4, 2], "y")];
  const flat = t([20], "flat");
  const rec = gpu.recorder();
  const refuses = (call: () => void, message: RegExp) =>
    assert.throws(call, (e: unknown) => e instanceof GpuError && message.test(e.message));
  refuses(() => matmul(rec, { out: y, a: x, b: w }), /^matmul: b "w" has shape \[5, 2\], expected \[3, 2\]$/);
  refuses(
    () => matmul(rec, { out: y, a: x, b: w, transposeB: true }),
    /^matmul: b "w" has shape \[5, 2\], expected \[5, 3\]$/,
  );
  refuses(
    () => matmul(rec, { out: y, a: x, b: t([3, 2], "idx", "u32") }),
    /^matmul: b "idx" is u32, expected f32 or f16$/,
  );
  refuses(
    () => matmul(rec, { out: t([4, 3], "y43"), a: x, b: w3 }),
    /^matmul: out "y43" has shape \[4, 3\], expected \[4, 2\]$/,
  );
  refuses(
    () => matmul(rec, { out: t([2, 4, 2], "yb"), a: t([3, 4, 3], "xb"), b: w3 }),
    /^matmul: a "xb" has shape \[3, 4, 3\], expected \[2, 4, 3\]$/,
  );
  refuses(
    () => matmulNaive(rec, { out: y, a: t([2, 4, 3], "xb2"), b: w3 }),
    /^matmulNaive: out "y" has shape \[4, 2\] but a is batched; give out a leading batch dimension$/,
  );
  refuses(
    () => matmul(rec, { out: y, a: t([3], "v"), b: w3 }),
    /^matmul: a "v" has shape \[3\], expected 2 dim/,
  );
  refuses(
    () => matmul(rec, { out: flat.view(0, [4, 2], "o"), a: flat.view(4, [4, 3], "i"), b: w3 }),
    /^matmul: out "o" overlaps a "i"; write to another buffer$/,
  );
  refuses(
    () => matmul(rec, { out: y, a: x, b: w3, tile: { bm: 64, bn: 64, bk: 16, tm: 6, tn: 8 } }),
    /^matmul: tile .* is not usable/,
  );
  rec.finish();
  for (const tensor of made) gpu.release(tensor);
});
