import assert from "node:assert/strict";
import { requestGpu } from "../kernels/device.ts";
import { DeviceLostError } from "../kernels/errors.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import { prepareDataset } from "../model/prepare.ts";
import { loadDataset } from "../model/meta.ts";
import { Trainer, type TrainingData } from "../model/trainer.ts";
import { modelConfigFor, trainConfig } from "../model/train_config.ts";
import { runTraining, TrainingFault } from "../model/train_loop.ts";
import { runTask } from "./cli.ts";
import { testGpu } from "./harness.ts";

const DIR = "tests/tmp/fault";

async function data(): Promise<TrainingData> {
  await Deno.mkdir(DIR, { recursive: true });
  const text = await Deno.readTextFile("data/shakespeare_char/input.txt");
  await Deno.writeTextFile(`${DIR}/input.txt`, text.slice(0, 50_000));
  await prepareDataset({ input: `${DIR}/input.txt`, out: `${DIR}/data`, force: true });
  return await loadDataset(`${DIR}/data`);
}

const TINY = {
  n_layer: 1,
  n_head: 2,
  n_embd: 32,
  block_size: 16,
  batch_size: 4,
  eval_iters: 2,
  eval_interval: 1000,
  log_interval: 1,
  out_dir: `${DIR}/out`,
};

/** A trainer resumed from the checkpoint in `TINY.out_dir`, with a NaN planted in its first weight. */
async function poisoned(settings: Record<string, unknown>, training: TrainingData): Promise<Trainer> {
  const gpu = await testGpu();
  const checkpoint = await loadCheckpoint(`${TINY.out_dir}/ckpt.safetensors`);
  const config = trainConfig({ ...TINY, ...settings });
  const trainer = Trainer.create(gpu, config, checkpoint.config, training, checkpoint);
  const params = checkpoint.params.slice();
  params[0] = NaN; // the first embedding row's first value: any batch with token 0 ("\n") reads it
  trainer.model.upload(params);
  return trainer;
}

Deno.test("a NaN loss stops training at the iteration it happened, naming it, and the checkpoint stays as it was", async () => {
  const gpu = await testGpu();
  const training = await data();
  const config = trainConfig({ ...TINY, max_iters: 3 });
  const first = Trainer.create(gpu, config, modelConfigFor(config, training.meta.vocab_size), training);
  await runTraining(first); // saves the good checkpoint at iteration 3
  first.release();
  const before = await Deno.readFile(`${TINY.out_dir}/ckpt.safetensors`);

  const trainer = await poisoned({ max_iters: 10 }, training);
  const error = await runTraining(trainer).then(() => null, (e) => e);
  assert.ok(error instanceof TrainingFault, `expected a TrainingFault, got ${error}`);
  assert.equal(error.iteration, 3);
  assert.match(
    error.message,
    /NaN or infinite at iteration 3; .*keeps the last good checkpoint.*--skip_nonfinite/,
  );
  assert.deepEqual(
    await Deno.readFile(`${TINY.out_dir}/ckpt.safetensors`),
    before,
    "the checkpoint is untouched",
  );
  trainer.release();

  const skipping = await poisoned({ max_iters: 6, skip_nonfinite: true }, training);
  const logs: number[] = [];
  await runTraining(skipping, { onLog: (m) => void logs.push(m.nonFinite.steps) });
  assert.deepEqual(logs, [1, 2, 3], "every step is skipped and counted; the run goes on");
  skipping.release();
});

Deno.test("a learning rate far too high is reported as divergence or a non-finite loss, by the CLI in one line", async () => {
  const result = await runTask("train", [
    ...Object.entries({ ...TINY, out_dir: `${DIR}/diverge` }).map(([key, value]) => `--${key}=${value}`),
    "--learning_rate=1000",
    "--warmup_iters=0",
    "--max_iters=60",
    "--dataset=tests/tmp/fault/data",
  ]);
  assert.equal(result.code, 1, result.stdout + result.stderr);
  const error = result.stderr.trim().split("\n").filter((line) => line.startsWith("error:"));
  assert.equal(error.length, 1, result.stderr);
  assert.match(error[0], /diverged at iteration \d+|NaN or infinite at iteration \d+/);
  assert.match(error[0], /lower learning_rate \(now 1000\)/);
});

Deno.test("a loss one nat worse than uniform guessing and than the start is divergence; nothing is saved", async () => {
  const losses = [4.1, 3.0, 2.5, 6.0, 2.0];
  let saves = 0;
  const run = {
    config: trainConfig({ ...TINY, max_iters: 5 }),
    model: { config: { vocab_size: 65 } as ModelConfig },
    iteration: 0,
    bestValLoss: Infinity,
    tokensPerStep: 64,
    learningRate: () => 1e-3,
    step() {
      const loss = losses[this.iteration++];
      return Promise.resolve({ loss, gradNorm: 1, lr: 1e-3, nonFinite: { steps: 0, firstIteration: null } });
    },
    evaluate: () => Promise.resolve({ train: 4, val: 4 }),
    save: () => Promise.resolve(`${saves++}`),
  };
  const error = await runTraining(run).then(() => null, (e) => e);
  assert.ok(error instanceof TrainingFault);
  assert.equal(error.iteration, 3);
  assert.match(error.message, /diverged at iteration 3: loss 6\.000 is above 5\.174/);
  assert.equal(saves, 0);
});

Deno.test("a device lost mid-run ends training with DeviceLostError; the checkpoint saved before stays whole", async () => {
  const gpu = await requestGpu(); // its own device: this test destroys it
  const training = await data();
  const config = trainConfig({
    ...TINY,
    out_dir: `${DIR}/lost`,
    max_iters: 50,
    eval_interval: 2,
    always_save_checkpoint: true,
  });
  const trainer = Trainer.create(gpu, config, modelConfigFor(config, training.meta.vocab_size), training);
  let saved = -1;
  const outcome = runTraining(trainer, {
    onEval: (m) => {
      if (m.saved) saved = m.iteration;
    },
    onStep: (iteration) => {
      if (iteration === 5) gpu.device.destroy(); // what a driver reset looks like to WebGPU
    },
  });
  await assert.rejects(outcome, DeviceLostError);
  assert.ok(saved >= 2, "a checkpoint was saved before the loss");
  const checkpoint = await loadCheckpoint(`${DIR}/lost/ckpt.safetensors`);
  assert.equal(checkpoint.training!.iteration, saved);
});
