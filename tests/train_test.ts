import assert from "node:assert/strict";
import { loadCheckpoint, saveCheckpoint } from "../model/checkpoint.ts";
import { resolveModelConfig } from "../model/config.ts";
import { splitLoss } from "../model/evaluate.ts";
import { readTokens } from "../model/meta.ts";
import { prepareDataset } from "../model/prepare.ts";
import { paramLayout } from "../model/params.ts";
import { Trainer, type TrainingData } from "../model/trainer.ts";
import { applyOverrides, TRAIN_DEFAULTS, type TrainConfig } from "../model/train_config.ts";
import { testGpu } from "./harness.ts";
import { runTask, spawnTrain } from "./cli.ts";

const DIR = "tests/tmp/train";

/** The first 200 kB of Tiny Shakespeare, prepared at character level. */
async function slice(): Promise<TrainingData> {
  await Deno.mkdir(DIR, { recursive: true });
  const text = await Deno.readTextFile("data/shakespeare_char/input.txt");
  await Deno.writeTextFile(`${DIR}/input.txt`, text.slice(0, 200_000));
  const { meta } = await prepareDataset({ input: `${DIR}/input.txt`, out: DIR, force: true });
  return { train: await readTokens(DIR, "train", meta), val: await readTokens(DIR, "val", meta), meta };
}

function tinyConfig(overrides: Record<string, unknown>): TrainConfig {
  return applyOverrides(TRAIN_DEFAULTS, {
    n_layer: 1,
    n_head: 4,
    n_embd: 64,
    block_size: 32,
    batch_size: 16,
    learning_rate: 1e-2,
    min_lr: 5e-4,
    warmup_iters: 20,
    weight_decay: 0,
    eval_iters: 4,
    out_dir: `${DIR}/out`,
    ...overrides,
  }, "test");
}

function modelConfigOf(config: TrainConfig, vocab: number) {
  return resolveModelConfig({
    n_layer: config.n_layer,
    n_head: config.n_head,
    n_embd: config.n_embd,
    block_size: config.block_size,
    vocab_size: vocab,
    dropout: config.dropout,
  });
}

Deno.test("a tiny model learns Tiny Shakespeare: loss from ln(65) to below 2.5", async () => {
  const gpu = await testGpu();
  const data = await slice();
  // 1024 tokens a step: this ends near 2.29 (a margin of 0.2; smaller batches ended 2.35-2.55 by seed).
  const config = tinyConfig({ max_iters: 200, lr_decay_iters: 200, batch_size: 32, eval_iters: 16 });
  const trainer = Trainer.create(gpu, config, modelConfigOf(config, data.meta.vocab_size), data);
  const first = await trainer.step({ read: true });
  assert.ok(
    Math.abs(first!.loss - Math.log(65)) < 0.15,
    `initial loss ${first!.loss} is about ln(65) = 4.17`,
  );
  for (let i = 1; i < config.max_iters; i++) await trainer.step();
  const { train, val } = await trainer.evaluate();
  assert.ok(train < 2.5, `train loss after ${config.max_iters} steps: ${train}`);
  assert.ok(val < 2.65, `val loss: ${val}`);
  trainer.release();
});

Deno.test("N steps straight equal N/2, a checkpoint, a resume and N/2 more, bit for bit (with dropout)", async () => {
  const gpu = await testGpu();
  const data = await slice();
  const config = tinyConfig({
    max_iters: 6,
    dropout: 0.1,
    block_size: 16,
    batch_size: 4,
    gradient_accumulation_steps: 2,
  });
  const modelConfig = modelConfigOf(config, data.meta.vocab_size);

  const straight = Trainer.create(gpu, config, modelConfig, data);
  for (let i = 0; i < 6; i++) await straight.step();
  const want = await straight.model.download();
  straight.release();

  const first = Trainer.create(gpu, config, modelConfig, data);
  for (let i = 0; i < 3; i++) await first.step();
  await first.evaluate(); // evaluations must not disturb training
  const path = `${DIR}/resume.safetensors`;
  await saveCheckpoint(path, await first.checkpoint());
  first.release();
  const resumed = Trainer.create(gpu, config, modelConfig, data, await loadCheckpoint(path));
  assert.equal(resumed.iteration, 3);
  for (let i = 0; i < 3; i++) await resumed.step();
  const got = await resumed.model.download();
  resumed.release();
  assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(want.buffer), "weights bit-identical");
});

Deno.test("a checkpoint round-trips config, tokenizer, weights, moments and training state", async () => {
  const gpu = await testGpu();
  const data = await slice();
  const config = tinyConfig({ max_iters: 2, block_size: 16, batch_size: 2 });
  const trainer = Trainer.create(gpu, config, modelConfigOf(config, data.meta.vocab_size), data);
  await trainer.step();
  trainer.bestValLoss = 3.25;
  const saved = await trainer.checkpoint();
  trainer.release();
  const path = `${DIR}/roundtrip.safetensors`;
  await saveCheckpoint(path, saved);
  const loaded = await loadCheckpoint(path);
  assert.deepEqual(loaded.config, saved.config);
  assert.deepEqual(loaded.tokenizer, saved.tokenizer);
  assert.deepEqual(loaded.params, saved.params);
  assert.deepEqual(loaded.moments, saved.moments);
  assert.deepEqual(loaded.training, saved.training);
  // Hugging Face names and shapes in the file.
  const layout = paramLayout(saved.config);
  assert.ok(layout.tensors.some((t) => t.name === "model.layers.0.self_attn.q_proj.weight"));
});

Deno.test("the whole-split loss of a known model: all-zero weights predict uniformly, ln(V)", async () => {
  const gpu = await testGpu();
  const data = await slice();
  const config = modelConfigOf(tinyConfig({ block_size: 16 }), data.meta.vocab_size);
  const params = new Float32Array(paramLayout(config).total);
  const { loss, tokens } = await splitLoss(gpu, { config, params }, data.val.subarray(0, 1000), {
    batchSize: 4,
  });
  assert.equal(tokens, 999);
  assert.ok(Math.abs(loss - Math.log(data.meta.vocab_size)) < 1e-5, `loss ${loss}`);
});

Deno.test("train refuses bad settings with one line naming them", async () => {
  const unknown = await runTask("train", ["--batchsize=4"]);
  assert.equal(unknown.code, 2);
  assert.match(
    unknown.stderr.trim(),
    /^error: Unknown setting "--batchsize"; known settings: config, out_dir, .*batch_size/,
  );
  const bad = await runTask("train", ["--n_embd=66", "--n_head=4", "--max_iters=0"]);
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr.trim().split("\n").length, 1, bad.stderr);
  assert.match(bad.stderr, /n_embd 66 is not divisible by n_head 4/);
  const typed = await runTask("train", ["--max_iters=lots"]);
  assert.match(typed.stderr, /Setting max_iters in flags must be a number, got "lots"/);
});

Deno.test("f16 compute trains like f32, and an overflowing loss scale skips the step and halves", async () => {
  const gpu = await testGpu();
  const data = await slice();
  const losses: Record<string, number[]> = {};
  for (const dtype of ["f32", "f16"]) {
    const config = tinyConfig({ max_iters: 60, lr_decay_iters: 60, dtype });
    const trainer = Trainer.create(gpu, config, modelConfigOf(config, data.meta.vocab_size), data);
    losses[dtype] = [];
    for (let i = 0; i < config.max_iters; i++) {
      const result = (await trainer.step({ read: true }))!;
      losses[dtype].push(result.loss);
      if (dtype === "f16") assert.equal(result.lossScale!.skipped, 0, "no overflow at the default scale");
    }
    trainer.release();
  }
  // The two runs see the same batches and agree to 4 decimals for about 12 steps (measured);
  // then an f16 rounding flipped anywhere sends them down different paths, 0.05-0.15 apart
  // by step 60 at lr 1e-2 either way. So: the same start, and both learn.
  for (let i = 0; i < 10; i++) {
    assert.ok(
      Math.abs(losses.f16[i] - losses.f32[i]) < 2e-3,
      `step ${i}: f16 ${losses.f16[i]} vs f32 ${losses.f32[i]}`,
    );
  }
  const tail = (xs: number[]) => xs.slice(-10).reduce((sum, x) => sum + x, 0) / 10;
  for (const dtype of ["f32", "f16"]) {
    assert.ok(tail(losses[dtype]) < 3.3, `${dtype} loss ${tail(losses[dtype])} (ln 65 = 4.17 at the start)`);
  }

  const config = tinyConfig({ max_iters: 2, dtype: "f16" });
  const trainer = Trainer.create(gpu, config, modelConfigOf(config, data.meta.vocab_size), data, undefined, {
    initialScale: 2 ** 40, // far past f16's 65504: the loss gradient overflows
  });
  const before = await trainer.model.download();
  const result = await trainer.step({ read: true });
  assert.deepEqual(result!.lossScale, { scale: 2 ** 40, skipped: 1 });
  assert.deepEqual(await trainer.model.download(), before, "a skipped step leaves the weights untouched");
  const next = await trainer.step({ read: true });
  assert.equal(next!.lossScale!.scale, 2 ** 39, "halved");
  trainer.release();
});

Deno.test("Ctrl-C during training saves a checkpoint that resumes, and exits cleanly", async () => {
  const out = `${DIR}/interrupted`;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const child = spawnTrain([
    ...["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--eval_iters=1"],
    ...["--max_iters=100000", "--log_interval=1", "--eval_interval=100000", `--out_dir=${out}`],
  ], "piped");
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!/iter 2:/.test(seen)) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += value;
  }
  child.kill("SIGINT");
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) seen += chunk.value;
  const status = await child.status;
  const stderr = await new Response(child.stderr).text();
  assert.equal(status.code, 0, stderr);
  const match = seen.match(/interrupted at iteration (\d+); checkpoint saved to (.+ckpt\.safetensors)/);
  assert.ok(match, seen);
  const checkpoint = await loadCheckpoint(match[2]);
  assert.equal(checkpoint.training!.iteration, Number(match[1]));
  assert.ok(checkpoint.training!.iteration >= 3);
});

Deno.test("a training step is one submit and creates no buffer, pipeline or bind group after the first", async () => {
  const gpu = await testGpu();
  const data = await slice();
  for (const overrides of [{}, { gradient_accumulation_steps: 2, dropout: 0.1 }, { dtype: "f16" }]) {
    if (overrides.dtype === "f16" && !gpu.features.f16) continue;
    const config = tinyConfig({ batch_size: 2, ...overrides });
    const trainer = Trainer.create(gpu, config, modelConfigOf(config, data.meta.vocab_size), data);
    await trainer.step({ read: true });
    const before = { ...gpu.stats };
    for (let i = 0; i < 3; i++) await trainer.step();
    const what = JSON.stringify(overrides);
    assert.equal(gpu.stats.submits - before.submits, 3, `${what}: one submit per step (no readback)`);
    await trainer.step({ read: true });
    const after = gpu.stats;
    assert.equal(after.buffers, before.buffers, `${what}: buffers created after the first step`);
    assert.equal(after.textures, before.textures, `${what}: textures created after the first step`);
    assert.equal(after.pipelines, before.pipelines, `${what}: pipelines created after the first step`);
    assert.equal(after.bindGroups, before.bindGroups, `${what}: bind groups created after the first step`);
    trainer.release();
  }
});
