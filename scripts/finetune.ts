/**
 * `deno task finetune`: LoRA fine-tuning of a trained checkpoint. The base is
 * frozen; low-rank adapters on the chosen projections are trained with the
 * usual loop and saved on their own (`<out_dir>/adapter_model.safetensors`,
 * PEFT names). `--merge` folds an adapter into its base and writes a full
 * checkpoint.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { requestGpu } from "../kernels/device.ts";
import { formatBytes, GpuOutOfMemoryError } from "../kernels/errors.ts";
import { type Checkpoint, loadCheckpoint, saveCheckpoint } from "../model/checkpoint.ts";
import { MODEL_KEYS, type ModelConfig } from "../model/config.ts";
import {
  LORA_DEFAULTS,
  type LoraConfig,
  mergeLora,
  parseLoraTargets,
  validateLoraConfig,
} from "../model/lora.ts";
import { checkSameTokenizer, encodeText } from "../model/lora_data.ts";
import { checkAdapterBase, loadLoraAdapter } from "../model/lora_file.ts";
import { loadLoraState } from "../model/lora_state.ts";
import { LORA_FILES, LoraTrainer } from "../model/lora_trainer.ts";
import { type DatasetMeta, readTokens, type TokenArray } from "../model/meta.ts";
import { checkDatasetVocabulary, hfInitDir, loadHfModel } from "../model/hf.ts";
import {
  isTokenizerName,
  type Tokenizer,
  tokenizerFromMeta,
  type TokenizerName,
} from "../model/tokenizer.ts";
import { Trainer, type TrainingData } from "../model/trainer.ts";
import {
  applyOverrides,
  loadConfigFile,
  TRAIN_DEFAULTS,
  TRAIN_KEYS,
  type TrainConfig,
  validateTrainConfig,
} from "../model/train_config.ts";
import { readSettings, runCli, UsageError } from "./cli.ts";
import { openDataset } from "./dataset.ts";
import { trainWithProgress } from "./training_cli.ts";

/** Fine-tuning defaults: short runs, no weight decay (PEFT's), results in out-lora. */
const FINETUNE_DEFAULTS: Readonly<TrainConfig> = Object.freeze(applyOverrides(TRAIN_DEFAULTS, {
  out_dir: "out-lora",
  max_iters: 200,
  lr_decay_iters: 200,
  warmup_iters: 10,
  eval_interval: 50,
  weight_decay: 0,
  dataset: "",
}, "finetune defaults"));

/** Flags of this script beside the training settings. */
const OWN_FLAGS: Record<string, { boolean: boolean; help: string }> = {
  init_from: {
    boolean: false,
    help: "The base: a checkpoint, or hf:DIR for a Hugging Face LLaMA folder (--merge: a checkpoint)",
  },
  tokenizer: {
    boolean: false,
    help: "With hf:DIR: gpt2, cl100k_base or o200k_base instead of the folder's tokenizer.json",
  },
  block_size: {
    boolean: false,
    help: "Tokens per training sequence (default: the base's, at most 256 for hf:DIR)",
  },
  lora_rank: { boolean: false, help: `Rank r of the adapters (default ${LORA_DEFAULTS.rank})` },
  lora_alpha: {
    boolean: false,
    help: `Scale numerator: updates are scaled by alpha/r (default ${LORA_DEFAULTS.alpha})`,
  },
  lora_dropout: { boolean: false, help: `Dropout on the adapters' input (default ${LORA_DEFAULTS.dropout})` },
  lora_targets: {
    boolean: false,
    help: `Projections to adapt, among q,k,v,o,gate,up,down (default ${LORA_DEFAULTS.targets.join(",")})`,
  },
  resume: { boolean: true, help: "Continue the run saved in --out_dir" },
  compare_memory: {
    boolean: true,
    help: "Also allocate a full fine-tune once to report its GPU memory (default true)",
  },
  merge: { boolean: true, help: "Merge --lora into --init_from and write --out" },
  lora: { boolean: false, help: "With --merge: the adapter file" },
  out: { boolean: false, help: "With --merge: the merged checkpoint to write" },
  config: { boolean: false, help: "A JSON file of training settings" },
};

await runCli(async () => {
  const args = parseArgs(Deno.args);
  if (args.help) {
    console.log(usage());
    return;
  }
  const own = args.own;
  const basePath = own.init_from;
  if (typeof basePath !== "string") {
    throw new UsageError("Name the base checkpoint: --init_from out/ckpt.safetensors (see --help)");
  }
  if (own.merge === true) {
    if (hfInitDir(basePath)) {
      throw new UsageError(
        "--merge writes a checkpoint of ours and needs one as its base; for a Hugging Face base, " +
          "sample with deno task sample --init_from hf:DIR --lora ADAPTER",
      );
    }
    return await merge(basePath, own);
  }

  let config: TrainConfig = { ...FINETUNE_DEFAULTS };
  if (typeof own.config === "string") config = await loadConfigFile(own.config, config);
  config = applyOverrides(config, args.overrides, "flags");
  validateTrainConfig(config);
  const lora: LoraConfig = {
    rank: numberFlag(own, "lora_rank", LORA_DEFAULTS.rank),
    alpha: numberFlag(own, "lora_alpha", LORA_DEFAULTS.alpha),
    dropout: numberFlag(own, "lora_dropout", LORA_DEFAULTS.dropout),
    targets: typeof own.lora_targets === "string"
      ? parseLoraTargets(own.lora_targets)
      : LORA_DEFAULTS.targets,
  };
  validateLoraConfig(lora);
  if (!config.dataset) {
    throw new UsageError(
      "Name the fine-tuning text: --dataset FILE.txt (or a folder prepared with the base's vocabulary)",
    );
  }

  const base = await loadBase(basePath, own.tokenizer);
  const blockSize = own.block_size === undefined
    ? (base.meta ? base.config.block_size : Math.min(HF_DEFAULT_BLOCK, base.config.block_size))
    : numberFlag(own, "block_size", 0);
  const data = await fineTuningData(config.dataset, base);
  const adapterPath = join(config.out_dir, LORA_FILES.adapter);
  let resume;
  if (own.resume === true) {
    const adapter = await loadLoraAdapter(adapterPath);
    await checkAdapterBase({ ...adapter, path: adapterPath }, base);
    resume = { adapter, state: await loadLoraState(join(config.out_dir, LORA_FILES.state)) };
  } else if (await exists(adapterPath)) {
    throw new UsageError(
      `${adapterPath} already holds an adapter; pass --resume to continue it, or another --out_dir`,
    );
  }

  const gpu = await requestGpu();
  console.log(`adapter: ${gpu.info.name}${gpu.info.fallback ? " (software)" : ""}`);
  if (config.dtype === "f16" && !gpu.features.f16) {
    const why = gpu.f16Problem || `"${gpu.info.name}" has no shader-f16`;
    console.log(`note: f16 compute is unavailable (${why}); fine-tuning in f32`);
    config.dtype = "f32";
  }
  const fullBytes = own.compare_memory === false || !base.meta
    ? null
    : await fullFineTuneBytes(gpu, { ...config, block_size: blockSize }, base, { ...data, meta: base.meta });
  const before = gpu.stats.bytes;
  const trainer = await LoraTrainer.create(gpu, config, { base, lora, data, resume, blockSize });
  const loraBytes = gpu.stats.bytes - before;
  const layout = trainer.adapters.layout;
  console.log(
    `lora: rank ${trainer.adapters.config.rank}, alpha ${trainer.adapters.config.alpha}, dropout ${trainer.adapters.config.dropout}, targets ${
      trainer.adapters.config.targets.join(",")
    }: ${layout.count.toLocaleString("en")} trainable ` +
      `parameters (${(100 * layout.count / trainer.model.layout.count).toFixed(2)}% of ${
        trainer.model.layout.count.toLocaleString("en")
      })`,
  );
  console.log(
    `GPU memory: ${formatBytes(loraBytes)} for this LoRA run` +
      (fullBytes === null
        ? ""
        : typeof fullBytes === "string"
        ? ` (a full fine-tune of the same model and batch does not fit: ${fullBytes})`
        : ` vs ${formatBytes(fullBytes)} for a full fine-tune of the same model and batch`),
  );
  if (resume) console.log(`resuming from iteration ${trainer.iteration} in ${config.out_dir}`);

  try {
    await trainWithProgress(trainer, {
      saves: "adapter",
      savePath: join(config.out_dir, LORA_FILES.adapter),
      resumed: resume !== undefined,
      softwareAdapter: gpu.info.fallback,
      resumeFlag: "--resume",
    });
  } finally {
    trainer.release();
  }
});

/** `--merge`: base + adapter -> a full checkpoint (no optimizer state). */
async function merge(basePath: string, own: Record<string, string | boolean>): Promise<void> {
  if (typeof own.lora !== "string" || typeof own.out !== "string") {
    throw new UsageError("--merge needs --lora ADAPTER and --out FILE");
  }
  if (resolve(own.out) === resolve(basePath) || resolve(own.out) === resolve(own.lora)) {
    throw new UsageError(`--out ${own.out} would overwrite an input; name a new file`);
  }
  const base = await loadCheckpoint(basePath);
  const adapter = await loadLoraAdapter(own.lora);
  await checkAdapterBase({ ...adapter, path: own.lora }, { ...base, path: basePath });
  const merged: Checkpoint = {
    config: base.config,
    tokenizer: base.tokenizer,
    params: mergeLora(base.config, base.params, adapter),
  };
  await saveCheckpoint(own.out, merged);
  console.log(`merged ${own.lora} into ${basePath}: wrote ${own.out}`);
}

/** The frozen base: a checkpoint, or a Hugging Face folder, with its tokenizer. */
interface Base {
  /** The architecture. */
  config: ModelConfig;
  /** Flat weights. */
  params: Float32Array;
  /** --init_from as given, for messages. */
  path: string;
  /** Encodes the fine-tuning text. */
  tokenizer: Tokenizer;
  /** A checkpoint's meta.json; null for a Hugging Face folder (its tokenizer.json has no meta.json). */
  meta: DatasetMeta | null;
}

/** A Hugging Face base's max_position_embeddings is often thousands: train on shorter windows unless asked. */
const HF_DEFAULT_BLOCK = 256;

async function loadBase(initFrom: string, tokenizer: string | boolean | undefined): Promise<Base> {
  const dir = hfInitDir(initFrom);
  if (tokenizer !== undefined && (!dir || typeof tokenizer !== "string" || !isTokenizerName(tokenizer))) {
    throw new UsageError(
      dir
        ? `--tokenizer must be gpt2, cl100k_base or o200k_base, got "${tokenizer}"`
        : "--tokenizer goes with --init_from hf:DIR; a checkpoint knows its own tokenizer",
    );
  }
  if (dir) {
    const model = await loadHfModel(dir, { tokenizer: tokenizer as TokenizerName | undefined });
    return {
      config: model.config,
      params: model.params,
      path: initFrom,
      tokenizer: model.tokenizer,
      meta: null,
    };
  }
  const checkpoint = await loadCheckpoint(initFrom);
  return {
    config: checkpoint.config,
    params: checkpoint.params,
    path: initFrom,
    tokenizer: await tokenizerFromMeta(checkpoint.tokenizer),
    meta: checkpoint.tokenizer,
  };
}

/** The fine-tuning tokens: a text file encoded with the base's tokenizer, or a prepared folder in its vocabulary. */
async function fineTuningData(dataset: string, base: Base): Promise<{ train: TokenArray; val: TokenArray }> {
  const stat = await Deno.stat(dataset).catch(() => null);
  if (stat?.isFile) {
    const data = encodeText(await Deno.readTextFile(dataset), base.tokenizer, { source: dataset });
    console.log(
      `encoded ${dataset} with the base's ${base.tokenizer.name} tokenizer: ${data.train.length} train, ` +
        `${data.val.length} val tokens`,
    );
    return data;
  }
  const { dir, meta } = await openDataset(dataset);
  const val = await readTokens(dir, "val", meta);
  if (base.meta) checkSameTokenizer(meta, base.meta, dir);
  else await checkDatasetVocabulary(base.tokenizer, { meta, val }, `${base.path}'s tokenizer`);
  return { train: await readTokens(dir, "train", meta), val };
}

/**
 * GPU bytes a full fine-tune of `base` with these settings allocates (allocated
 * once, then freed), or why it cannot be allocated on this device.
 */
async function fullFineTuneBytes(
  gpu: Awaited<ReturnType<typeof requestGpu>>,
  config: TrainConfig,
  base: Base,
  data: TrainingData,
): Promise<number | string> {
  const before = gpu.stats.bytes;
  const model = { ...base.config, block_size: config.block_size };
  const full = Trainer.create(gpu, config, model, data, {
    config: model,
    tokenizer: data.meta,
    params: base.params,
  });
  const bytes = gpu.stats.bytes - before;
  full.release();
  try {
    await gpu.check(); // an allocation the driver refused is reported here
  } catch (error) {
    if (error instanceof GpuOutOfMemoryError) return error.message;
    throw error;
  }
  return bytes;
}

function numberFlag(own: Record<string, string | boolean>, name: string, fallback: number): number {
  const raw = own[name];
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(value)) {
    throw new UsageError(`--${name} must be a number, got "${raw}"`);
  }
  return value;
}

/** Splits the command line into this script's flags and `--key=value` training overrides. */
function parseArgs(
  argv: string[],
): { own: Record<string, string | boolean>; overrides: Record<string, string>; help: boolean } {
  const own: Record<string, string | boolean> = {};
  const overrides: Record<string, string> = {};
  const { settings, help } = readSettings(argv, {
    check: (key) => {
      if (key === "dropout") {
        throw new UsageError("The base runs without dropout in a fine-tune; set --lora_dropout instead");
      }
      if (!(key in OWN_FLAGS) && (MODEL_KEYS as readonly string[]).includes(key)) {
        throw new UsageError(`--${key} comes from the base checkpoint and cannot change in a fine-tune`);
      }
      if (!(key in OWN_FLAGS) && !(key in TRAIN_DEFAULTS)) {
        throw new UsageError(`Unknown setting "--${key}"; see deno task finetune --help`);
      }
    },
    isBoolean: (key) =>
      key in OWN_FLAGS
        ? OWN_FLAGS[key].boolean
        : typeof TRAIN_DEFAULTS[key as keyof TrainConfig] === "boolean",
  });
  for (const [key, value] of settings) {
    if (!(key in OWN_FLAGS)) overrides[key] = value;
    else if (!OWN_FLAGS[key].boolean) own[key] = value;
    else if (value === "true" || value === "false") own[key] = value === "true";
    else throw new UsageError(`--${key} must be true or false, got "${value}"`);
  }
  return { own, overrides, help };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

function usage(): string {
  const lines = [
    "Usage: deno task finetune --init_from CKPT|hf:DIR --dataset TEXT_OR_DIR [--lora_rank=8 ...] [--key=value ...]",
    "       deno task finetune --merge --init_from CKPT --lora ADAPTER --out MERGED",
    "",
    "Trains LoRA adapters on a frozen base (a checkpoint, or a Hugging Face LLaMA folder with hf:DIR).",
    "--dataset is a text file (encoded with the base's",
    "tokenizer; a character-level base needs a text in its character vocabulary) or a folder prepared with",
    "the base's vocabulary. The adapter goes to <out_dir>/adapter_model.safetensors.",
    "",
    "Fine-tuning flags:",
  ];
  for (const [key, spec] of Object.entries(OWN_FLAGS)) lines.push(`  --${key}`.padEnd(20) + spec.help);
  lines.push("", "Training settings (defaults shown; the model's come from the base):");
  const modelKeys = MODEL_KEYS as readonly string[];
  for (const key of TRAIN_KEYS) {
    if (modelKeys.includes(key) || key === "init_from") continue;
    lines.push(`  --${key}=${JSON.stringify(FINETUNE_DEFAULTS[key])}`);
  }
  return lines.join("\n");
}
