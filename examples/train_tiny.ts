/**
 * Trains a tiny LLaMA on Tiny Shakespeare's characters and saves it to OUT_DIR/ckpt.safetensors.
 *
 *   deno run --allow-read=. --allow-write=. --allow-env examples/train_tiny.ts [OUT_DIR] [ITERATIONS]
 *
 * @module
 */
import {
  loadDataset,
  modelConfigFor,
  prepareDataset,
  requestGpu,
  runTraining,
  trainConfig,
  Trainer,
} from "@webgpu-llm/core";

const [outDir = "out-tiny", iterations = "500"] = Deno.args;
const gpu = await requestGpu();
await prepareDataset({ input: "data/shakespeare_char/input.txt", out: `${outDir}/data`, force: true });
const data = await loadDataset(`${outDir}/data`);
const config = trainConfig({
  out_dir: outDir,
  n_layer: 2,
  n_head: 2,
  n_embd: 64,
  block_size: 32,
  batch_size: 8,
  max_iters: Number(iterations),
  eval_interval: Math.max(1, Math.floor(Number(iterations) / 2)),
  eval_iters: 10,
});
const trainer = Trainer.create(gpu, config, modelConfigFor(config, data.meta.vocab_size), data);
const outcome = await runTraining(trainer, {
  onLog: (m) =>
    console.log(`iter ${m.iteration}: loss ${m.loss.toFixed(4)}, ${Math.round(m.tokensPerSecond)} tok/s`),
  onEval: (m) =>
    console.log(`step ${m.iteration}: train ${m.trainLoss.toFixed(4)}, val ${m.valLoss.toFixed(4)}`),
});
console.log(`saved ${outcome.checkpoint}`);
