import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import {
  crossEntropyBackward,
  crossEntropyForward,
  IGNORE_INDEX,
  lossMean,
} from "../kernels/cross_entropy.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { assertClose, finiteDifferences, randomArray, testGpu } from "./harness.ts";
import {
  crossEntropyBackwardRef,
  crossEntropyRef,
  lossMeanRef,
  meanCrossEntropyRef,
} from "./reference/cross_entropy.ts";

// f32 tolerances, from the arithmetic: lse sums up to ~200 exps per lane in f32
// (relative error ~1e-6) and adds the row max (up to ~110 here, ulp 7.6e-6); a
// loss is lse − logit, so its error is absolute, about that of lse (measured
// ≤ 4e-6 on lavapipe).
const LOSS = { atol: 2e-5, rtol: 2e-6 };
// A softmax entry p carries the relative error of exp(x − lse), i.e. the absolute
// error δ of x − lse (≤ ~1e-5 with |x| ~ 100) times p ≤ 1; at the target, p − 1
// cancels, so the bound is absolute: δ·scale/count, plus one output rounding.
function gradTolerance(factor: number) {
  return { atol: 2e-5 * factor, rtol: 2e-5 };
}

/** Targets in [0, V), every `ignoreEvery`-th row ignored (none when 0). */
function makeTargets(n: number, vocab: number, seed: number, ignoreEvery = 0): Uint32Array {
  const r = randomArray(n, seed, 1);
  return Uint32Array.from(
    r,
    (v, i) =>
      ignoreEvery > 0 && i % ignoreEvery === ignoreEvery - 1
        ? IGNORE_INDEX
        : Math.min(vocab - 1, Math.floor((v + 1) / 2 * vocab)),
  );
}

/**
 * Logits in [-4, 4) with a +100 offset on every third row: a kernel that skipped
 * the max subtraction would overflow exp() in f32 there (e^88 is inf).
 */
function makeLogits(n: number, vocab: number, seed: number): Float64Array {
  const x = randomArray(n * vocab, seed, 4);
  for (let r = 0; r < n; r += 3) for (let j = 0; j < vocab; j++) x[r * vocab + j] += 100;
  return x;
}

interface Run {
  losses: Float32Array;
  lse: Float32Array;
  mean: number;
  count: number;
  dlogits: Float32Array;
}

/** Forward, mean and backward on the GPU; returns everything read back. */
async function runAll(
  gpu: Gpu,
  logitsData: ArrayLike<number>,
  targetsData: Uint32Array,
  vocab: number,
  options: { inPlace?: boolean; dtype?: "f32" | "f16"; scale?: number | "tensor"; ignoreIndex?: number } = {},
): Promise<Run> {
  const n = targetsData.length;
  const dtype = options.dtype ?? "f32";
  const logits = gpu.tensor([n, vocab], dtype, { label: "logits", data: Float64Array.from(logitsData) });
  const targets = gpu.tensor([n], "u32", { label: "targets", data: targetsData });
  const losses = gpu.tensor([n], "f32", { label: "losses" });
  const lse = gpu.tensor([n], "f32", { label: "lse" });
  const out = gpu.tensor([1], "f32", { label: "loss" });
  const count = gpu.tensor([1], "u32", { label: "count" });
  const dlogits = options.inPlace ? logits : gpu.tensor([n, vocab], dtype, { label: "dlogits" });
  const scaleTensor = options.scale === "tensor" ? gpu.tensor([1], "f32", { data: [0.5] }) : undefined;
  const ignoreIndex = options.ignoreIndex;
  const rec = gpu.recorder();
  crossEntropyForward(rec, { losses, lse, logits, targets, ignoreIndex });
  lossMean(rec, { out, count, losses, targets, ignoreIndex });
  crossEntropyBackward(rec, {
    dlogits,
    logits,
    lse,
    targets,
    count,
    ignoreIndex,
    scale: scaleTensor ?? (options.scale as number | undefined),
  });
  rec.submit();
  const run: Run = {
    losses: await gpu.readFloats(losses),
    lse: await gpu.readFloats(lse),
    mean: (await gpu.readFloats(out))[0],
    count: (await gpu.read(count))[0],
    dlogits: await gpu.readFloats(dlogits),
  };
  const owned: (Tensor | undefined)[] = [logits, targets, losses, lse, out, count, scaleTensor];
  if (!options.inPlace) owned.push(dlogits);
  for (const t of owned) if (t) gpu.release(t);
  return run;
}

function checkAgainstReference(
  run: Run,
  logits: ArrayLike<number>,
  targets: Uint32Array,
  vocab: number,
  what: string,
  ignoreIndex = IGNORE_INDEX,
  scale = 1,
): void {
  const ref = crossEntropyRef(logits, targets, vocab, ignoreIndex);
  const mean = lossMeanRef(ref.losses, targets, ignoreIndex);
  assertClose(run.losses, ref.losses, LOSS, `${what} losses`); // |err| <= 2e-5 + 2e-6·|ref|
  assertClose(run.lse, ref.lse, LOSS, `${what} lse`); // |err| <= 2e-5 + 2e-6·|ref|
  assertClose([run.mean], [mean.mean], LOSS, `${what} mean`); // |err| <= 2e-5 + 2e-6·|ref|
  assert.equal(run.count, mean.count, `${what} count`);
  const grad = crossEntropyBackwardRef(logits, targets, vocab, ignoreIndex, scale);
  const factor = scale / Math.max(1, mean.count);
  assertClose(run.dlogits, grad, gradTolerance(factor), `${what} dlogits`); // |err| <= 2e-5·scale/count + 2e-5·|ref|
}

// (N, V): degenerate, not multiples of anything, several rows per workgroup,
// more than one workgroup of rows, GPT-2's vocabulary, and LLaMA 3's (over the
// 65535 loop iterations lavapipe runs per invocation, were a row on one lane).
const SHAPES: [number, number][] = [[1, 1], [7, 7], [300, 65], [13, 1000], [3, 50257], [2, 128256]];

Deno.test("cross-entropy forward, mean and backward match the reference, with ignored rows", async () => {
  const gpu = await testGpu();
  for (const [n, vocab] of SHAPES) {
    const logits = makeLogits(n, vocab, n + vocab);
    const targets = makeTargets(n, vocab, 2 * n + vocab, n > 3 ? 4 : 0);
    const run = await runAll(gpu, logits, targets, vocab);
    checkAgainstReference(run, Float32Array.from(logits), targets, vocab, `N=${n} V=${vocab}`);
  }
});

Deno.test("every lane count gives the reference result, including lanes that see no logit", async () => {
  const gpu = await testGpu();
  // The GPU defaults (16 lanes at V = 65, 256 at V = 50257; a CPU adapter uses 1),
  // wider ones that leave lanes empty, which the reduction must skip, and 1 lane.
  const cases = [[300, 65, 16], [3, 50257, 256], [20, 7, 256], [40, 65, 128], [40, 65, 1], [5, 1000, 32]];
  for (const [n, vocab, lanes] of cases) {
    const logitsData = Float32Array.from(makeLogits(n, vocab, 61 + lanes));
    const targetsData = makeTargets(n, vocab, 62, 6);
    const logits = gpu.tensor([n, vocab], "f32", { data: logitsData });
    const targets = gpu.tensor([n], "u32", { data: targetsData });
    const losses = gpu.tensor([n]);
    const lse = gpu.tensor([n]);
    const count = gpu.tensor([1], "u32", { data: [n - Math.floor(n / 6)] });
    const rec = gpu.recorder();
    crossEntropyForward(rec, { losses, lse, logits, targets, lanes });
    crossEntropyBackward(rec, { dlogits: logits, logits, lse, targets, count, lanes });
    rec.submit();
    const what = `V=${vocab} lanes=${lanes}`;
    const ref = crossEntropyRef(logitsData, targetsData, vocab, IGNORE_INDEX);
    assertClose(await gpu.readFloats(losses), ref.losses, LOSS, `${what} losses`); // |err| <= 2e-5 + 2e-6·|ref|
    const grad = crossEntropyBackwardRef(logitsData, targetsData, vocab, IGNORE_INDEX);
    const tolerance = gradTolerance(1 / (n - Math.floor(n / 6)));
    assertClose(await gpu.readFloats(logits), grad, tolerance, `${what} dlogits`); // |err| <= 2e-5/count + 2e-5·|ref|
    for (const t of [logits, targets, losses, lse, count]) gpu.release(t);
  }
});

Deno.test("cross-entropy backward in place overwrites the logits with the gradient", async () => {
  const gpu = await testGpu();
  for (const [n, vocab] of [[7, 7], [300, 65], [3, 50257]]) {
    const logits = makeLogits(n, vocab, 5 + vocab);
    const targets = makeTargets(n, vocab, 6 + vocab, 3);
    const run = await runAll(gpu, logits, targets, vocab, { inPlace: true, scale: 0.25 });
    checkAgainstReference(
      run,
      Float32Array.from(logits),
      targets,
      vocab,
      `in place V=${vocab}`,
      IGNORE_INDEX,
      0.25,
    );
  }
});

Deno.test("cross-entropy with f16 logits computes in f32 and matches the reference", async () => {
  const gpu = await testGpu();
  if (!gpu.features.f16) return;
  const [n, vocab] = [13, 1000];
  const logits = Float64Array.from(makeLogits(n, vocab, 11), Math.f16round);
  const targets = makeTargets(n, vocab, 12, 5);
  const run = await runAll(gpu, logits, targets, vocab, { dtype: "f16", inPlace: true });
  const ref = crossEntropyRef(logits, targets, vocab, IGNORE_INDEX);
  assertClose(run.losses, ref.losses, LOSS, "f16 losses"); // |err| <= 2e-5 + 2e-6·|ref|
  // dlogits rounded to f16 (2^-11 relative, subnormal spacing 6e-8) on top of the f32 bound.
  const count = targets.filter((t) => t !== IGNORE_INDEX).length;
  const F16_GRAD = { atol: 2e-5 / count + 6e-8, rtol: 1e-3 };
  const grad = crossEntropyBackwardRef(logits, targets, vocab, IGNORE_INDEX);
  assertClose(run.dlogits, grad, F16_GRAD, "f16 dlogits"); // |err| <= 2e-5/count + 6e-8 + 1e-3·|ref|
});

Deno.test("cross-entropy backward matches finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  const vocab = 5;
  const logits = Float64Array.from(randomArray(4 * vocab, 21, 2), Math.fround);
  const targets = new Uint32Array([3, IGNORE_INDEX, 0, 4]);
  const f = (x: Float64Array) => meanCrossEntropyRef(x, targets, vocab, IGNORE_INDEX);
  const numeric = finiteDifferences(f, logits, 1e-5);
  // The reference's analytic gradient agrees with its own forward to FD accuracy (~h² + 1e-16/h).
  assertClose(crossEntropyBackwardRef(logits, targets, vocab, IGNORE_INDEX), numeric, {
    atol: 1e-9,
    rtol: 1e-7,
  }, "reference vs finite differences");
  const run = await runAll(gpu, logits, targets, vocab);
  assertClose(run.dlogits, numeric, { atol: 1e-6, rtol: 1e-5 }, "GPU vs finite differences"); // f32 softmax
  // A GPU-side scale (a dynamic loss scale) multiplies the same gradient.
  const scaled = await runAll(gpu, logits, targets, vocab, { scale: "tensor" });
  assertClose(scaled.dlogits, numeric.map((g) => g * 0.5), { atol: 1e-6, rtol: 1e-5 }, "scale tensor");
});

Deno.test("all targets ignored: loss 0, count 0, zero gradients, no NaN", async () => {
  const gpu = await testGpu();
  for (const [n, vocab] of [[1, 1], [9, 65], [2, 50257]]) {
    const run = await runAll(gpu, makeLogits(n, vocab, 3), new Uint32Array(n).fill(IGNORE_INDEX), vocab);
    assert.equal(run.count, 0);
    assert.equal(run.mean, 0);
    assert.ok(run.losses.every((v) => v === 0), "losses are 0");
    assert.ok(run.dlogits.every((v) => v === 0), "dlogits are 0 (not NaN)");
  }
});

Deno.test("ignoreIndex is an option: ignoring class 0 (a pad token) drops those rows", async () => {
  const gpu = await testGpu();
  const [n, vocab] = [20, 65];
  const logits = makeLogits(n, vocab, 31);
  const targets = makeTargets(n, vocab, 32);
  for (let i = 0; i < n; i += 3) targets[i] = 0;
  const run = await runAll(gpu, logits, targets, vocab, { ignoreIndex: 0 });
  checkAgainstReference(run, Float32Array.from(logits), targets, vocab, "ignoreIndex 0", 0);
  assert.equal(run.count, n - 7);
});

Deno.test("lossMean accumulates micro-step means when asked and is bit-identical run to run", async () => {
  const gpu = await testGpu();
  const n = 1000; // several elements per thread of the 256-wide reduction
  const lossesData = Float64Array.from(randomArray(n, 41, 5), (v) => Math.fround(Math.abs(v)));
  const targetsData = makeTargets(n, 50, 42, 7);
  const losses = gpu.tensor([n], "f32", { data: lossesData });
  const targets = gpu.tensor([n], "u32", { data: targetsData });
  const out = gpu.tensor([1], "f32", { data: [1.5] });
  const count = gpu.tensor([1], "u32");
  const first = gpu.tensor([1], "f32");
  const rec = gpu.recorder();
  lossMean(rec, { out: first, count, losses, targets });
  lossMean(rec, { out, count, losses, targets, accumulate: true });
  lossMean(rec, { out, count, losses, targets, accumulate: true });
  rec.submit();
  const { mean, count: want } = lossMeanRef(lossesData, targetsData, IGNORE_INDEX);
  assertClose(await gpu.readFloats(first), [mean], { atol: 0, rtol: 1e-6 }, "mean"); // f32 tree sum
  assertClose(await gpu.readFloats(out), [1.5 + 2 * mean], { atol: 0, rtol: 1e-6 }, "accumulated"); // f32
  assert.equal((await gpu.read(count))[0], want);
  const again = gpu.tensor([1], "f32");
  const rec2 = gpu.recorder();
  lossMean(rec2, { out: again, count, losses, targets });
  rec2.submit();
  assert.deepEqual(await gpu.read(again), await gpu.read(first), "same bits on a second run");
  for (const t of [losses, targets, out, count, first, again]) gpu.release(t);
});

Deno.test("a target that is neither ignored nor below V poisons the loss with NaN", async () => {
  const gpu = await testGpu();
  const vocab = 65;
  const targets = new Uint32Array([3, vocab, 7]);
  const run = await runAll(gpu, makeLogits(3, vocab, 51), targets, vocab);
  assert.ok(Number.isNaN(run.losses[1]), "loss of the bad row is NaN");
  assert.ok(Number.isFinite(run.losses[0]) && Number.isFinite(run.losses[2]));
  assert.ok(Number.isNaN(run.mean), "the mean shows it");
  assert.ok(run.dlogits.every(Number.isFinite), "gradients stay finite (plain softmax on the bad row)");
});

Deno.test("cross-entropy kernels refuse bad arguments with the kernel and argument named", async () => {
  const gpu = await testGpu();
  const logits = gpu.tensor([4, 10], "f32", { label: "logits" });
  const targets = gpu.tensor([4], "u32", { label: "targets" });
  const floats = gpu.tensor([4], "f32", { label: "floats" });
  const short = gpu.tensor([3], "f32", { label: "short" });
  const one = gpu.tensor([1], "u32", { label: "one" });
  const rec = gpu.recorder();
  assert.throws(
    () => crossEntropyForward(rec, { losses: floats, lse: floats, logits, targets: floats }),
    /crossEntropyForward: targets "floats" is f32, expected u32/,
  );
  assert.throws(
    () => crossEntropyForward(rec, { losses: floats, lse: short, logits, targets }),
    /crossEntropyForward: lse "short" has 3 elements, expected 4/,
  );
  assert.throws(
    () => crossEntropyForward(rec, { losses: floats, lse: floats, logits, targets, ignoreIndex: -100 }),
    /crossEntropyForward: ignoreIndex -100 is not a u32/,
  );
  assert.throws(
    () => lossMean(rec, { out: floats, count: one, losses: floats, targets }),
    /lossMean: out "floats" has 4 elements, expected 1/,
  );
  assert.throws(
    () => crossEntropyBackward(rec, { dlogits: logits, logits, lse: floats, targets, count: short }),
    /crossEntropyBackward: count "short" is f32, expected u32/,
  );
  for (const t of [logits, targets, floats, short, one]) gpu.release(t);
});
