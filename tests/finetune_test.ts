import assert from "node:assert/strict";
import { type Checkpoint, saveCheckpoint } from "../model/checkpoint.ts";
import { resolveModelConfig } from "../model/config.ts";
import { type LoraConfig, loraLayout } from "../model/lora.ts";
import { encodeWithBase } from "../model/lora_data.ts";
import { baseWeightsHash, checkAdapterBase, loadLoraAdapter, saveLoraAdapter } from "../model/lora_file.ts";
import { loadLoraState } from "../model/lora_state.ts";
import { LORA_FILES, LoraTrainer } from "../model/lora_trainer.ts";
import type { DatasetMeta } from "../model/meta.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { prepareDataset } from "../model/prepare.ts";
import { Rng } from "../model/rng.ts";
import { readSafetensorsHeader } from "../model/safetensors.ts";
import { Trainer, type TrainingData } from "../model/trainer.ts";
import { applyOverrides, TRAIN_DEFAULTS, type TrainConfig } from "../model/train_config.ts";
import { runTask } from "./cli.ts";
import { testGpu } from "./harness.ts";

const DIR = "tests/tmp/finetune";
const MODEL = resolveModelConfig({ n_layer: 1, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 65 });
const LORA: LoraConfig = { rank: 4, alpha: 8, dropout: 0, targets: ["q", "v", "o", "down"] };

/** The character vocabulary of Tiny Shakespeare (from a small prepared slice). */
async function shakespeareMeta(): Promise<DatasetMeta> {
  await Deno.mkdir(DIR, { recursive: true });
  const text = await Deno.readTextFile("data/shakespeare_char/input.txt");
  await Deno.writeTextFile(`${DIR}/input.txt`, text);
  const { meta } = await prepareDataset({ input: `${DIR}/input.txt`, out: `${DIR}/data`, force: true });
  return meta;
}

/** A new corpus in the same vocabulary: Shakespeare shouted, which the base has barely seen. */
async function shouted(meta: DatasetMeta): Promise<TrainingData> {
  const text = (await Deno.readTextFile("data/shakespeare_char/input.txt")).slice(0, 60_000).toUpperCase();
  return await encodeWithBase(text, meta);
}

function base(meta: DatasetMeta): Checkpoint {
  const params = initialParameters(paramLayout(MODEL), MODEL, new Rng(3));
  return { config: MODEL, tokenizer: meta, params };
}

/** A base that has learned some lower-case Shakespeare (60 full steps), so adapters have structure to bend. */
async function pretrained(meta: DatasetMeta): Promise<Checkpoint> {
  const gpu = await testGpu();
  const text = (await Deno.readTextFile("data/shakespeare_char/input.txt")).slice(0, 200_000);
  const config = settings({
    batch_size: 16,
    learning_rate: 2e-2,
    min_lr: 2e-3,
    max_iters: 60,
    lr_decay_iters: 60,
  });
  const trainer = Trainer.create(gpu, config, MODEL, await encodeWithBase(text, meta));
  for (let i = 0; i < 60; i++) await trainer.step();
  const params = await trainer.model.download();
  trainer.release();
  return { config: MODEL, tokenizer: meta, params };
}

function settings(overrides: Record<string, unknown>): TrainConfig {
  return applyOverrides(TRAIN_DEFAULTS, {
    batch_size: 8,
    learning_rate: 1e-2,
    min_lr: 1e-3,
    warmup_iters: 5,
    max_iters: 40,
    lr_decay_iters: 40,
    weight_decay: 0,
    eval_iters: 4,
    out_dir: `${DIR}/out`,
    ...overrides,
  }, "test");
}

Deno.test("LoRA steps on a new corpus lower its loss while the base weights stay bit-identical", async () => {
  const gpu = await testGpu();
  const meta = await shakespeareMeta();
  const frozen = await pretrained(meta);
  const config = settings({
    learning_rate: 3e-2,
    min_lr: 3e-3,
    max_iters: 30,
    lr_decay_iters: 30,
    eval_iters: 8,
  });
  const trainer = await LoraTrainer.create(gpu, config, {
    base: frozen,
    lora: LORA,
    data: await shouted(meta),
  });
  assert.equal(trainer.model.grads, null, "no gradient buffer for the base");
  const before = await trainer.evaluate();
  for (let i = 0; i < 30; i++) await trainer.step();
  const after = await trainer.evaluate();
  // Measured: 4.31 -> 3.44; eval noise over 8 batches is a few hundredths.
  assert.ok(after.val < before.val - 0.4, `val loss ${before.val} -> ${after.val}`);
  assert.deepEqual(await trainer.model.download(), frozen.params, "the base weights never change");
  trainer.release();
});

Deno.test("a LoRA run resumed from its saved adapter and state ends where an uninterrupted one does", async () => {
  const gpu = await testGpu();
  const meta = await shakespeareMeta();
  const data = await shouted(meta);
  const lora: LoraConfig = { ...LORA, dropout: 0.2 };
  const config = settings({ max_iters: 6, gradient_accumulation_steps: 2, batch_size: 4 });
  const straight = await LoraTrainer.create(gpu, config, { base: base(meta), lora, data });
  for (let i = 0; i < 6; i++) await straight.step();
  const want = await straight.adapters.download();
  straight.release();

  await Deno.remove(config.out_dir, { recursive: true }).catch(() => {});
  const first = await LoraTrainer.create(gpu, config, { base: base(meta), lora, data });
  for (let i = 0; i < 3; i++) await first.step();
  const path = await first.save();
  first.release();
  const resume = {
    adapter: await loadLoraAdapter(path),
    state: await loadLoraState(`${config.out_dir}/${LORA_FILES.state}`),
  };
  const second = await LoraTrainer.create(gpu, config, { base: base(meta), lora: LORA, data, resume });
  assert.equal(second.iteration, 3);
  for (let i = 0; i < 3; i++) await second.step();
  assert.deepEqual(await second.adapters.download(), want);
  second.release();
});

Deno.test("a LoRA run holds less GPU memory than a full fine-tune: no base gradients or moments", async () => {
  const gpu = await testGpu();
  const meta = await shakespeareMeta();
  const data = await shouted(meta);
  // Wide enough that parameters, not activations, dominate: as in any model worth adapting.
  const model = resolveModelConfig({ n_layer: 2, n_head: 2, n_embd: 96, block_size: 16, vocab_size: 65 });
  const frozen = {
    config: model,
    tokenizer: meta,
    params: initialParameters(paramLayout(model), model, new Rng(4)),
  };
  const config = settings({});
  const start = gpu.stats.bytes;
  const full = Trainer.create(gpu, config, model, data, frozen);
  const fullBytes = gpu.stats.bytes - start;
  full.release();
  const mid = gpu.stats.bytes;
  const lora = await LoraTrainer.create(gpu, config, { base: frozen, lora: LORA, data });
  const loraBytes = gpu.stats.bytes - mid;
  lora.release();
  const total = paramLayout(model).total * 4;
  // The full run has three more parameter-sized buffers (grads, m, v); the adapters cost far less.
  assert.ok(
    fullBytes - loraBytes > 2 * total,
    `full ${fullBytes} B, LoRA ${loraBytes} B, params ${total} B`,
  );
});

Deno.test("an adapter file holds PEFT's names and shapes, its settings, and refuses another base", async () => {
  const meta = await shakespeareMeta();
  const frozen = base(meta);
  const layout = loraLayout(MODEL, LORA);
  const values = Float32Array.from({ length: layout.total }, (_, i) => Math.sin(i));
  const adapter = { config: LORA, base: MODEL, baseHash: await baseWeightsHash(frozen), values };
  const path = `${DIR}/adapter.safetensors`;
  await saveLoraAdapter(path, adapter);
  const file = await Deno.open(path);
  const { metadata } = await readSafetensorsHeader(file, path);
  file.close();
  assert.deepEqual(JSON.parse(metadata.lora), LORA);
  assert.equal(metadata.base_sha256, adapter.baseHash);
  assert.deepEqual(JSON.parse(metadata.adapter_config), {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    r: 4,
    lora_alpha: 8,
    lora_dropout: 0,
    target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"],
    bias: "none",
    fan_in_fan_out: false,
  });
  const loaded = await loadLoraAdapter(path);
  assert.deepEqual(loaded.config, LORA);
  for (const t of layout.tensors) {
    assert.deepEqual(
      loaded.values.subarray(t.offset, t.offset + t.length),
      values.subarray(t.offset, t.offset + t.length),
    );
  }
  assert.equal(layout.tensors[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  assert.deepEqual(layout.tensors[0].shape, [4, 32]);
  assert.equal(layout.tensors[1].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  assert.deepEqual(layout.tensors[1].shape, [32, 4]);
  await checkAdapterBase({ ...loaded, path }, { ...frozen, path: "base" });
  const other = { ...frozen, params: Float32Array.from(frozen.params, (v, i) => i === 7 ? v + 1e-6 : v) };
  await assert.rejects(
    () => checkAdapterBase({ ...loaded, path }, { ...other, path: "other.safetensors" }),
    /trained on other weights .* than other\.safetensors .*apply it to the checkpoint it was fine-tuned from/,
  );
  const wider = { ...frozen, config: { ...MODEL, n_embd: 64 } };
  await assert.rejects(
    () => checkAdapterBase({ ...loaded, path }, { ...wider, path: "wide" }),
    /n_embd=32, but wide has n_embd=64/,
  );
});

Deno.test("deno task finetune trains, merges, and sample --lora applies the adapter; bad input gets one line", async () => {
  const meta = await shakespeareMeta();
  const ckpt = `${DIR}/base.safetensors`;
  await saveCheckpoint(ckpt, base(meta));
  await Deno.writeTextFile(
    `${DIR}/shout.txt`,
    (await Deno.readTextFile(`${DIR}/input.txt`)).slice(0, 20_000).toUpperCase(),
  );
  const out = `${DIR}/cli`;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const common = ["--init_from", ckpt, "--dataset", `${DIR}/shout.txt`, "--out_dir", out, "--batch_size=4"];
  const run = await runTask("finetune", [
    ...common,
    "--max_iters=2",
    "--eval_iters=1",
    "--lora_targets=q,v,gate",
  ]);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /GPU memory: .* for this LoRA run vs .* for a full fine-tune/);
  assert.match(run.stdout, /adapter saved to .*adapter_model\.safetensors/);
  const records = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assert.deepEqual(records.map((r) => r.type), ["eval", "train", "train"]);
  const peft = JSON.parse(await Deno.readTextFile(`${out}/adapter_config.json`));
  assert.deepEqual([peft.peft_type, peft.r, peft.lora_alpha, peft.target_modules], ["LORA", 8, 16, [
    "q_proj",
    "v_proj",
    "gate_proj",
  ]]);
  const again = await runTask("finetune", [...common, "--max_iters=2"]);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /^error: .*already holds an adapter; pass --resume/);
  // Resume, reading the same text as a folder prepared with the base's vocabulary.
  const resumed = await runTask("finetune", [
    ...common.map((a) => a === `${DIR}/shout.txt` ? `${DIR}/data` : a),
    "--resume",
    "--max_iters=3",
    "--eval_iters=1",
    "--compare_memory=false",
  ]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stdout, /resuming from iteration 2 in /);
  assert.match(resumed.stdout, /targets q,v,gate/, "the saved adapter's settings apply");
  assert.match(resumed.stdout, /done: 3 iterations/);

  const adapter = `${out}/adapter_model.safetensors`;
  const merged = `${DIR}/merged.safetensors`;
  const merge = await runTask("finetune", [
    "--merge",
    "--init_from",
    ckpt,
    "--lora",
    adapter,
    "--out",
    merged,
  ]);
  assert.equal(merge.code, 0, merge.stderr);
  const sample = ["--num_samples=1", "--max_new_tokens=8", "--temperature=0"];
  const withLora = await runTask("sample", ["--ckpt", ckpt, "--lora", adapter, ...sample]);
  const fromMerged = await runTask("sample", ["--ckpt", merged, ...sample]);
  assert.equal(withLora.code, 0, withLora.stderr);
  assert.equal(withLora.stdout, fromMerged.stdout);

  const cases: [string[], RegExp][] = [
    [["--dataset", `${DIR}/shout.txt`], /^error: Name the base checkpoint: --init_from/],
    [[...common, "--n_layer=2"], /^error: --n_layer comes from the base checkpoint/],
    [[...common, "--lora_targets=q,x"], /^error: Unknown lora target "x"; choose among q,k,v,o,gate,up,down/],
    [
      ["--init_from", ckpt, "--dataset", "data/sanguo/input.txt", "--out_dir", `${out}2`],
      /cannot be encoded with the base model's char tokenizer/,
    ],
    [["--merge", "--init_from", ckpt, "--lora", adapter, "--out", ckpt], /would overwrite an input/],
  ];
  for (const [args, message] of cases) {
    const result = await runTask("finetune", args);
    assert.notEqual(result.code, 0, args.join(" "));
    assert.match(result.stderr, message);
    assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
  }
});

Deno.test("a LoRA step is one submit and creates no buffer, pipeline or bind group after the first", async () => {
  const gpu = await testGpu();
  const meta = await shakespeareMeta();
  const data = await shouted(meta);
  for (const overrides of [{}, { gradient_accumulation_steps: 2 }, { dtype: "f16" }]) {
    const lora = { ...LORA, dropout: "gradient_accumulation_steps" in overrides ? 0.1 : 0 };
    const trainer = await LoraTrainer.create(gpu, settings({ batch_size: 2, ...overrides }), {
      base: base(meta),
      lora,
      data,
    });
    await trainer.step({ read: true });
    const before = { ...gpu.stats };
    for (let i = 0; i < 3; i++) await trainer.step();
    const what = JSON.stringify(overrides);
    assert.equal(gpu.stats.submits - before.submits, 3, `${what}: one submit per step (no readback)`);
    const last = await trainer.step({ read: true });
    assert.ok(Number.isFinite(last!.loss) && last!.nonFinite.steps === 0, `${what}: finite steps`);
    assert.deepEqual(await trainer.model.download(), base(meta).params, `${what}: the base is untouched`);
    assert.equal(gpu.stats.buffers, before.buffers, `${what}: buffers created after the first step`);
    assert.equal(gpu.stats.textures, before.textures, `${what}: textures created after the first step`);
    assert.equal(gpu.stats.pipelines, before.pipelines, `${what}: pipelines created after the first step`);
    assert.equal(
      gpu.stats.bindGroups,
      before.bindGroups,
      `${what}: bind groups created after the first step`,
    );
    trainer.release();
  }
});
