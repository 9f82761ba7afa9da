import assert from "node:assert/strict";
import { type Gpu, requestGpu } from "../kernels/device.ts";
import {
  matmul,
  type MatmulArgs,
  type MatmulChoice,
  matmulKernel,
  type MatmulProblem,
} from "../kernels/matmul.ts";
import { matmulCandidates, matmulChoiceName } from "../kernels/matmul_tune.ts";
import { tunedSpeedup, tuneKernels } from "../kernels/tune.ts";
import {
  ATTENTION_PLANS,
  attentionBackward,
  attentionForward,
  type AttentionPlan,
  chooseAttentionPlan,
} from "../kernels/attention.ts";
import { attentionCandidates, GPU_ATTENTION_PLANS, planName } from "../kernels/attention_tune.ts";
import type { Recorder } from "../kernels/recorder.ts";
import type { DType, Tensor } from "../kernels/tensor.ts";
import { resolveModelConfig } from "../model/config.ts";
import { splitLoss } from "../model/evaluate.ts";
import { Generator } from "../model/generate.ts";
import type { TokenArray } from "../model/meta.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { Trainer, type TrainingData } from "../model/trainer.ts";
import { trainConfig, tunesKernels } from "../model/train_config.ts";
import { randomArray, testGpu } from "./harness.ts";

/** The first index where two outputs' bits differ, or -1 (deepEqual on large typed arrays is slow to fail). */
function firstDifference(a: Float32Array, b: Float32Array): number {
  const [x, y] = [new Uint32Array(a.buffer), new Uint32Array(b.buffer)];
  return x.findIndex((bits, i) => bits !== y[i]);
}

// On a software adapter these go to the texel kernel, except the batched product
// with K 13 (the texel kernel pads only unbatched operands), which goes tiled.
function products(gpu: Gpu) {
  const data = (shape: number[], seed: number) => ({
    data: Float32Array.from(randomArray(shape.reduce((p, d) => p * d, 1), seed)),
  });
  const t = (shape: number[], seed: number, dtype: DType = "f32") =>
    gpu.tensor(shape, dtype, data(shape, seed));
  // The += product starts from the same values every run.
  const start = Float32Array.from(randomArray(24 * 40, 9));
  const sum = gpu.tensor([24, 40], "f32", { data: start });
  const calls: MatmulArgs[] = [
    { out: gpu.tensor([40, 72]), a: t([40, 36], 1), b: t([72, 36], 2), transposeB: true },
    { out: sum, a: t([52, 24], 3), b: t([52, 40], 4), transposeA: true, accumulate: true },
    { out: gpu.tensor([2, 20, 24]), a: t([2, 20, 13], 5), b: t([13, 24], 6) },
    // A decoding step's product: 3 rows, the skinny blockings.
    { out: gpu.tensor([3, 260]), a: t([3, 36], 7), b: t([260, 36], 8), transposeB: true },
  ];
  if (gpu.features.f16) {
    calls.push({
      out: gpu.tensor([36, 44], "f16"),
      a: t([36, 28], 10, "f16"),
      b: t([44, 28], 11, "f16"),
      transposeB: true,
    });
  }
  return {
    calls,
    reset: (out: Tensor) => {
      if (out === sum) gpu.write(out, start);
    },
  };
}

/** Two blockings per product that are not its default, so a tuned run cannot be the untuned one. */
function notDefault(gpu: Gpu, p: MatmulProblem, texel: boolean): MatmulChoice[] {
  const pool: MatmulChoice[] = texel
    ? [{ texel: { rows: 8, quads: 1 } }, { texel: { rows: 4, quads: 2 } }, { texel: { rows: 8, quads: 2 } }]
    : [
      { tile: { bm: 16, bn: 16, bk: 8, tm: 4, tn: 4 } },
      { tile: { bm: 32, bn: 16, bk: 8, tm: 4, tn: 4 } },
      { tile: { bm: 16, bn: 32, bk: 8, tm: 4, tn: 4 } },
    ];
  const untuned = matmulChoiceName(matmulCandidates(gpu, p, texel)[0]);
  return pool.filter((c) => matmulChoiceName(c) !== untuned).slice(0, 2);
}

/** Two plans for heads of `headSize` that are not the default: its chunk, rows mapped otherwise. */
function otherPlans(gpu: Gpu, headSize: number): AttentionPlan[] {
  const untuned = chooseAttentionPlan(gpu, headSize);
  const { chunk, textures } = untuned;
  const pool: AttentionPlan[] = [
    { rows: 4, threads: 16, chunk, shared: false, textures },
    { rows: 2, threads: 32, chunk, shared: true },
    { rows: 8, threads: 8, chunk, shared: false },
  ];
  return pool.filter((p) => planName(p) !== planName(untuned)).slice(0, 2);
}

/** Candidates for every kernel that are not its default. */
const NOT_DEFAULT = { matmulCandidates: notDefault, attentionCandidates: otherPlans };

/** The product a call makes, as `matmul` sees it. */
function problemOf(call: MatmulArgs): MatmulProblem {
  const [transposeA, transposeB] = [call.transposeA ?? false, call.transposeB ?? false];
  const batch = call.out.shape.length === 3 ? call.out.shape[0] : 1;
  const [m, n] = call.out.shape.slice(-2);
  const k = transposeA ? call.a.shape.at(-2)! : call.a.shape.at(-1)!;
  const stride = (t: Tensor, size: number) => (t.shape.length === 3 ? size : 0);
  return {
    batch,
    m,
    n,
    k,
    transposeA,
    transposeB,
    accumulate: call.accumulate ?? false,
    aStride: stride(call.a, m * k),
    bStride: stride(call.b, k * n),
    a: call.a,
    b: call.b,
    out: call.out,
  };
}

async function run(gpu: Gpu, call: MatmulArgs, reset: (out: Tensor) => void): Promise<Float32Array> {
  reset(call.out);
  const rec = gpu.recorder();
  matmul(rec, call);
  rec.submit();
  return await gpu.readFloats(call.out);
}

Deno.test("tuning keeps a measured blocking per product, and every product gives the same bits", async () => {
  const gpu = await testGpu();
  const { calls, reset } = products(gpu);
  const before: Float32Array[] = [];
  const defaults = calls.map((call) => matmulKernel(gpu, call));
  for (const call of calls) before.push(await run(gpu, call, reset));
  // A clear recorded beside the products shows that the survey is never submitted.
  const sentinel = gpu.tensor([4], "f32", { data: [1, 2, 3, 4] });
  const record = (rec: Recorder) => {
    rec.clear(sentinel);
    for (const call of calls) matmul(rec, call);
    matmul(rec, calls[0]); // a second call of a product is counted, not tuned twice
  };
  const rows = await tuneKernels(gpu, record, { rounds: 2, matmulCandidates: notDefault });
  assert.deepEqual(Array.from(await gpu.readFloats(sentinel)), [1, 2, 3, 4]);
  assert.deepEqual(rows.map((r) => r.calls), calls.map((_, i) => (i === 0 ? 2 : 1)));
  for (const [i, call] of calls.entries()) {
    const kernel = matmulKernel(gpu, call);
    assert.equal(kernel, rows[i].choice);
    assert.notEqual(kernel, defaults[i], "a blocking of the candidates, not the default");
    assert.ok(rows[i].ms <= rows[i].defaultMs, "the fastest median, the baseline's included");
    assert.ok(
      rows[i].call.startsWith(`matmul ${defaults[i].split(" ")[0]} `),
      "tuned within its kernel family",
    );
    const after = await run(gpu, call, reset);
    assert.equal(firstDifference(after, before[i]), -1, `product ${i} changed bits with ${kernel}`);
  }
  assert.ok(tunedSpeedup(rows) >= 1);
  assert.equal(tunedSpeedup([]), 1);
  // Tuned products are not timed again; a forced blocking still wins over a tuned one.
  assert.deepEqual(await tuneKernels(gpu, record, { rounds: 1, matmulCandidates: notDefault }), []);
  const forced = { ...calls[0], texel: { rows: 16, quads: 4 } };
  assert.equal(matmulKernel(gpu, forced), "texel 16x128");
  for (const t of [sentinel, ...calls.flatMap((c) => [c.out, c.a, c.b])]) gpu.release(t);
});

Deno.test("without timestamp queries, tuning times by the wall clock", async () => {
  const gpu = await requestGpu({ timestamps: "off" });
  assert.equal(gpu.features.timestamps, false);
  const { calls, reset } = products(gpu);
  const call = calls[0];
  const before = await run(gpu, call, reset);
  const rows = await tuneKernels(gpu, (rec) => matmul(rec, call), {
    rounds: 2,
    matmulCandidates: notDefault,
  });
  assert.equal(rows.length, 1);
  assert.ok(rows[0].ms > 0 && rows[0].ms <= rows[0].defaultMs, JSON.stringify(rows[0]));
  assert.equal(matmulKernel(gpu, call), rows[0].choice);
  assert.equal(firstDifference(await run(gpu, call, reset), before), -1);
  gpu.device.destroy();
});

Deno.test("every candidate, tiled or texel, gives the untuned kernel's bits", async () => {
  const gpu = await testGpu();
  const { calls, reset } = products(gpu);
  for (const [i, call] of calls.entries()) {
    const want = await run(gpu, call, reset);
    const p = problemOf(call);
    const routes = matmulKernel(gpu, call).startsWith("texel") ? [true, false] : [false];
    for (const texel of routes) {
      for (const choice of matmulCandidates(gpu, p, texel)) {
        const forced = "texel" in choice ? { texel: choice.texel } : { tile: choice.tile, texel: false };
        const got = await run(gpu, { ...call, ...forced }, reset);
        assert.equal(
          firstDifference(got, want),
          -1,
          `product ${i} changed bits with ${matmulChoiceName(choice)}`,
        );
      }
    }
  }
  for (const t of calls.flatMap((c) => [c.out, c.a, c.b])) gpu.release(t);
});

Deno.test("every attention plan tuning tries on a GPU gives the default GPU plan's bits", async () => {
  const gpu = await testGpu();
  const [B, T, NH, NKV, HS] = [2, 37, 4, 2, 16];
  const width = (NH + 2 * NKV) * HS;
  const qkv = gpu.tensor([B, T, width], "f32", {
    data: Float32Array.from(randomArray(B * T * width, 21, 2)),
  });
  const dout = gpu.tensor([B, T, NH * HS], "f32", {
    data: Float32Array.from(randomArray(B * T * NH * HS, 22)),
  });
  const tensors = [qkv, dout];
  const runPlan = async (plan: AttentionPlan) => {
    const [out, lse, dqkv] = [gpu.tensor([B, T, NH * HS]), gpu.tensor([B, NH, T]), gpu.tensor([B, T, width])];
    tensors.push(out, lse, dqkv);
    const rec = gpu.recorder();
    attentionForward(rec, { out, lse, qkv, nHead: NH, nKvHead: NKV, plan });
    attentionBackward(rec, { dqkv, dout, out, lse, qkv, nHead: NH, nKvHead: NKV, plan });
    rec.submit();
    return [await gpu.readFloats(out), await gpu.readFloats(lse), await gpu.readFloats(dqkv)];
  };
  const want = await runPlan(ATTENTION_PLANS.gpu);
  for (const plan of GPU_ATTENTION_PLANS) {
    const got = await runPlan(plan);
    for (const [i, name] of ["out", "lse", "dqkv"].entries()) {
      assert.equal(firstDifference(got[i], want[i]), -1, `${name} changed bits with ${planName(plan)}`);
    }
  }
  for (const t of tensors) gpu.release(t);
});

Deno.test("the default candidates start with the untuned blocking and never repeat", async () => {
  const gpu = await testGpu();
  const a = gpu.tensor([64, 32]);
  const b = gpu.tensor([48, 32]);
  const out = gpu.tensor([64, 48]);
  const p = {
    batch: 1,
    m: 64,
    n: 48,
    k: 32,
    transposeA: false,
    transposeB: true,
    accumulate: false,
    aStride: 0,
    bStride: 0,
    a,
    b,
    out,
  };
  for (const texel of [true, false]) {
    const names = matmulCandidates(gpu, p, texel).map(matmulChoiceName);
    assert.equal(
      names[0],
      matmulKernel(gpu, { out, a, b, transposeB: true, ...(texel ? {} : { texel: false }) }),
    );
    assert.equal(new Set(names).size, names.length);
    assert.ok(names.length >= 4, names.join(", "));
  }
  // A software adapter keeps its attention plan (compiling others takes longer than they save).
  assert.equal(attentionCandidates(gpu, 64).length, gpu.info.fallback ? 1 : 1 + GPU_ATTENTION_PLANS.length);
  // A decoding step's few rows keep the texel kernel's own blocking, and try tiles of 4 rows on a GPU.
  assert.equal(matmulCandidates(gpu, { ...p, m: 3 }, true).length, 1);
  const skinny = matmulCandidates(gpu, { ...p, m: 3 }, false);
  assert.ok(skinny.some((c) => "tile" in c && c.tile.bm === 4), skinny.map(matmulChoiceName).join(", "));
  for (const t of [a, b, out]) gpu.release(t);
});

Deno.test("a tuned training run equals an untuned one bit for bit, in f32 and f16", async () => {
  const gpu = await testGpu();
  const rng = new Rng(3);
  const tokens = (n: number): TokenArray => Uint16Array.from({ length: n }, () => rng.nextU32() % 65);
  const data: TrainingData = {
    train: tokens(4000),
    val: tokens(1000),
    meta: {
      tokenizer: "char",
      vocab_size: 65,
      dtype: "uint16",
      eot_id: null,
      train_tokens: 4000,
      val_tokens: 1000,
      val_fraction: 0.2,
    },
  };
  const shape = { n_layer: 1, n_head: 2, n_embd: 32, block_size: 16, dropout: 0.1 };
  const model = resolveModelConfig({ ...shape, vocab_size: 65 });
  for (const dtype of gpu.features.f16 ? ["f32", "f16"] : ["f32"]) {
    const config = trainConfig({ ...shape, batch_size: 2, dtype });
    const train = async (tune: boolean) => {
      const trainer = Trainer.create(gpu, config, model, data);
      const rows = tune ? await trainer.tuneKernels({ rounds: 1, ...NOT_DEFAULT }) : [];
      for (let i = 0; i < 3; i++) await trainer.step();
      const weights = await trainer.model.download();
      trainer.release();
      return { weights, rows };
    };
    const plain = await train(false);
    const tuned = await train(true);
    // Every distinct product and attention pass of the forward and backward, each on a choice not its default.
    assert.ok(tuned.rows.length >= 11, `${dtype}: ${tuned.rows.length} calls tuned`);
    for (const pass of ["forward", "backward"]) {
      assert.ok(
        tuned.rows.some((r) => r.call.startsWith(`attention ${pass} `)),
        `${dtype}: attention ${pass} tuned`,
      );
    }
    assert.ok(tuned.rows.every((r) => r.candidates === 2));
    assert.equal(firstDifference(tuned.weights, plain.weights), -1, `${dtype}: weights bit-identical`);
  }
});

Deno.test("a tuned generator draws the tokens of an untuned one", async () => {
  const gpu = await testGpu();
  const config = resolveModelConfig({
    n_layer: 1,
    n_head: 4,
    n_kv_head: 2,
    n_embd: 32,
    block_size: 12,
    vocab_size: 23,
  });
  const params = initialParameters(paramLayout(config), config, new Rng(5)).map((x) => 10 * x);
  const generator = new Generator(gpu, { config, params }, { batchSize: 2 });
  const draw = async () => {
    const out: (number | undefined)[][] = [];
    const contexts = [[1, 2, 3], [4, 5, 6]];
    for (const options of [{ temperature: 0 }, { temperature: 1 }, { temperature: 1, topK: 5 }]) {
      const steps = generator.generate(contexts, { maxNewTokens: 20, ...options }, new Rng(9));
      for await (const { tokens } of steps) out.push(tokens);
    }
    return out;
  };
  const plain = await draw();
  const rows = await generator.tuneKernels({ rounds: 1, ...NOT_DEFAULT });
  // The prefill's products and attention and the head of a decoding step at least (its layers may be fused on a CPU);
  // shapes of their own, so the tests above have tuned none of them.
  assert.ok(rows.length >= 5, `${rows.length} calls tuned: ${rows.map((r) => r.call).join("; ")}`);
  assert.ok(rows.some((r) => r.call.startsWith("attention forward ")));
  assert.deepEqual(await draw(), plain);
  generator.release();
});

Deno.test("a tuned evaluation gives the untuned loss", async () => {
  const gpu = await testGpu();
  // Shapes of its own (3 sequences of 12), so the tests above have tuned none of its calls.
  const config = resolveModelConfig({ n_layer: 1, n_head: 2, n_embd: 32, block_size: 12, vocab_size: 30 });
  const model = { config, params: initialParameters(paramLayout(config), config, new Rng(4)) };
  const rng = new Rng(6);
  const data = Uint16Array.from({ length: 500 }, () => rng.nextU32() % 30);
  const plain = await splitLoss(gpu, model, data, { batchSize: 3 });
  const tuned = await splitLoss(gpu, model, data, { batchSize: 3, tune: { rounds: 1, ...NOT_DEFAULT } });
  assert.equal(plain.tuning, null);
  assert.ok(tuned.tuning !== null && tuned.tuning.calls >= 5, JSON.stringify(tuned.tuning));
  assert.equal(tuned.loss, plain.loss);
});

Deno.test("tune_kernels: on, off, or auto (GPUs only); anything else is refused", () => {
  const on = trainConfig({ tune_kernels: "on" });
  const off = trainConfig({ tune_kernels: "off" });
  const auto = trainConfig();
  assert.equal(auto.tune_kernels, "auto");
  assert.deepEqual([true, false].map((software) => tunesKernels(auto, software)), [false, true]);
  assert.deepEqual([true, false].map((software) => tunesKernels(on, software)), [true, true]);
  assert.deepEqual([true, false].map((software) => tunesKernels(off, software)), [false, false]);
  assert.throws(
    () => trainConfig({ tune_kernels: "yes" }),
    /^ConfigError: tune_kernels must be auto, on or off, got "yes"$/,
  );
});
