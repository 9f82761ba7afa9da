import assert from "node:assert/strict";
import { advanceDecodeStep, sampleNextTokens } from "../kernels/draw.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/errors.ts";
import { randomArray, testGpu } from "./harness.ts";
import { drawRef } from "./reference/draw.ts";

/** Draws once from `logits` (B, V) at `step` and returns the tokens and history rows. */
async function draw(
  gpu: Gpu,
  logits: Float32Array,
  B: number,
  options: { temperature: number; seed: number; step: number; steps?: number },
): Promise<{ tokens: Uint32Array; history: Uint32Array; state: Uint32Array; position: Uint32Array }> {
  const steps = options.steps ?? options.step + 1;
  const t = {
    logits: gpu.tensor([B, logits.length / B], "f32", { data: logits }),
    tokens: gpu.tensor([B, 1], "u32", { data: new Uint32Array(B) }),
    history: gpu.tensor([steps, B], "u32", { data: new Uint32Array(steps * B).fill(7777) }),
    state: gpu.tensor([2], "u32", { data: [options.step, options.seed] }),
    position: gpu.tensor([1], "u32", { data: [41] }),
  };
  const rec = gpu.recorder();
  sampleNextTokens(rec, { ...t, temperature: options.temperature });
  advanceDecodeStep(rec, { state: t.state, position: t.position });
  rec.submit();
  const read = async (x: typeof t.tokens) => (await gpu.read(x)) as Uint32Array;
  const result = {
    tokens: await read(t.tokens),
    history: await read(t.history),
    state: await read(t.state),
    position: await read(t.position),
  };
  for (const x of Object.values(t)) gpu.release(x);
  return result;
}

Deno.test("a greedy draw is the argmax of each row, ties to the lowest id, at vocabularies off the workgroup size", async () => {
  const gpu = await testGpu();
  for (const V of [1, 5, 65, 64, 300]) {
    const B = 3;
    const logits = Float32Array.from(randomArray(B * V, V));
    if (V > 10) {
      // Row 1: equal maxima at 7 and at V - 1 (another thread's slice): 7 wins.
      logits[V + 7] = 5;
      logits[V + V - 1] = 5;
    }
    const got = await draw(gpu, logits, B, { temperature: 0, seed: 0, step: 0 });
    const want = Array.from(
      { length: B },
      (_, b) => drawRef(logits, V, b, { temperature: 0, seed: 0, step: 0 }),
    );
    assert.deepEqual([...got.tokens], want, `V=${V}`);
    if (V > 10) assert.equal(got.tokens[1], 7, "ties go to the lowest id");
  }
});

Deno.test("a temperature draw follows softmax(logits/T): the reference's noise, and the frequencies", async () => {
  const gpu = await testGpu();
  const V = 5;
  const B = 4000; // one row per sequence, all alike: 4000 draws in one dispatch
  const row = [1.0, 0.5, -0.3, 2.0, 0.0];
  const logits = Float32Array.from({ length: B * V }, (_, i) => row[i % V]);
  for (const temperature of [1, 0.5]) {
    const options = { temperature, seed: 12345, step: 3 };
    const got = await draw(gpu, logits, B, options);
    // The noise is the reference's hash: every draw agrees except, at most, a near-tie
    // between f32 and float64 scores.
    let same = 0;
    for (let b = 0; b < B; b++) if (got.tokens[b] === drawRef(logits, V, b, options)) same++;
    assert.ok(same >= B - 2, `T=${temperature}: ${same} of ${B} match the reference`);
    const weights = row.map((l) => Math.exp(l / temperature));
    const total = weights.reduce((a, b) => a + b, 0);
    for (let v = 0; v < V; v++) {
      const p = weights[v] / total;
      const f = got.tokens.filter((t) => t === v).length / B;
      // Within 4.5 standard errors: fixed seeds, so this either always holds or never.
      assert.ok(
        Math.abs(f - p) <= 4.5 * Math.sqrt(p * (1 - p) / B),
        `T=${temperature} token ${v}: ${f} vs ${p}`,
      );
    }
  }
});

Deno.test("a draw lands in history row `step`; the step and position advance; seeds and steps change the noise", async () => {
  const gpu = await testGpu();
  const [B, V] = [4, 65];
  const logits = Float32Array.from(randomArray(B * V, 3));
  const at = await draw(gpu, logits, B, { temperature: 1, seed: 9, step: 2, steps: 4 });
  assert.deepEqual([...at.history.subarray(2 * B, 3 * B)], [...at.tokens], "row 2 holds the draw");
  assert.ok(at.history.subarray(0, 2 * B).every((t) => t === 7777), "other rows untouched");
  assert.deepEqual([...at.state], [3, 9], "the step moved on, the seed stayed");
  assert.deepEqual([...at.position], [42], "the cache position moved on");
  const again = await draw(gpu, logits, B, { temperature: 1, seed: 9, step: 2 });
  assert.deepEqual([...again.tokens], [...at.tokens], "same seed and step, same draw");
  const draws = new Set<string>();
  for (let seed = 0; seed < 8; seed++) {
    draws.add((await draw(gpu, logits, B, { temperature: 1, seed, step: 0 })).tokens.join(","));
  }
  for (let step = 1; step < 8; step++) {
    draws.add((await draw(gpu, logits, B, { temperature: 1, seed: 0, step })).tokens.join(","));
  }
  assert.ok(draws.size >= 12, `15 seeds and steps gave ${draws.size} different draws of 4 tokens`);
});

Deno.test("sampleNextTokens refuses mismatched sizes, dtypes and a negative temperature", async () => {
  const gpu = await testGpu();
  const logits = gpu.tensor([2, 5], "f32", { label: "logits" });
  const tokens = gpu.tensor([2, 1], "u32", { label: "tokens" });
  const history = gpu.tensor([3, 2], "u32", { label: "history" });
  const state = gpu.tensor([2], "u32", { label: "state" });
  const badTokens = gpu.tensor([3], "u32", { label: "tokens3" });
  const floatState = gpu.tensor([2], "f32", { label: "fstate" });
  const rec = gpu.recorder();
  const refuses = (call: () => void, message: RegExp) =>
    assert.throws(call, (e: unknown) => e instanceof GpuError && message.test(e.message));
  refuses(
    () => sampleNextTokens(rec, { tokens: badTokens, history, logits, state, temperature: 1 }),
    /^sampleNextTokens: logits of 10 values are not \(B=3, V\)/,
  );
  refuses(
    () => sampleNextTokens(rec, { tokens, history, logits, state: floatState, temperature: 1 }),
    /^sampleNextTokens: state "fstate" is f32, expected u32$/,
  );
  refuses(
    () => sampleNextTokens(rec, { tokens, history, logits, state, temperature: -1 }),
    /^sampleNextTokens: temperature must be >= 0, got -1$/,
  );
  rec.finish();
  for (const t of [logits, tokens, history, state, badTokens, floatState]) gpu.release(t);
});
