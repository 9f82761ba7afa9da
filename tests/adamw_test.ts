import assert from "node:assert/strict";
import { AdamW, type AdamWHyper, buildDecayMask } from "../kernels/adamw.ts";
import type { Gpu } from "../kernels/device.ts";
import { GradNorm } from "../kernels/reduce.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { type AdamWStateRef, adamwStepRef } from "./reference/adamw.ts";

// 1 and 7: under a workgroup; 1000: not a multiple of 256 or of 32 mask bits; 70001: many workgroups.
const LENGTHS = [1, 7, 1000, 70_001];
const STEPS = 5;
const BASE: Omit<AdamWHyper, "step"> = {
  lr: 1e-2,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  maxGradNorm: 0,
};

/** Decay on alternating ranges of uneven lengths (matrices and gains, say), some straddling mask words. */
function mixedRanges(n: number): { offset: number; length: number; decay: boolean }[] {
  const ranges = [];
  for (let offset = 0, k = 0; offset < n; k++) {
    const length = Math.min(n - offset, 1 + ((k * 37) % 101));
    ranges.push({ offset, length, decay: k % 2 === 0 });
    offset += length;
  }
  return ranges;
}

function decayFlags(n: number, ranges: { offset: number; length: number; decay: boolean }[]): Uint8Array {
  const flags = new Uint8Array(n);
  for (const r of ranges) flags.fill(r.decay ? 1 : 0, r.offset, r.offset + r.length);
  return flags;
}

/** GPU optimizer state and its float64 twin, from the same f32 start. */
class Fixture {
  readonly params: Tensor;
  readonly grads: Tensor;
  readonly m: Tensor;
  readonly v: Tensor;
  readonly decayMask: Tensor;
  readonly normSquared: Tensor;
  readonly gradNorm: GradNorm;
  readonly adamw: AdamW;
  readonly ref: AdamWStateRef;
  readonly flags: Uint8Array;

  constructor(
    readonly gpu: Gpu,
    readonly n: number,
    options: { moments?: boolean; maxChunkElements?: number; width?: 1 | 4; texels?: boolean } = {},
  ) {
    const p = Float32Array.from(randomArray(n, 1, 1));
    // Later-step moments: m any sign, v ≥ 0 and on the scale of g².
    const m = options.moments ? Float32Array.from(randomArray(n, 2, 0.1)) : new Float32Array(n);
    const v = options.moments ? Float32Array.from(randomArray(n, 3, 0.01), Math.abs) : new Float32Array(n);
    const ranges = mixedRanges(n);
    this.flags = decayFlags(n, ranges);
    const words = buildDecayMask(n, ranges);
    this.params = gpu.tensor([n], "f32", { label: "params", data: p });
    this.grads = gpu.tensor([n], "f32", { label: "grads" });
    this.m = gpu.tensor([n], "f32", { label: "m", data: m });
    this.v = gpu.tensor([n], "f32", { label: "v", data: v });
    this.decayMask = gpu.tensor([words.length], "u32", { label: "decay mask", data: words });
    this.normSquared = gpu.tensor([1], "f32", { label: "normSquared" });
    this.gradNorm = new GradNorm(gpu, n);
    this.adamw = new AdamW(gpu, n, {
      maxChunkElements: options.maxChunkElements,
      width: options.width,
      texels: options.texels,
    });
    this.ref = { params: Float64Array.from(p), m: Float64Array.from(m), v: Float64Array.from(v) };
  }

  /** Uploads `grads`, runs grad norm + AdamW on the GPU in one submit, and the reference on the CPU. */
  step(grads: Float32Array, hyper: AdamWHyper): ReturnType<typeof adamwStepRef> {
    this.gpu.write(this.grads, grads);
    const rec = this.gpu.recorder();
    this.gradNorm.record(rec, { out: this.normSquared, grads: this.grads });
    this.adamw.record(rec, { ...this, hyper });
    rec.submit();
    return adamwStepRef(this.ref, grads, this.flags, hyper);
  }

  async state(): Promise<{ params: Float32Array; m: Float32Array; v: Float32Array }> {
    const gpu = this.gpu;
    return {
      params: await gpu.readFloats(this.params),
      m: await gpu.readFloats(this.m),
      v: await gpu.readFloats(this.v),
    };
  }

  release(): void {
    for (const t of [this.params, this.grads, this.m, this.v, this.decayMask, this.normSquared]) {
      this.gpu.release(t);
    }
    this.gradNorm.release();
    this.adamw.release();
  }
}

/** Asserts equal f32 bit patterns (NaN payloads and ±0 included), naming the first difference. */
function assertSameBits(actual: Float32Array, expected: Float32Array, what: string): void {
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  assert.equal(a.length, e.length, `${what}: lengths differ`);
  const i = a.findIndex((bits, k) => bits !== e[k]);
  assert.ok(i < 0, `${what}: element ${i} is ${actual[i]}, expected ${expected[i]} bit for bit`);
}

// After 5 steps in f32: each step rounds p about twice (decay, update), ≤ 10 half-ulps
// ≈ 6e-7·|p| in all, and the lr-sized update carries ~1e-6 relative error (≈ 1e-8
// absolute): atol 2e-7 + rtol 1e-6·|ref|. m and v are sums of terms of size |g| ≤ 1
// and g² with f32 β's: m can cancel to near 0, so atol 1e-7 + rtol 1e-6·|ref|; v ≥ 0
// has no cancellation: atol 1e-9 + rtol 1e-6·|ref|. (Measured worst: 3.1e-7 at |p| ≈ 1,
// 1.7e-8 on m.)
const PARAMS_TOL = { atol: 2e-7, rtol: 1e-6 };
const M_TOL = { atol: 1e-7, rtol: 1e-6 };
const V_TOL = { atol: 1e-9, rtol: 1e-6 };

async function expectMatchesReference(fx: Fixture, what: string): Promise<void> {
  const got = await fx.state();
  assertClose(got.params, fx.ref.params, PARAMS_TOL, `${what}: params`);
  assertClose(got.m, fx.ref.m, M_TOL, `${what}: m`);
  assertClose(got.v, fx.ref.v, V_TOL, `${what}: v`);
}

// The stored gradients are the true ones times `lossScale`; gradScale = 1/lossScale undoes it.
const CASES = [
  { name: "no clipping", maxGradNorm: 0, lossScale: 1, clipBinds: false },
  { name: "clipping binds", maxGradNorm: 1e-3, lossScale: 1, clipBinds: true },
  { name: "clipping binds, gradScale 1/1024", maxGradNorm: 1e-3, lossScale: 1024, clipBinds: true },
  { name: "maxGradNorm Infinity, gradScale 1/8", maxGradNorm: Infinity, lossScale: 8, clipBinds: false },
  { name: "clipping does not bind", maxGradNorm: 1e6, lossScale: 1, clipBinds: false },
];

for (const c of CASES) {
  Deno.test(`adamw matches the float64 reference over ${STEPS} steps: ${c.name}`, async () => {
    const gpu = await testGpu();
    for (const n of LENGTHS) {
      const fx = new Fixture(gpu, n);
      for (let step = 1; step <= STEPS; step++) {
        const g = Float32Array.from(randomArray(n, 100 * step + n, c.lossScale));
        const hyper = { ...BASE, maxGradNorm: c.maxGradNorm, gradScale: 1 / c.lossScale, step };
        const { clip, skipped } = fx.step(g, hyper);
        assert.ok(!skipped);
        assert.equal(clip < 1, c.clipBinds, `n=${n} step ${step}: clip factor ${clip}`);
      }
      await expectMatchesReference(fx, `${c.name}, n=${n}`);
      fx.release();
    }
  });
}

Deno.test("adamw matches the reference from later-step moments (steps 100..104)", async () => {
  const gpu = await testGpu();
  for (const n of [7, 70_001]) {
    const fx = new Fixture(gpu, n, { moments: true });
    for (let step = 100; step < 100 + STEPS; step++) {
      const g = Float32Array.from(randomArray(n, step + n, 0.3));
      fx.step(g, { ...BASE, maxGradNorm: 1, step });
    }
    await expectMatchesReference(fx, `later steps, n=${n}`);
    fx.release();
  }
});

Deno.test("adamw step 1 is p(1 - lr·wd·decay) - lr·g/(|g| + eps) (bias correction)", async () => {
  const gpu = await testGpu();
  const n = 1000;
  const fx = new Fixture(gpu, n);
  const p0 = Float64Array.from(fx.ref.params);
  const g = Float32Array.from(randomArray(n, 5, 0.5));
  g[3] = 0; // no gradient: no move beyond decay
  g[4] = 1e-9; // below eps: the step is lr/11, not lr
  fx.step(g, { ...BASE, step: 1 });
  const { lr, weightDecay, eps } = BASE;
  // m̂ = g and √v̂ = |g| at step 1 when the bias corrections are right.
  const want = Float64Array.from(
    p0,
    (p, i) => p * (1 - lr * weightDecay * fx.flags[i]) - lr * g[i] / (Math.abs(g[i]) + eps),
  );
  const got = (await fx.state()).params;
  // One step: two f32 roundings of |p| (≤ 1.2e-7·|p|) and a ~1e-6 relative error of
  // the lr-sized update: atol 5e-8 + rtol 2e-7·|ref| (measured worst 7.2e-8 at |p| ≈ 1).
  assertClose(got, want, { atol: 5e-8, rtol: 2e-7 }, "step-1 params");
  assert.ok(fx.flags.some((f) => f === 1) && fx.flags.some((f) => f === 0));
  fx.release();
});

Deno.test("a non-finite grad norm skips the step: params, m and v stay bit-identical", async () => {
  const gpu = await testGpu();
  const n = 1000;
  const fx = new Fixture(gpu, n);
  fx.step(Float32Array.from(randomArray(n, 6, 1)), { ...BASE, step: 1 }); // non-zero moments
  const before = await fx.state();
  let step = 2;
  for (const bad of [Infinity, -Infinity, NaN]) {
    for (const maxGradNorm of [0, 1, Infinity]) {
      const g = Float32Array.from(randomArray(n, 7, 1));
      g[517] = bad;
      const hyper = { ...BASE, maxGradNorm, step: step++ };
      assert.ok(fx.step(g, { ...hyper, gradScale: 0.5 }).skipped);
      assert.ok(!Number.isFinite((await gpu.readFloats(fx.normSquared))[0]), `norm² with ${bad}`);
      const after = await fx.state();
      for (const key of ["params", "m", "v"] as const) {
        assertSameBits(after[key], before[key], `${key} with g=${bad}, max ${maxGradNorm}`);
      }
    }
  }
  // Finite gradients but a squared norm that overflowed f32 (as a scaled-up f16 run
  // can), and a finite norm² whose unscaled norm √3e38·1e20 overflows: written
  // directly, as the norm kernel would leave them.
  gpu.write(fx.grads, new Float32Array(n).fill(1));
  for (const [normSquared, gradScale] of [[Infinity, 1], [3e38, 1e20]]) {
    gpu.write(fx.normSquared, [normSquared]);
    const rec = gpu.recorder();
    fx.adamw.record(rec, { ...fx, hyper: { ...BASE, gradScale, step: step++ } });
    rec.submit();
    const after = await fx.state();
    assertSameBits(after.params, before.params, `params with norm² ${normSquared}, gradScale ${gradScale}`);
  }
  fx.release();
});

Deno.test("adamw split into binding chunks gives the same bits as one dispatch", async () => {
  const gpu = await testGpu();
  const n = 70_001; // chunks of 16384 (a multiple of the 2048-element granule) + 4465
  const whole = new Fixture(gpu, n);
  const chunked = new Fixture(gpu, n, { maxChunkElements: 16_384 });
  for (let step = 1; step <= 2; step++) {
    const g = Float32Array.from(randomArray(n, step, 1));
    const hyper = { ...BASE, maxGradNorm: 1e-3, step };
    whole.step(g, hyper);
    chunked.step(g, hyper);
  }
  const [a, b] = [await whole.state(), await chunked.state()];
  for (const key of ["params", "m", "v"] as const) {
    assertSameBits(b[key], a[key], `${key} when chunked`);
  }
  await expectMatchesReference(chunked, "chunked");
  whole.release();
  chunked.release();
});

Deno.test("adamw reading staged textures, in chunks, gives the same bits as reading storage", async () => {
  const gpu = await testGpu();
  const n = 70_001; // texel chunks of 16384 with their tails, against one storage dispatch
  const storage = new Fixture(gpu, n, { texels: false });
  const texels = new Fixture(gpu, n, { texels: true, maxChunkElements: 16_384 });
  assert.ok(!storage.adamw.texels && texels.adamw.texels);
  for (let step = 1; step <= 2; step++) {
    const g = Float32Array.from(randomArray(n, 10 + step, 1));
    const hyper = { ...BASE, maxGradNorm: 1e-3, step };
    storage.step(g, hyper);
    texels.step(g, hyper);
  }
  const [a, b] = [await storage.state(), await texels.state()];
  for (const key of ["params", "m", "v"] as const) assertSameBits(b[key], a[key], `${key} from textures`);
  storage.release();
  texels.release();
});

Deno.test("adamw with one thread per parameter (width 1) matches the reference", async () => {
  const gpu = await testGpu();
  for (const n of [7, 1000]) {
    const fx = new Fixture(gpu, n, { width: 1 });
    for (let step = 1; step <= STEPS; step++) {
      fx.step(Float32Array.from(randomArray(n, 50 + step, 1)), { ...BASE, maxGradNorm: 1e-3, step });
    }
    await expectMatchesReference(fx, `width 1, n=${n}`);
    fx.release();
  }
});

Deno.test("buildDecayMask sets bit i % 32 of word ⌊i/32⌋ exactly for decayed parameters", () => {
  for (const n of [1, 31, 32, 33, 1000]) {
    const ranges = mixedRanges(n);
    const flags = decayFlags(n, ranges);
    const words = buildDecayMask(n, ranges.toReversed()); // order of ranges does not matter
    assert.equal(words.length, Math.ceil(n / 32));
    for (let i = 0; i < 32 * words.length; i++) {
      const bit = (words[Math.floor(i / 32)] >>> (i % 32)) & 1;
      assert.equal(bit, i < n ? flags[i] : 0, `n=${n} bit ${i}`);
    }
  }
  assert.deepEqual(
    buildDecayMask(40, [{ offset: 30, length: 4, decay: true }]),
    Uint32Array.of(0xc0000000, 0x3),
  );
  assert.throws(
    () => buildDecayMask(10, [{ offset: 0, length: 6, decay: true }, { offset: 5, length: 2, decay: false }]),
    /buildDecayMask: range at 5 overlaps the one ending at 6/,
  );
  assert.throws(() => buildDecayMask(10, [{ offset: 8, length: 3, decay: true }]), /runs past n = 10/);
});

Deno.test("adamw refuses bad arguments with the argument named", async () => {
  const gpu = await testGpu();
  const n = 100;
  const fx = new Fixture(gpu, n);
  const short = gpu.tensor([n - 1], "f32", { label: "short" });
  const u = gpu.tensor([n], "u32", { label: "u" });
  const hyper = { ...BASE, step: 1 };
  const rec = () => gpu.recorder();
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, m: short, hyper }),
    /adamw: m "short" has 99 elements, expected 100/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, grads: u, hyper }),
    /adamw: grads "u" is u32, expected f32/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, decayMask: u, hyper }),
    /adamw: decayMask "u" has 100 elements, expected 4/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, hyper: { ...hyper, step: 0 } }),
    /adamw: hyper.step is 0/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, hyper: { ...hyper, beta2: 1 } }),
    /adamw: hyper.beta2 is 1/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, hyper: { ...hyper, lr: NaN } }),
    /adamw: hyper.lr is NaN/,
  );
  assert.throws(
    () => fx.adamw.record(rec(), { ...fx, hyper: { ...hyper, gradScale: 0 } }),
    /adamw: hyper.gradScale is 0/,
  );
  // Uniforms are read at submit time: two different steps in one command buffer would both see the second.
  const r = rec();
  fx.adamw.record(r, { ...fx, hyper });
  fx.adamw.record(r, { ...fx, hyper }); // the same values again are harmless
  assert.throws(() => fx.adamw.record(r, { ...fx, hyper: { ...hyper, step: 2 } }), /adamw: recorded twice/);
  r.finish();
  assert.throws(() => new AdamW(gpu, 0), /adamw: n must be an integer/);
  gpu.release(short);
  gpu.release(u);
  fx.release();
  await gpu.sync();
});
