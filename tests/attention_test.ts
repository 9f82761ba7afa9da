import assert from "node:assert/strict";
import {
  ATTENTION_PLANS,
  attentionBackward,
  attentionForward,
  type AttentionPlan,
} from "../kernels/attention.ts";
import type { Gpu } from "../kernels/device.ts";
import type { DType, Tensor } from "../kernels/tensor.ts";
import { SWEEP_PLANS } from "../scripts/bench/attention_plans.ts";
import { assertClose, finiteDifferences, randomArray, testGpu } from "./harness.ts";
import { attentionBackwardRef, attentionRef, type QkvSizes } from "./reference/attention.ts";

// Head configurations, each run at several sequence lengths (the pipelines do
// not depend on B or T, so a configuration compiles once). Workgroups own 64
// rows; shared-memory tiles hold 64 (HS <= 32), 28 (HS 64) or 12 (HS 128) rows:
// T covers 1, below / past one chunk, tile and block (7, 33, 65, 130), and T >
// 1024; GQA with 2 and 4 query heads per kv head; HS 16, 32, 64 and 128.
interface Config {
  B: number;
  NH: number;
  NKV: number;
  HS: number;
  amp: number;
  Ts: number[];
}
const CONFIGS: Config[] = [
  { B: 2, NH: 4, NKV: 2, HS: 16, amp: 2, Ts: [1, 7, 65] },
  { B: 1, NH: 4, NKV: 1, HS: 32, amp: 2, Ts: [33, 1100] },
  { B: 2, NH: 2, NKV: 2, HS: 64, amp: 1.5, Ts: [65] },
  { B: 1, NH: 2, NKV: 1, HS: 128, amp: 1, Ts: [130] },
];
// Plans besides the adapter's default (on lavapipe: 8 rows per thread, 4 at HS
// 128, rows from staged textures, 2 keys per step): the GPU plan (one row per
// thread, tiles in workgroup memory, 4 keys per step), mixed ones (16-row blocks
// with tiles and 2 keys per step; direct loads with 4 keys per step) and texel
// ones with other row counts and steps (24-row blocks, 1 key per step; 16-row
// blocks, 4 keys per step), on the configurations with small heads.
const PLANS: AttentionPlan[] = [
  ATTENTION_PLANS.gpu,
  { rows: 2, threads: 8, chunk: 2, shared: true },
  { rows: 2, threads: 16, chunk: 4, shared: false },
  { rows: 3, threads: 8, chunk: 1, shared: false, textures: true },
  { rows: 4, threads: 4, chunk: 4, shared: false, textures: true },
];
// out is a convex combination of v (|v| <= amp, tolerances scale with it): f32
// roundings of scores, exponentials and sums, ~1e-6 measured. lse is the log of
// a sum of <= T terms.
const OUT_F32 = { atol: 5e-6, rtol: 5e-6 };
const LSE_F32 = { atol: 5e-6, rtol: 5e-6 };
// Gradients are sums of up to T products of O(amp²) terms, accumulated in f32
// (~3e-6 measured); atol scales with amp².
const GRAD_F32 = { atol: 2e-5, rtol: 2e-5 };
// f16 storage of out, dout and dqkv rounds to 11 significant bits: half an ulp
// is 2^-11 ≈ 4.9e-4 relative; D = rowsum(dO∘O) also reads the rounded out.
const OUT_F16 = { atol: 1e-3, rtol: 1e-3 };
const GRAD_F16 = { atol: 4e-3, rtol: 4e-3 };

function qkvWidth(s: QkvSizes): number {
  return (s.NH + 2 * s.NKV) * s.HS;
}

interface Run {
  out: Float32Array;
  lse: Float32Array;
  dqkv: Float32Array;
}

/** Forward then backward on the GPU; returns out, lse and dqkv. */
async function run(
  gpu: Gpu,
  s: QkvSizes,
  qkv: Float64Array,
  dout: Float64Array,
  options: { dtype?: DType; scale?: number; plan?: AttentionPlan } = {},
): Promise<Run> {
  const dtype = options.dtype ?? "f32";
  const tQkv = gpu.tensor([s.B, s.T, qkvWidth(s)], dtype, { label: "qkv", data: qkv });
  const tOut = gpu.tensor([s.B, s.T, s.NH * s.HS], dtype, { label: "out" });
  const tLse = gpu.tensor([s.B, s.NH, s.T], "f32", { label: "lse" });
  const tDout = gpu.tensor([s.B, s.T, s.NH * s.HS], dtype, { label: "dout", data: dout });
  const tDqkv = gpu.tensor([s.B, s.T, qkvWidth(s)], dtype, { label: "dqkv" });
  const rec = gpu.recorder();
  const heads = { nHead: s.NH, nKvHead: s.NKV, scale: options.scale, plan: options.plan };
  attentionForward(rec, { out: tOut, lse: tLse, qkv: tQkv, ...heads });
  attentionBackward(rec, { dqkv: tDqkv, dout: tDout, out: tOut, lse: tLse, qkv: tQkv, ...heads });
  rec.submit();
  const result = {
    out: await gpu.readFloats(tOut),
    lse: await gpu.readFloats(tLse),
    dqkv: await gpu.readFloats(tDqkv),
  };
  for (const t of [tQkv, tOut, tLse, tDout, tDqkv]) gpu.release(t);
  return result;
}

function inputs(
  s: QkvSizes & { amp: number },
  seed: number,
  f16 = false,
): { qkv: Float64Array; dout: Float64Array } {
  const round = f16 ? Math.f16round : (v: number) => v;
  const qkv = Float64Array.from(randomArray(s.B * s.T * qkvWidth(s), seed, s.amp), round);
  const dout = Float64Array.from(randomArray(s.B * s.T * s.NH * s.HS, seed + 1), round);
  return { qkv, dout };
}

/** Runs config `c` at every T with `options` and checks out, lse and dqkv against the reference. */
async function checkConfig(
  gpu: Gpu,
  c: Config,
  seed: number,
  options: { dtype?: DType; plan?: AttentionPlan },
): Promise<void> {
  const f16 = options.dtype === "f16";
  const [outTol, gradTol] = f16 ? [OUT_F16, GRAD_F16] : [OUT_F32, GRAD_F32];
  for (const T of c.Ts) {
    const s = { ...c, T };
    const { qkv, dout } = inputs(s, seed + T, f16);
    const scale = 1 / Math.sqrt(s.HS);
    const got = await run(gpu, s, qkv, dout, options);
    const want = attentionRef(qkv, s, scale);
    const what = `${options.dtype ?? "f32"} B${s.B} T${T} NH${s.NH} NKV${s.NKV} HS${s.HS} ${
      JSON.stringify(options.plan ?? "default")
    }`;
    assertClose(got.out, want.out, { atol: outTol.atol * s.amp, rtol: outTol.rtol }, `out ${what}`);
    assertClose(got.lse, want.lse, LSE_F32, `lse ${what}`); // f32 even with f16 storage; inputs are exact f16 values
    const amp2 = s.amp * s.amp;
    assertClose(
      got.dqkv,
      attentionBackwardRef(dout, qkv, s, scale),
      { atol: gradTol.atol * amp2, rtol: gradTol.rtol },
      `dqkv ${what}`,
    );
  }
}

Deno.test("attention forward and backward match the float64 reference (f32, GQA, odd T)", async () => {
  const gpu = await testGpu();
  for (const [k, c] of CONFIGS.entries()) await checkConfig(gpu, c, 100 * k, {});
});

Deno.test("attention plans other than the adapter's give the same answers, f32 and f16", async () => {
  const gpu = await testGpu();
  const small = [CONFIGS[0], { ...CONFIGS[1], Ts: [33, 130] }];
  for (const plan of PLANS) {
    for (const [k, c] of small.entries()) await checkConfig(gpu, c, 100 * k + 7, { plan });
  }
  if (gpu.features.f16) await checkConfig(gpu, CONFIGS[0], 9, { plan: ATTENTION_PLANS.gpu, dtype: "f16" });
});

Deno.test("the plans the bench sweeps on GPUs give the same answers", async () => {
  const gpu = await testGpu();
  // HS 16, T 1, 7 and 65: blocks of 64 to 128 rows, one partial.
  for (const plan of Object.values(SWEEP_PLANS).filter((p) => !PLANS.includes(p))) {
    await checkConfig(gpu, CONFIGS[0], 11, { plan });
  }
});

Deno.test("attention honours a custom scale", async () => {
  const gpu = await testGpu();
  const s = { B: 1, T: 20, NH: 2, NKV: 1, HS: 8, amp: 1 };
  const { qkv, dout } = inputs(s, 200);
  const got = await run(gpu, s, qkv, dout, { scale: 0.9 });
  assertClose(got.out, attentionRef(qkv, s, 0.9).out, OUT_F32, "out with scale 0.9");
  assertClose(got.dqkv, attentionBackwardRef(dout, qkv, s, 0.9), GRAD_F32, "dqkv with scale 0.9");
});

Deno.test("attention stays exact when scores span thousands of log2 units (rescales underflow to 0)", async () => {
  // Scale 40 puts scores up to ~1800 apart in log2 units: the forward's running max
  // jumps by far more than the 126 binades a rescale can express, and most
  // probabilities underflow, as they do in the float64 reference rounded to f32.
  // A score that large carries an f32 rounding of ~1e-4, so the probabilities the
  // backward recomputes, and the gradients, carry ~1e-4 relative.
  const gpu = await testGpu();
  const s = { B: 1, T: 37, NH: 2, NKV: 2, HS: 8, amp: 2 };
  const { qkv, dout } = inputs(s, 210);
  const got = await run(gpu, s, qkv, dout, { scale: 40 });
  const ref = attentionRef(qkv, s, 40);
  assertClose(got.out, ref.out, OUT_F32, "out with scale 40");
  assertClose(got.lse, ref.lse, { atol: 1e-3, rtol: 5e-6 }, "lse with scale 40");
  assertClose(
    got.dqkv,
    attentionBackwardRef(dout, qkv, s, 40),
    { atol: 1e-4, rtol: 1e-4 },
    "dqkv with scale 40",
  );
});

Deno.test("attention backward matches finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  const s = { B: 1, T: 3, NH: 2, NKV: 1, HS: 4, amp: 1.5 };
  const { qkv } = inputs(s, 300);
  const w = randomArray(s.B * s.T * s.NH * s.HS, 301); // loss = Σ w·out, so dout = w
  const scale = 1 / Math.sqrt(s.HS);
  const loss = (x: Float64Array) => attentionRef(x, s, scale).out.reduce((sum, o, i) => sum + o * w[i], 0);
  const numeric = finiteDifferences(loss, qkv, 1e-5);
  // Central differences of a smooth float64 function: truncation error ~h² = 1e-10.
  assertClose(attentionBackwardRef(w, qkv, s, scale), numeric, { atol: 1e-8, rtol: 1e-7 }, "reference vs FD");
  const got = await run(gpu, s, qkv, w);
  // The GPU side is f32: a few roundings of O(1) sums.
  assertClose(got.dqkv, numeric, { atol: 1e-5, rtol: 1e-5 }, "dqkv vs finite differences");
});

Deno.test("attention f16 storage matches the reference with f16 tolerances", async (t) => {
  const gpu = await testGpu();
  if (!gpu.features.f16) {
    await t.step({ name: "f16 unavailable on this adapter", ignore: true, fn: () => {} });
    return;
  }
  for (const [k, c] of CONFIGS.slice(0, 2).entries()) {
    await checkConfig(gpu, { ...c, Ts: [7, 65] }, 100 * k + 50, { dtype: "f16" });
  }
});

Deno.test("attention forward and backward are bit-identical run to run", async () => {
  const gpu = await testGpu();
  const s = { B: 2, T: 70, NH: 4, NKV: 1, HS: 16, amp: 2 };
  const { qkv, dout } = inputs(s, 500);
  const first = await run(gpu, s, qkv, dout);
  const second = await run(gpu, s, qkv, dout);
  assert.deepEqual(second.out, first.out);
  assert.deepEqual(second.lse, first.lse);
  assert.deepEqual(second.dqkv, first.dqkv);
});

Deno.test("attention refuses a sequence whose loops would pass the adapter's loop limit", async () => {
  const gpu = await testGpu();
  const s = { B: 1, T: 5, NH: 4, NKV: 2, HS: 8 };
  const qkv = gpu.tensor([s.B, s.T, qkvWidth(s)]);
  const out = gpu.tensor([s.B, s.T, s.NH * s.HS]);
  const lse = gpu.tensor([s.B, s.NH, s.T]);
  const dqkv = gpu.tensor(qkv.shape);
  const heads = { nHead: s.NH, nKvHead: s.NKV, plan: { rows: 1, threads: 8, chunk: 1, shared: false } };
  const measured = gpu.loopLimit;
  try {
    // A row per trip, and a trip that ends each loop: the forward streams T keys once
    // (1 + 1 + 5 + 1 = 8 trips, within the 9 a limit of 8 allows); dK/dV streams the T
    // queries for each of its 2 query heads (2 + 1 + 2·(5 + 1) = 15).
    gpu.loopLimit = 8;
    attentionForward(gpu.recorder(), { out, lse, qkv, ...heads });
    assert.throws(
      () => attentionBackward(gpu.recorder(), { dqkv, dout: out, out, lse, qkv, ...heads }),
      /^GpuError: attentionBackward: one invocation would make 15 loop trips, past the 8 .*; use a shorter sequence$/,
    );
    // Four rows a thread cut the diagonal at rows 2 and 3: three loops, whose chunks
    // tile the T keys, so 1 + 1 + 5 + 3 = 10.
    const cut = { ...heads, plan: { rows: 4, threads: 2, chunk: 1, shared: false } };
    assert.throws(
      () => attentionForward(gpu.recorder(), { out, lse, qkv, ...cut }),
      /^GpuError: attentionForward: one invocation would make 10 loop trips, past the 8 /,
    );
  } finally {
    gpu.loopLimit = measured;
    for (const t of [qkv, out, lse, dqkv]) gpu.release(t);
  }
});

Deno.test("attention refuses bad shapes, dtypes, head sizes and aliasing, naming the argument", async () => {
  const gpu = await testGpu();
  const made: Tensor[] = [];
  const t = (shape: number[], dtype: DType = "f32") => {
    const x = gpu.tensor(shape, dtype, { label: "t" });
    made.push(x);
    return x;
  };
  const heads = { nHead: 4, nKvHead: 2 };
  const qkv = t([2, 5, 8 * 8]); // HS = 8
  const out = t([2, 5, 32]);
  const lse = t([2, 4, 5]);
  const rec = gpu.recorder();
  assert.throws(
    () => attentionForward(rec, { out: t([2, 5, 31]), lse, qkv, ...heads }),
    /attentionForward: out ".*" has shape \[2, 5, 31\], expected \[2, 5, 32\]/,
  );
  assert.throws(
    () => attentionForward(rec, { out, lse: t([2, 4, 5], "f16"), qkv, ...heads }),
    /attentionForward: lse ".*" is f16, expected f32/,
  );
  assert.throws(
    () => attentionForward(rec, { out, lse, qkv: t([2, 5, 8 * 6]), ...heads }),
    /attentionForward: head size 6 is not supported; use a multiple of 4/,
  );
  assert.throws(
    () => attentionForward(rec, { out, lse, qkv: t([2, 5, 63]), ...heads }),
    /attentionForward: qkv ".*" has 63 channels, not a multiple of NH \+ 2·NKV = 8/,
  );
  assert.throws(
    () => attentionForward(rec, { out, lse, qkv, nHead: 4, nKvHead: 3 }),
    /nKvHead 3 must divide nHead 4/,
  );
  assert.throws(
    () =>
      attentionForward(rec, {
        out,
        lse,
        qkv,
        ...heads,
        plan: { rows: 3, threads: 5, chunk: 4, shared: false },
      }),
    /attentionForward: plan .* is invalid; rows 1..16, threads 1..256, chunk 1, 2 or 4 dividing rows·threads/,
  );
  assert.throws(
    () => attentionBackward(rec, { dqkv: qkv, dout: out, out, lse, qkv, ...heads }),
    /attentionBackward: dqkv ".*" overlaps qkv/,
  );
  assert.throws(
    () => attentionBackward(rec, { dqkv: t([2, 5, 64], "u32"), dout: out, out, lse, qkv, ...heads }),
    /attentionBackward: dqkv ".*" is u32, expected f32 or f16/,
  );
  for (const x of made) gpu.release(x);
});
