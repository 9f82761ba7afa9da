/**
 * `deno task eval`: the loss of a checkpoint over a whole split, in consecutive
 * windows of block_size tokens, printed as one JSON line.
 *
 * @module
 */

import { join } from "node:path";
import { requestGpu } from "../kernels/device.ts";
import { tuningLine, tuningWanted } from "../kernels/tune.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { ConfigError } from "../model/config.ts";
import { splitLoss } from "../model/evaluate.ts";
import { readTokens, tokenizerMismatch } from "../model/meta.ts";
import { parseFlags, runCli, TUNE_KERNELS_FLAG, tuneKernelsSetting, UsageError } from "./cli.ts";
import { openDataset } from "./dataset.ts";

await runCli(async () => {
  const flags = parseFlags(Deno.args, "deno task eval", {
    out_dir: { type: "string", help: "Folder of ckpt.safetensors", default: "out" },
    ckpt: { type: "string", help: "A checkpoint file (instead of <out_dir>/ckpt.safetensors)" },
    split: { type: "string", help: "train or val", default: "val" },
    dataset: { type: "string", help: "Prepared dataset (default: the one the checkpoint was trained on)" },
    batch_size: { type: "string", help: "Sequences per forward pass", default: "8" },
    tune_kernels: TUNE_KERNELS_FLAG,
  });
  if (!flags) return;
  const split = String(flags.split);
  if (split !== "train" && split !== "val") {
    throw new UsageError(`--split must be train or val, got "${split}"`);
  }
  const batchSize = Number(flags.batch_size);
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`--batch_size must be a positive integer, got "${flags.batch_size}"`);
  }
  const tune = tuneKernelsSetting(flags.tune_kernels);
  const path = (flags.ckpt as string | undefined) ?? join(String(flags.out_dir), "ckpt.safetensors");
  const checkpoint = await loadCheckpoint(path);
  const datasetName = (flags.dataset as string | undefined) ??
    String(checkpoint.training?.trainConfig.dataset ?? "shakespeare_char");
  const dataset = await openDataset(datasetName);
  const mismatch = tokenizerMismatch(checkpoint.tokenizer, dataset.meta);
  if (mismatch) {
    throw new ConfigError(`${path} does not match ${dataset.dir}: ${mismatch}; pass the matching --dataset`);
  }
  const data = await readTokens(dataset.dir, split, dataset.meta);
  const gpu = await requestGpu();
  const result = await splitLoss(gpu, checkpoint, data, {
    batchSize,
    tune: tuningWanted(tune, gpu.info.fallback),
  });
  if (result.tuning) console.error(tuningLine(result.tuning));
  console.log(JSON.stringify({ split, loss: result.loss, tokens: result.tokens }));
});
