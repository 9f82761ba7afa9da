import assert from "node:assert/strict";
import { checkSplit } from "../model/batches.ts";
import { ConfigError, defaultMlpHidden, resolveModelConfig } from "../model/config.ts";
import { initialParameters, PARAM_ALIGNMENT, parameterCounts, paramLayout } from "../model/params.ts";
import { type DatasetMeta, tokenizerMismatch } from "../model/meta.ts";
import { Rng } from "../model/rng.ts";
import { applyOverrides, learningRate, TRAIN_DEFAULTS, validateTrainConfig } from "../model/train_config.ts";

const BASE = { n_layer: 2, n_head: 4, n_embd: 64, block_size: 32, vocab_size: 65 };

Deno.test("model config fills LLaMA defaults", () => {
  const config = resolveModelConfig(BASE);
  assert.equal(config.n_kv_head, 4);
  assert.equal(config.mlp_hidden, 192); // floor(8·64/3) = 170 -> 192
  assert.equal(defaultMlpHidden(384), 1024);
  assert.equal(defaultMlpHidden(128), 384);
  assert.equal(config.tie_embeddings, true);
  assert.equal(config.rope_theta, 10000);
});

Deno.test("model config errors name the field and the fix", () => {
  const cases: [object, RegExp][] = [
    [{ n_embd: 66 }, /n_embd 66 is not divisible by n_head 4/],
    [{ n_embd: 36, n_head: 4 }, /head size n_embd\/n_head = 9 is odd/],
    [{ n_kv_head: 3 }, /n_head 4 is not divisible by n_kv_head 3/],
    [{ block_size: 0 }, /block_size must be a positive integer, got 0/],
    [{ dropout: 1 }, /dropout must be in \[0, 1\), got 1/],
    [{ vocab_size: 2.5 }, /vocab_size must be a positive integer/],
  ];
  for (const [change, message] of cases) {
    assert.throws(() => resolveModelConfig({ ...BASE, ...change }), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, message);
      return true;
    });
  }
  assert.throws(() => resolveModelConfig({ n_layer: 1 }), /lacks n_head/);
});

Deno.test("the parameter layout uses Hugging Face names, aligned offsets and fused q/k/v and gate/up", () => {
  const config = resolveModelConfig({ ...BASE, n_kv_head: 2 });
  const layout = paramLayout(config);
  const names = layout.tensors.map((t) => t.name);
  assert.equal(names[0], "model.embed_tokens.weight");
  assert.ok(names.includes("model.layers.1.self_attn.k_proj.weight"));
  assert.ok(names.includes("model.layers.0.mlp.down_proj.weight"));
  assert.ok(!names.includes("lm_head.weight"), "tied by default");
  assert.equal(layout.lmHead, layout.embedding);
  const byName = new Map(layout.tensors.map((t) => [t.name, t]));
  const q = byName.get("model.layers.0.self_attn.q_proj.weight")!;
  const k = byName.get("model.layers.0.self_attn.k_proj.weight")!;
  const v = byName.get("model.layers.0.self_attn.v_proj.weight")!;
  assert.deepEqual(k.shape, [2 * 16, 64]);
  assert.equal(k.offset, q.offset + q.length, "k follows q");
  assert.equal(v.offset, k.offset + k.length, "v follows k");
  assert.equal(layout.layers[0].qkv.rows, (4 + 2 * 2) * 16);
  const gate = byName.get("model.layers.0.mlp.gate_proj.weight")!;
  assert.equal(byName.get("model.layers.0.mlp.up_proj.weight")!.offset, gate.offset + gate.length);
  for (
    const group of [layout.layers[0].qkv.offset, layout.layers[0].gateUp.offset, layout.layers[1].down.offset]
  ) {
    assert.equal(group % PARAM_ALIGNMENT, 0);
  }
  assert.equal(layout.total % PARAM_ALIGNMENT, 0);
  // Decay on matrices only.
  assert.equal(byName.get("model.norm.weight")!.decay, false);
  assert.equal(q.decay, true);
  assert.equal(layout.embedding.decay, true);
  const counts = parameterCounts(layout);
  assert.equal(counts.total - counts.nonEmbedding, 65 * 64);
  const untied = paramLayout({ ...config, tie_embeddings: false });
  assert.equal(untied.tensors.at(-1)!.name, "lm_head.weight");
});

Deno.test("initialisation: normal(0, 0.02), residual projections scaled by 1/sqrt(2·n_layer), gains 1", () => {
  const config = resolveModelConfig({ ...BASE, n_embd: 128, n_layer: 8 });
  const layout = paramLayout(config);
  const values = initialParameters(layout, config, new Rng(1));
  const std = (name: string) => {
    const t = layout.tensors.find((x) => x.name === name)!;
    const slice = values.subarray(t.offset, t.offset + t.length);
    return Math.sqrt(slice.reduce((s, v) => s + v * v, 0) / slice.length);
  };
  assert.ok(Math.abs(std("model.layers.0.self_attn.q_proj.weight") - 0.02) < 0.001);
  assert.ok(Math.abs(std("model.layers.0.mlp.down_proj.weight") - 0.02 / 4) < 0.0003);
  assert.equal(std("model.layers.3.input_layernorm.weight"), 1);
  assert.deepEqual(initialParameters(layout, config, new Rng(1)), values, "seeded");
});

Deno.test("Rng is seeded, restorable from its state, and unbiased enough", () => {
  const a = new Rng(7);
  const first = [a.nextU32(), a.nextU32()];
  const saved = a.state();
  const next = [a.nextU32(), a.int(1000), a.uniform()];
  const b = Rng.fromState(saved);
  assert.deepEqual([b.nextU32(), b.int(1000), b.uniform()], next);
  assert.notDeepEqual(first, [new Rng(8).nextU32(), new Rng(8).nextU32()]);
  let sum = 0;
  const r = new Rng(3);
  for (let i = 0; i < 10000; i++) sum += r.normal();
  assert.ok(Math.abs(sum / 10000) < 0.05);
});

Deno.test("training overrides convert types and refuse unknown keys with the known list", () => {
  const config = applyOverrides(
    TRAIN_DEFAULTS,
    { batch_size: "32", decay_lr: "false", dtype: "f16" },
    "flags",
  );
  assert.equal(config.batch_size, 32);
  assert.equal(config.decay_lr, false);
  assert.throws(
    () => applyOverrides(TRAIN_DEFAULTS, { batchsize: "3" }, "flags"),
    /Unknown setting "batchsize" in flags; known settings: out_dir, .*batch_size/,
  );
  assert.throws(() => applyOverrides(TRAIN_DEFAULTS, { max_iters: "many" }, "flags"), /must be a number/);
  assert.throws(
    () => validateTrainConfig({ ...TRAIN_DEFAULTS, dtype: "bf16" }),
    /dtype must be "f32" or "f16"/,
  );
});

Deno.test("the learning rate warms up linearly and decays by cosine to min_lr", () => {
  const schedule = {
    learning_rate: 1e-3,
    min_lr: 1e-4,
    warmup_iters: 100,
    lr_decay_iters: 2000,
    decay_lr: true,
  };
  assert.ok(Math.abs(learningRate(schedule, 0) - 1e-3 / 101) < 1e-12);
  assert.ok(Math.abs(learningRate(schedule, 100) - 1e-3) < 1e-12);
  assert.ok(Math.abs(learningRate(schedule, 1050) - 5.5e-4) < 1e-9);
  assert.equal(learningRate(schedule, 2001), 1e-4);
  assert.equal(learningRate({ ...schedule, decay_lr: false }, 5), 1e-3);
});

Deno.test("a checkpoint and a dataset must share the tokenizer, down to the character vocabulary", () => {
  const char = (chars: string[]): DatasetMeta => ({
    tokenizer: "char",
    vocab_size: chars.length,
    dtype: "uint16",
    eot_id: null,
    train_tokens: 1,
    val_tokens: 1,
    val_fraction: 0.1,
    chars,
  });
  const gpt2: DatasetMeta = {
    ...char([]),
    tokenizer: "gpt2",
    vocab_size: 50257,
    eot_id: 50256,
    chars: undefined,
  };
  assert.equal(tokenizerMismatch(char(["a", "b"]), char(["a", "b"])), "");
  assert.equal(tokenizerMismatch(gpt2, { ...gpt2, train_tokens: 9 }), "");
  assert.match(tokenizerMismatch(gpt2, char(["a"])), /gpt2 tokenizer, the data char/);
  assert.match(tokenizerMismatch(char(["a", "b"]), char(["a", "c"])), /first at id 1: "b" vs "c"/);
  assert.match(
    tokenizerMismatch(char(["a", "b"]), char(["a", "b", "c"])),
    /2 and 3 characters, first at id 2/,
  );
});

Deno.test("a block longer than the data, or ids beyond vocab_size, are refused with the numbers and the fix", () => {
  const ids = Uint16Array.from([1, 2, 3, 64, 5]);
  assert.throws(
    () => checkSplit(ids, "val.bin", 5, 65),
    /^ConfigError: block_size 5 needs at least 6 tokens but val\.bin has 5; lower --block_size or prepare more text$/,
  );
  assert.throws(
    () => checkSplit(ids, "train.bin", 4, 64),
    /train\.bin holds token id 64 but vocab_size is 64; raise --vocab_size to at least 65/,
  );
  checkSplit(ids, "train.bin", 4, 65);
});
