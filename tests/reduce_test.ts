import assert from "node:assert/strict";
import { recordElementwise } from "../kernels/elementwise.ts";
import { chunkRanges, GradNorm, MAX_PARTIALS, Reduction } from "../kernels/reduce.ts";
import { assertClose, randomArray, testGpu } from "./harness.ts";
import { sumAbsRef, sumRef, sumSquaresRef } from "./reference/adamw.ts";

// 1..5: fewer than one vec4 and the scalar tail; 1000, 1025, 70001: not multiples
// of a 1024-element slice, several workgroups.
const LENGTHS = [1, 3, 4, 5, 7, 1000, 1025, 70_001];
// Plans beyond the defaults at small n: longer slices (ITER = 5), and more than 256
// partials (stage 2 loops twice per thread), as large buffers get on a GPU.
const PLANS = [{ n: 70_001, maxPartials: 16 }, { n: 300_007, maxPartials: MAX_PARTIALS }];

/**
 * Worst-case relative rounding of the plan's summation: every value passes through
 * ITER (per thread) + 2 (vec4 lanes) + 8 (workgroup tree) + ⌈P/256⌉ (stage 2 loop)
 * + 8 (tree) f32 additions, each off by ≤ 2^-24, plus one rounding of its square.
 * The error is then ≤ depth·2^-24·Σ|term|.
 */
function depthUlps(reduction: Reduction): number {
  const depth = reduction.iterations + 2 + 8 + Math.ceil(reduction.partials.length / 256) + 8 + 1;
  return depth * 2 ** -24;
}

async function reduceOnce(reduction: Reduction, x: Float64Array | Float32Array): Promise<number> {
  const gpu = reduction.gpu;
  const tx = gpu.tensor([x.length], "f32", { label: "x", data: x });
  const out = gpu.tensor([1], "f32", { label: "out" });
  const rec = gpu.recorder();
  reduction.record(rec, { out, x: tx });
  rec.submit();
  const value = (await gpu.readFloats(out))[0];
  gpu.release(tx);
  gpu.release(out);
  return value;
}

Deno.test("grad norm² matches the float64 reference at every length and plan", async () => {
  const gpu = await testGpu();
  const cases = [...LENGTHS.map((n) => ({ n, maxPartials: undefined })), ...PLANS];
  for (const { n, maxPartials } of cases) {
    const g = Float32Array.from(randomArray(n, 10 + n, 2));
    const gradNorm = new GradNorm(gpu, n, { maxPartials });
    const grads = gpu.tensor([n], "f32", { label: "grads", data: g });
    const out = gpu.tensor([1], "f32", { label: "normSquared" });
    const rec = gpu.recorder();
    gradNorm.record(rec, { out, grads });
    rec.submit();
    // All terms are ≥ 0, so the bound is relative: atol 0 + rtol depth·2^-24·|ref|.
    const tolerance = { atol: 0, rtol: depthUlps(gradNorm.reduction) };
    assertClose(await gpu.read(out), [sumSquaresRef(g)], tolerance, `Σg² n=${n}`);
    gradNorm.release();
    gpu.release(grads);
    gpu.release(out);
  }
  const [long, many] = PLANS.map(({ n, maxPartials }) => new Reduction(gpu, n, { maxPartials }));
  assert.ok(long.iterations > 1 && many.partials.length > 256, "the plans exercise what they claim");
  long.release();
  many.release();
});

Deno.test("sum of signed values matches the float64 reference", async () => {
  const gpu = await testGpu();
  for (const { n, maxPartials } of [...LENGTHS.map((n) => ({ n, maxPartials: undefined })), ...PLANS]) {
    const x = Float32Array.from(randomArray(n, 20 + n, 3));
    const reduction = new Reduction(gpu, n, { op: "sum", maxPartials });
    const got = await reduceOnce(reduction, x);
    // Cancellation: the rounding error scales with Σ|x|, not |Σx|:
    // atol depth·2^-24·Σ|x| + rtol 0.
    assertClose([got], [sumRef(x)], { atol: depthUlps(reduction) * sumAbsRef(x), rtol: 0 }, `Σx n=${n}`);
    reduction.release();
  }
});

Deno.test("grad norm² is bit-identical across runs and across instances", async () => {
  const gpu = await testGpu();
  const n = 70_001;
  const x = Float32Array.from(randomArray(n, 7, 1e3));
  const first = new Reduction(gpu, n, { op: "sumSquares" });
  const a = await reduceOnce(first, x);
  const b = await reduceOnce(first, x);
  const second = new Reduction(gpu, n, { op: "sumSquares" });
  const c = await reduceOnce(second, x);
  assert.ok(Number.isFinite(a) && a > 0);
  assert.ok(Object.is(a, b) && Object.is(a, c), `runs differ: ${a} ${b} ${c}`);
  first.release();
  second.release();
});

Deno.test("chunked reduction gives the same bits as one binding", async () => {
  const gpu = await testGpu();
  // 70001 = 4 chunks of 16384 + 4465 (tail of 1); 16386 = 1 chunk + a 2-element chunk (no vec4 binding).
  for (const [n, cap] of [[70_001, 16_384], [16_386, 16_384], [5000, 1024]]) {
    const x = Float32Array.from(randomArray(n, 30 + n, 5));
    const whole = new Reduction(gpu, n, { op: "sumSquares" });
    const chunked = new Reduction(gpu, n, { op: "sumSquares", maxChunkElements: cap });
    assert.ok(chunked.chunks.length > 1 && whole.chunks.length === 1);
    const a = await reduceOnce(whole, x);
    const b = await reduceOnce(chunked, x);
    assert.ok(Object.is(a, b), `n=${n}: one binding ${a}, ${chunked.chunks.length} chunks ${b}`);
    // atol 0 + rtol depth·2^-24·|ref| (non-negative terms).
    assertClose([b], [sumSquaresRef(x)], { atol: 0, rtol: depthUlps(chunked) }, `chunked Σx² n=${n}`);
    whole.release();
    chunked.release();
  }
});

Deno.test("a reduction reading staged copies gives the same bits as reading storage", async () => {
  const gpu = await testGpu();
  // One chunk with a tail of 1; chunks of 16384 with a tail; 2^20-element chunks and a tail of 3.
  const cases: [number, number | undefined][] = [[5001, undefined], [70_001, 16_384], [
    (1 << 21) + 7,
    1 << 20,
  ]];
  for (const [n, cap] of cases) {
    const x = Float32Array.from(randomArray(n, 40 + n, 3));
    const sums = [];
    for (const texels of [false, true]) {
      for (const op of ["sum", "sumSquares"] as const) {
        const reduction = new Reduction(gpu, n, { op, maxChunkElements: cap, texels });
        assert.equal(reduction.texels, texels);
        sums.push(await reduceOnce(reduction, x));
        reduction.release();
      }
    }
    assert.ok(Object.is(sums[2], sums[0]) && Object.is(sums[3], sums[1]), `n=${n}: ${sums}`);
    assertClose([sums[3]], [sumSquaresRef(x)], { atol: 0, rtol: 1e-5 }, `Σx² n=${n}`);
  }
});

Deno.test("a buffer larger than one storage binding is reduced in chunks", async () => {
  const gpu = await testGpu();
  const n = gpu.limits.maxStorageBufferBindingSize / 4 + 5;
  const gradNorm = new GradNorm(gpu, n);
  assert.ok(gradNorm.reduction.chunks.length >= 2);
  const grads = gpu.tensor([n], "f32", { label: "big grads" });
  const out = gpu.tensor([1], "f32", { label: "normSquared" });
  const rec = gpu.recorder();
  // Filled on the GPU (uploading n floats would dominate the test), in views
  // that fit a binding too.
  for (const [offset, length] of chunkRanges(gpu, n, 1)) {
    recordElementwise(rec, {
      label: "test pattern",
      decls: [{ name: "g", tensor: grads.view(offset, [length]), write: true }],
      n: length,
      body: `g[i] = f32((i + ${offset}u) % 7u) - 3.0;`,
    });
  }
  gradNorm.record(rec, { out, grads });
  rec.submit();
  let want = 0;
  for (let i = 0; i < n; i++) want += ((i % 7) - 3) ** 2;
  // Integer terms: partials are exact below 2^24, so only stage 2 rounds:
  // atol 0 + rtol 20·2^-24·|ref| (its ⌈P/256⌉ + 8 additions and the fold of chunk sums).
  assertClose(await gpu.read(out), [want], { atol: 0, rtol: 20 * 2 ** -24 }, `Σg² n=${n}`);
  gradNorm.release();
  gpu.release(grads);
  gpu.release(out);
});

Deno.test("grad norm² of gradients holding inf or NaN is not finite", async () => {
  const gpu = await testGpu();
  const n = 3000;
  for (const bad of [Infinity, -Infinity, NaN]) {
    const g = Float32Array.from(randomArray(n, 40, 1));
    g[1234] = bad;
    const reduction = new Reduction(gpu, n, { op: "sumSquares" });
    const got = await reduceOnce(reduction, g);
    reduction.release();
    assert.ok(!Number.isFinite(got), `Σg² with ${bad} gave ${got}`);
  }
});

Deno.test("reductions refuse bad lengths and dtypes with the argument named", async () => {
  const gpu = await testGpu();
  assert.throws(() => new GradNorm(gpu, 0), /grad norm: n must be an integer from 1/);
  const gradNorm = new GradNorm(gpu, 10);
  const grads = gpu.tensor([9]);
  const half = gpu.tensor([10], "f16");
  const out = gpu.tensor([2]);
  const one = gpu.tensor([1]);
  assert.throws(
    () => gradNorm.record(gpu.recorder(), { out: one, grads }),
    /grad norm: grads ".*" has 9 elements, expected 10/,
  );
  assert.throws(
    () => gradNorm.record(gpu.recorder(), { out: one, grads: half }),
    /grad norm: grads ".*" is f16, expected f32/,
  );
  const ten = gpu.tensor([10]);
  assert.throws(
    () => gradNorm.record(gpu.recorder(), { out, grads: ten }),
    /grad norm: out ".*" has 2 elements, expected 1/,
  );
  gradNorm.release();
  for (const t of [grads, half, out, one, ten]) gpu.release(t);
});
