/**
 * `deno task train`: nanoGPT's train.py on the WGSL kernels. Settings come from
 * the defaults, then `--config FILE`, then `--key=value` flags; with no
 * arguments it trains a small model on Tiny Shakespeare (preparing it first if
 * needed) and leaves a checkpoint that `deno task sample` finds.
 *
 * @module
 */

import { join } from "node:path";
import { requestGpu } from "../kernels/device.ts";
import { type Checkpoint, loadCheckpoint } from "../model/checkpoint.ts";
import { ConfigError, MODEL_KEYS, resolveModelConfig } from "../model/config.ts";
import { hfInitDir, hfTrainingStart } from "../model/hf.ts";
import { flopsPerToken } from "../model/model.ts";
import { parameterCounts, paramLayout } from "../model/params.ts";
import { readTokens, tokenizerMismatch } from "../model/meta.ts";
import { Trainer } from "../model/trainer.ts";
import {
  applyOverrides,
  loadConfigFile,
  modelFields,
  TRAIN_DEFAULTS,
  TRAIN_KEYS,
  type TrainConfig,
  validateTrainConfig,
} from "../model/train_config.ts";
import { measurePeak } from "./bench/peak.ts";
import { readSettings, runCli, UsageError } from "./cli.ts";
import { openDataset } from "./dataset.ts";
import { trainWithProgress } from "./training_cli.ts";

/** On a CPU adapter with no arguments: the baby model, cut short so the run takes minutes. */
const FALLBACK_QUICK_RUN = { max_iters: 200, lr_decay_iters: 200, eval_interval: 100, warmup_iters: 20 };

await runCli(async () => {
  const args = parseTrainArgs(Deno.args);
  if (args.help) {
    console.log(usage());
    return;
  }
  const gpu = await requestGpu();
  let config: TrainConfig = { ...TRAIN_DEFAULTS };
  if (args.configFile) config = await loadConfigFile(args.configFile, config);
  if (Deno.args.length === 0 && gpu.info.fallback) {
    config = applyOverrides(config, FALLBACK_QUICK_RUN, "the quick CPU run");
    console.log(
      `note: "${gpu.info.name}" is a software adapter (the CPU): training the baby model for ` +
        `${config.max_iters} iterations only; pass --config config/baby.json for nanoGPT's full 2000`,
    );
  }
  config = applyOverrides(config, args.overrides, "flags");
  validateTrainConfig(config);
  resolveModelConfig(modelFields(config, 1)); // refuse a bad shape before touching data or the GPU
  if (config.dtype === "f16" && !gpu.features.f16) {
    const why = gpu.f16Problem || `"${gpu.info.name}" has no shader-f16`;
    console.log(`note: f16 compute is unavailable (${why}); training in f32`);
    config.dtype = "f32";
  }

  const dataset = await openDataset(config.dataset);
  const resume = config.init_from === "resume"
    ? await loadCheckpoint(join(config.out_dir, "ckpt.safetensors"))
    : undefined;
  const mismatch = resume ? tokenizerMismatch(resume.tokenizer, dataset.meta) : "";
  if (mismatch) {
    throw new ConfigError(
      `The checkpoint in ${config.out_dir} does not match ${dataset.dir}: ${mismatch}; ` +
        "resume with the --dataset it was trained on",
    );
  }
  const train = await readTokens(dataset.dir, "train", dataset.meta);
  const val = await readTokens(dataset.dir, "val", dataset.meta);
  let start: Checkpoint | undefined = resume;
  const hfDir = hfInitDir(config.init_from);
  if (hfDir) {
    const { checkpoint, note } = await hfTrainingStart(hfDir, { meta: dataset.meta, val }, config);
    if (note) console.log(`note: ${note}`);
    start = checkpoint;
  }
  const modelConfig = start?.config ?? resolveModelConfig(modelFields(config, dataset.meta.vocab_size));
  if (start) {
    for (const key of MODEL_KEYS) (config as unknown as Record<string, unknown>)[key] = modelConfig[key];
  }

  const counts = parameterCounts(paramLayout(modelConfig));
  console.log(`adapter: ${gpu.info.name}${gpu.info.fallback ? " (software)" : ""}`);
  console.log(`config: ${JSON.stringify(config)}`);
  console.log(
    `parameters: ${(counts.total / 1e6).toFixed(2)}M (${
      (counts.nonEmbedding / 1e6).toFixed(2)
    }M without embeddings)`,
  );
  const peakFlops = config.peak_flops > 0 ? config.peak_flops : (await measurePeak(gpu)).fma_gflops * 1e9;
  const flopsPerIter = flopsPerToken(modelConfig, counts.nonEmbedding) * config.batch_size *
    modelConfig.block_size * config.gradient_accumulation_steps;

  const trainer = Trainer.create(gpu, config, modelConfig, { train, val, meta: dataset.meta }, start);
  if (resume) console.log(`resuming from iteration ${trainer.iteration} in ${config.out_dir}`);
  if (hfDir) console.log(`starting from the weights in ${hfDir}`);
  await trainWithProgress(trainer, {
    saves: "checkpoint",
    savePath: join(config.out_dir, "ckpt.safetensors"),
    resumed: resume !== undefined,
    softwareAdapter: gpu.info.fallback,
    resumeFlag: "--init_from=resume",
    logExtras: (m) => {
      const mfu = (flopsPerIter / (m.msPerIter / 1000)) / peakFlops;
      return { text: `, mfu ${(100 * mfu).toFixed(2)}%`, fields: { mfu } };
    },
  });
});

/** Splits the command line into a config file, `--key=value` overrides and --help. */
function parseTrainArgs(
  argv: string[],
): { configFile?: string; overrides: Record<string, string>; help: boolean } {
  const overrides: Record<string, string> = {};
  let configFile: string | undefined;
  const { settings, help } = readSettings(argv, {
    isBoolean: (key) => typeof TRAIN_DEFAULTS[key as keyof TrainConfig] === "boolean",
  });
  for (const [key, value] of settings) {
    if (key === "config") configFile = value;
    else if (!(key in TRAIN_DEFAULTS)) {
      throw new UsageError(`Unknown setting "--${key}"; known settings: config, ${TRAIN_KEYS.join(", ")}`);
    } else overrides[key] = value;
  }
  return { configFile, overrides, help };
}

function usage(): string {
  const lines = [
    "Usage: deno task train [--config FILE] [--key=value ...]",
    "",
    "Trains a LLaMA-style model. Settings (defaults shown) follow nanoGPT's names:",
  ];
  for (const key of TRAIN_KEYS) lines.push(`  --${key}=${JSON.stringify(TRAIN_DEFAULTS[key])}`);
  lines.push(
    "",
    "Config files: config/baby.json, config/shakespeare_char.json, config/shakespeare.json, config/sanguo.json",
  );
  return lines.join("\n");
}
