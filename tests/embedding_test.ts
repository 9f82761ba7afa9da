import assert from "node:assert/strict";
import type { Gpu } from "../kernels/device.ts";
import {
  buildEmbeddingIndex,
  embeddingBackward,
  embeddingForward,
  EmbeddingIndexBuffer,
} from "../kernels/embedding.ts";
import { assertClose, finiteDifferences, randomArray, testGpu } from "./harness.ts";
import { embeddingBackwardRef, embeddingRef } from "./reference/embedding.ts";

/** N tokens below `vocab`, drawn unevenly so some ids repeat often and some never occur. */
function makeTokens(n: number, vocab: number, seed: number): Uint32Array {
  return Uint32Array.from(randomArray(n, seed, 1), (v) => Math.min(vocab - 1, Math.floor(v * v * vocab)));
}

// (N, V, C): degenerate; C not a multiple of 4 (scalar path); vec4 path with one
// chunk of 64 lanes; C = 260 (65 vec4 columns: a second, nearly empty chunk);
// V = 5 with N = 200 (buckets of ~40 repeated tokens).
const SHAPES: [number, number, number][] = [[1, 1, 1], [7, 13, 7], [33, 65, 64], [50, 11, 260], [200, 5, 12]];

Deno.test("embedding forward gathers the token rows (f32 and f16)", async () => {
  const gpu = await testGpu();
  for (const [n, vocab, channels] of SHAPES) {
    const tokensData = makeTokens(n, vocab, n + vocab);
    const weightData = randomArray(vocab * channels, channels, 2);
    const tokens = gpu.tensor([n], "u32", { data: tokensData });
    const weight = gpu.tensor([vocab, channels], "f32", { data: weightData });
    const out = gpu.tensor([n, channels], "f32");
    const rec = gpu.recorder();
    embeddingForward(rec, { out, tokens, weight });
    rec.submit();
    const want = embeddingRef(tokensData, Float32Array.from(weightData), channels);
    assertClose(await gpu.read(out), want, { atol: 0, rtol: 0 }, `forward ${n}x${vocab}x${channels}`); // a copy: exact
    const scalar = gpu.recorder(); // the bench's scalar variant (vec4 applies where C % 4 == 0)
    gpu.write(out, new Float32Array(n * channels));
    embeddingForward(scalar, { out, tokens, weight, vec4: false });
    scalar.submit();
    assertClose(await gpu.read(out), want, { atol: 0, rtol: 0 }, "scalar forward"); // a copy: exact
    if (gpu.features.f16) {
      const weight16 = gpu.tensor([vocab, channels], "f16", { data: weightData });
      const out16 = gpu.tensor([n, channels], "f16");
      const rec16 = gpu.recorder();
      embeddingForward(rec16, { out: out16, tokens, weight: weight16 });
      embeddingForward(rec16, { out, tokens, weight: weight16 });
      rec16.submit();
      const want16 = embeddingRef(tokensData, Float64Array.from(weightData, Math.f16round), channels);
      assertClose(await gpu.read(out16), want16, { atol: 0, rtol: 0 }, "f16 -> f16"); // a copy: exact
      assertClose(await gpu.read(out), want16, { atol: 0, rtol: 0 }, "f16 -> f32"); // widening: exact
      gpu.release(weight16);
      gpu.release(out16);
    }
    for (const t of [tokens, weight, out]) gpu.release(t);
  }
});

/** One backward into a dweight holding `dweight0`; returns dweight read back. */
async function backward(
  gpu: Gpu,
  tokensData: Uint32Array,
  doutData: Float64Array,
  dweight0: Float64Array,
  vocab: number,
  channels: number,
  dtype: "f32" | "f16" = "f32",
  vec4 = true,
): Promise<Float32Array> {
  const n = tokensData.length;
  const index = new EmbeddingIndexBuffer(gpu, { n, vocabSize: vocab });
  const dout = gpu.tensor([n, channels], dtype, { data: doutData });
  const dweight = gpu.tensor([vocab, channels], dtype, { data: dweight0 });
  index.update(tokensData);
  const rec = gpu.recorder();
  embeddingBackward(rec, { dweight, dout, index, vec4 });
  rec.submit();
  const result = await gpu.readFloats(dweight);
  index.release();
  gpu.release(dout);
  gpu.release(dweight);
  return result;
}

Deno.test("embedding backward adds the summed rows of repeated tokens into dweight", async () => {
  const gpu = await testGpu();
  for (const [n, vocab, channels] of SHAPES) {
    const tokens = makeTokens(n, vocab, 3 * n + vocab);
    const dout = Float64Array.from(randomArray(n * channels, 7, 1), Math.fround);
    const dweight0 = Float64Array.from(randomArray(vocab * channels, 8, 1), Math.fround);
    const want = embeddingBackwardRef(tokens, dout, dweight0, channels);
    for (const vec4 of [true, false]) { // vec4 applies where C % 4 == 0; false is the bench's scalar variant
      const got = await backward(gpu, tokens, dout, dweight0, vocab, channels, "f32", vec4);
      // Sums of up to ~50 f32 terms of size ≤ 1: a few ulps of the running sum.
      const what = `backward ${n}x${vocab}x${channels} vec4=${vec4}`;
      assertClose(got, want, { atol: 1e-5, rtol: 1e-6 }, what); // |err| <= 1e-5 + 1e-6·|ref|
    }
  }
});

Deno.test("embedding backward in f16 accumulates in f32 and rounds once", async () => {
  const gpu = await testGpu();
  if (!gpu.features.f16) return;
  const [n, vocab, channels] = [200, 5, 12];
  const tokens = makeTokens(n, vocab, 9);
  const dout = Float64Array.from(randomArray(n * channels, 10, 1), Math.f16round);
  const dweight0 = Float64Array.from(randomArray(vocab * channels, 11, 1), Math.f16round);
  const got = await backward(gpu, tokens, dout, dweight0, vocab, channels, "f16");
  const want = embeddingBackwardRef(tokens, dout, dweight0, channels);
  // f32 sums rounded once to f16: at most 2^-11 ≈ 4.9e-4 of |ref|, plus spacing near zero.
  assertClose(got, want, { atol: 1e-3, rtol: 1e-3 }, "f16 backward"); // |err| <= 1e-3 + 1e-3·|ref|
});

Deno.test("embedding backward matches finite differences of the float64 forward", async () => {
  const gpu = await testGpu();
  const [vocab, channels] = [4, 3];
  const tokens = new Uint32Array([2, 0, 2, 2, 3]); // token 1 unused, token 2 three times
  const weight = randomArray(vocab * channels, 12, 1);
  const probe = randomArray(tokens.length * channels, 13, 1); // f = Σ probe · embedding(weight)
  const f = (w: Float64Array) => embeddingRef(tokens, w, channels).reduce((s, v, i) => s + v * probe[i], 0);
  const numeric = finiteDifferences(f, weight, 1e-4);
  const analytic = embeddingBackwardRef(tokens, probe, new Float64Array(vocab * channels), channels);
  assertClose(analytic, numeric, { atol: 1e-9, rtol: 1e-9 }, "reference vs finite differences"); // f is linear
  const got = await backward(gpu, tokens, probe, new Float64Array(vocab * channels), vocab, channels);
  assertClose(got, numeric, { atol: 1e-6, rtol: 1e-6 }, "GPU vs finite differences"); // f32 inputs and sums
});

Deno.test("embedding backward is bit-identical run to run, step after step, allocating nothing", async () => {
  const gpu = await testGpu();
  const [n, vocab, channels] = [1000, 7, 100]; // buckets of ~140 positions
  const index = new EmbeddingIndexBuffer(gpu, { n, vocabSize: vocab });
  const dout = gpu.tensor([n, channels], "f32", { data: randomArray(n * channels, 14, 1) });
  const dweight0 = randomArray(vocab * channels, 15, 1);
  const runs: Uint32Array[] = [];
  for (let run = 0; run < 2; run++) {
    const dweight = gpu.tensor([vocab, channels], "f32", { data: dweight0 });
    const buffers = gpu.stats.buffers;
    for (const seed of [16, 17]) { // two steps into one gradient, as micro-steps do
      index.update(makeTokens(n, vocab, seed));
      const rec = gpu.recorder();
      embeddingBackward(rec, { dweight, dout, index });
      rec.submit();
    }
    assert.equal(gpu.stats.buffers, buffers, "no buffer allocated per step");
    runs.push(new Uint32Array((await gpu.readFloats(dweight)).buffer));
    gpu.release(dweight);
  }
  assert.deepEqual(runs[0], runs[1], "same bits");
  const doutData = await gpu.readFloats(dout);
  const once = embeddingBackwardRef(
    makeTokens(n, vocab, 16),
    doutData,
    Float32Array.from(dweight0),
    channels,
  );
  const twice = embeddingBackwardRef(makeTokens(n, vocab, 17), doutData, once, channels);
  const got = new Float32Array(runs[0].buffer);
  assertClose(got, twice, { atol: 1e-4, rtol: 1e-6 }, "two steps"); // ~300 f32 terms of size ≤ 1
  index.release();
  gpu.release(dout);
});

Deno.test("buildEmbeddingIndex groups positions by token, ascending within a token", () => {
  const index = buildEmbeddingIndex(new Uint32Array([5, 2, 5, 7, 2, 5]), 8);
  assert.equal(index.unique, 3);
  assert.equal(index.largest, 3);
  assert.deepEqual([...index.tokenIds], [5, 2, 7]);
  assert.deepEqual([...index.offsets], [0, 3, 5, 6]);
  assert.deepEqual([...index.positions], [0, 2, 5, 1, 4, 3]);
  const empty = buildEmbeddingIndex(new Uint32Array(0), 8);
  assert.equal(empty.unique, 0);
  assert.deepEqual([...empty.offsets], [0]);
});

Deno.test("an out-of-range token is refused with the token and its position named", async () => {
  assert.throws(
    () => buildEmbeddingIndex(new Uint32Array([1, 2, 9, 3]), 8),
    /embedding index: token 9 at position 2 is not below the vocab size 8/,
  );
  const gpu = await testGpu();
  const index = new EmbeddingIndexBuffer(gpu, { n: 4, vocabSize: 8 });
  index.update(new Uint32Array([1, 1, 2, 3]));
  assert.throws(() => index.update(new Uint32Array([1, 2, 3, 8])), /token 8 at position 3/);
  assert.throws(() => index.update(new Uint32Array([1, 2])), /got 2 tokens, expected 4/);
  if (gpu.info.fallback) { // lavapipe ends shader loops after 65535 iterations: refuse, don't truncate
    const big = new EmbeddingIndexBuffer(gpu, { n: 65536, vocabSize: 8 });
    assert.throws(() => big.update(new Uint32Array(65536).fill(3)), /a token fills 65536 of 65536 positions/);
    big.update(new Uint32Array(65536).fill(3).fill(4, 0, 1));
    big.release();
  }
  assert.equal(index.unique, 3, "a refused update leaves the previous index");
  // ... and the previous index still drives the backward correctly.
  const dout = gpu.tensor([4, 2], "f32", { data: [1, 2, 3, 4, 5, 6, 7, 8] });
  const dweight = gpu.tensor([8, 2], "f32");
  const rec = gpu.recorder();
  embeddingBackward(rec, { dweight, dout, index });
  rec.submit();
  assert.deepEqual([...await gpu.read(dweight)], [0, 0, 4, 6, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
  // The forward cannot throw from the GPU; it writes a zero row instead of reading out of bounds.
  const tokens = gpu.tensor([2], "u32", { data: [8, 1] });
  const weight = gpu.tensor([8, 2], "f32", { data: Float32Array.from({ length: 16 }, (_, i) => i + 1) });
  const out = gpu.tensor([2, 2], "f32");
  const rec2 = gpu.recorder();
  embeddingForward(rec2, { out, tokens, weight });
  rec2.submit();
  assert.deepEqual([...await gpu.read(out)], [0, 0, 3, 4]);
  index.release();
  for (const t of [dout, dweight, tokens, weight, out]) gpu.release(t);
});

Deno.test("embedding kernels refuse bad arguments with the kernel and argument named", async () => {
  const gpu = await testGpu();
  const index = new EmbeddingIndexBuffer(gpu, { n: 4, vocabSize: 8 });
  const weight = gpu.tensor([8, 3], "f32", { label: "wte" });
  const wrongVocab = gpu.tensor([9, 3], "f32", { label: "dwte9" });
  const out = gpu.tensor([4, 3], "f32", { label: "x" });
  const shortOut = gpu.tensor([4, 2], "f32", { label: "x2" });
  const floatTokens = gpu.tensor([4], "f32", { label: "ftok" });
  const tokens = gpu.tensor([4], "u32", { label: "tok" });
  const rec = gpu.recorder();
  assert.throws(
    () => embeddingForward(rec, { out, tokens: floatTokens, weight }),
    /embeddingForward: tokens "ftok" is f32, expected u32/,
  );
  assert.throws(
    () => embeddingForward(rec, { out: shortOut, tokens, weight }),
    /embeddingForward: out "x2" has 8 elements, expected 12/,
  );
  assert.throws(
    () => embeddingForward(rec, { out, tokens: floatTokens, weight: out.reshape([12]) }),
    /embeddingForward: weight "x" has shape \[12\], expected \[V, C\]/,
  );
  assert.throws(
    () => embeddingBackward(rec, { dweight: wrongVocab, dout: out, index }),
    /embeddingBackward: dweight "dwte9" has 9 rows but the index was built for vocab size 8/,
  );
  assert.throws(
    () => embeddingBackward(rec, { dweight: weight, dout: shortOut, index }),
    /embeddingBackward: dout "x2" has 8 elements, expected 12/,
  );
  index.release();
  for (const t of [weight, wrongVocab, out, shortOut, floatTokens, tokens]) gpu.release(t);
});
