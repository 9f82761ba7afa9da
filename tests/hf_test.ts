import assert from "node:assert/strict";
import { join } from "node:path";
import type { Checkpoint } from "../model/checkpoint.ts";
import { resolveModelConfig } from "../model/config.ts";
import { loadHfModel } from "../model/hf.ts";
import { exportHfModel } from "../model/hf_export.ts";
import { loadHfWeights } from "../model/hf_import.ts";
import { Llama } from "../model/model.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { writeSafetensors } from "../model/safetensors.ts";
import { assertClose, testGpu } from "./harness.ts";
import { hfLlamaLogits, type HfTensor } from "./reference/hf_llama.ts";

const DIR = "tests/tmp/hf";

// GQA (4 query heads over 2 kv heads), two layers, an odd vocabulary, untied lm_head.
const CONFIG = resolveModelConfig({
  n_layer: 2,
  n_head: 4,
  n_kv_head: 2,
  n_embd: 16,
  block_size: 6,
  vocab_size: 13,
  mlp_hidden: 24,
  rope_theta: 500,
  norm_eps: 1e-5,
  tie_embeddings: false,
});

/** A checkpoint with every tensor perturbed, so norm gains are not 1 and logits are far from uniform. */
function randomCheckpoint(config = CONFIG, seed = 3): Checkpoint {
  const layout = paramLayout(config);
  const params = initialParameters(layout, config, new Rng(seed));
  const rng = new Rng(seed + 1);
  for (const t of layout.tensors) {
    for (let i = 0; i < t.length; i++) params[t.offset + i] += 0.6 * (rng.uniform() - 0.5);
  }
  // Character level: exports without a tokenizer.json; the last id is the end of text.
  const chars = Array.from({ length: config.vocab_size - 1 }, (_, i) => String.fromCharCode(97 + i));
  const tokenizer = {
    tokenizer: "char" as const,
    chars,
    vocab_size: config.vocab_size,
    dtype: "uint16" as const,
    eot_id: config.vocab_size - 1,
    train_tokens: 0,
    val_tokens: 0,
    val_fraction: 0.1,
  };
  return { config, tokenizer, params };
}

/** A minimal safetensors reader written from the format's description, independent of model/safetensors.ts. */
async function readTensors(path: string): Promise<Map<string, HfTensor & { dtype: string }>> {
  const bytes = await Deno.readFile(path);
  const view = new DataView(bytes.buffer);
  const length = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  const tensors = new Map<string, HfTensor & { dtype: string }>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: [begin, end] } = entry as {
      dtype: string;
      shape: number[];
      data_offsets: [number, number];
    };
    assert.equal(dtype, "F32", `${name} is stored as f32`);
    const data = new Float64Array((end - begin) / 4);
    for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(8 + length + begin + 4 * i, true);
    tensors.set(name, { dtype, shape, data });
  }
  return tensors;
}

/** The GPU model's logits (B, T, V) for some tokens. */
async function gpuLogits(checkpoint: Checkpoint, tokens: Uint32Array, B: number): Promise<Float32Array> {
  const gpu = await testGpu();
  const { config } = checkpoint;
  const model = new Llama(gpu, config, { batchSize: B, training: false });
  model.upload(checkpoint.params);
  const batch = {
    tokens: gpu.tensor([B, config.block_size], "u32", { data: tokens }),
    targets: gpu.tensor([B, config.block_size], "u32", { data: tokens }),
  };
  const loss = gpu.tensor([1], "f32");
  const rec = gpu.recorder();
  model.forward(rec, { batch, loss });
  rec.submit();
  const logits = await gpu.readFloats(model.acts.logits);
  for (const t of [batch.tokens, batch.targets, loss]) gpu.release(t);
  model.release();
  return logits;
}

Deno.test("an export has LlamaForCausalLM's config.json and gives the GPU model's logits under transformers' semantics", async () => {
  const out = join(DIR, "export");
  const checkpoint = randomCheckpoint();
  await exportHfModel(checkpoint, out);
  const config = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
  assert.deepEqual(config.architectures, ["LlamaForCausalLM"]);
  assert.equal(config.model_type, "llama");
  assert.deepEqual(
    [
      config.hidden_size,
      config.intermediate_size,
      config.num_hidden_layers,
      config.num_attention_heads,
      config.num_key_value_heads,
      config.max_position_embeddings,
      config.rms_norm_eps,
      config.rope_theta,
      config.vocab_size,
      config.tie_word_embeddings,
      config.torch_dtype,
      config.hidden_act,
    ],
    [16, 24, 2, 4, 2, 6, 1e-5, 500, 13, false, "float32", "silu"],
  );
  const generation = JSON.parse(await Deno.readTextFile(join(out, "generation_config.json")));
  assert.equal(generation.eos_token_id, 12);

  const tensors = await readTensors(join(out, "model.safetensors"));
  assert.deepEqual(tensors.get("model.layers.1.self_attn.k_proj.weight")?.shape, [8, 16]);
  assert.deepEqual(tensors.get("model.layers.0.mlp.up_proj.weight")?.shape, [24, 16]);
  assert.deepEqual(tensors.get("lm_head.weight")?.shape, [13, 16]);
  assert.equal(tensors.size, 3 + 9 * 2, "embedding, norm, lm_head and nine tensors per layer");

  const B = 2;
  const T = CONFIG.block_size;
  const rng = new Rng(11);
  const tokens = Uint32Array.from({ length: B * T }, () => rng.int(CONFIG.vocab_size));
  const got = await gpuLogits(checkpoint, tokens, B);
  for (let b = 0; b < B; b++) {
    const want = hfLlamaLogits(config, tensors, tokens.subarray(b * T, (b + 1) * T));
    // f32 on the GPU against float64: 1e-4 + 1e-4·|ref| on logits of size ~1-5.
    assertClose(
      got.subarray(b * T * CONFIG.vocab_size, (b + 1) * T * CONFIG.vocab_size),
      want,
      { atol: 1e-4, rtol: 1e-4 },
      `logits of sequence ${b}`,
    );
  }
});

Deno.test("a tied export leaves lm_head out, as save_pretrained does, and still gives the same logits", async () => {
  const out = join(DIR, "tied");
  const config = { ...CONFIG, tie_embeddings: true, n_kv_head: 4 };
  const checkpoint = randomCheckpoint(config, 8);
  await exportHfModel(checkpoint, out);
  const tensors = await readTensors(join(out, "model.safetensors"));
  assert.equal(tensors.has("lm_head.weight"), false);
  const hf = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
  assert.equal(hf.tie_word_embeddings, true);
  const tokens = Uint32Array.from([3, 1, 4, 1, 5, 9]);
  const got = await gpuLogits(checkpoint, tokens, 1);
  assertClose(got, hfLlamaLogits(hf, tensors, tokens), { atol: 1e-4, rtol: 1e-4 }, "tied logits");
});

Deno.test("export then import gives identical tensors and the same config", async () => {
  for (const tie of [false, true]) {
    const out = join(DIR, `round-${tie}`);
    const config = { ...CONFIG, tie_embeddings: tie };
    const checkpoint = randomCheckpoint(config, 21);
    await exportHfModel(checkpoint, out);
    const loaded = await loadHfWeights(out);
    assert.deepEqual(loaded.config, config);
    assert.equal(loaded.eosTokenId, config.vocab_size - 1);
    for (const t of paramLayout(config).tensors) {
      assert.deepEqual(
        loaded.params.subarray(t.offset, t.offset + t.length),
        checkpoint.params.subarray(t.offset, t.offset + t.length),
        `${t.name} (tied ${tie})`,
      );
    }
  }
});

Deno.test("an f16 or bf16 export stores each weight rounded to the nearest value of that type", async () => {
  const checkpoint = randomCheckpoint(CONFIG, 61);
  const values = checkpoint.params;
  values[0] = 1 + 2 ** -8; // a bf16 tie: goes to the even neighbour, 1
  values[1] = 1 + 3 * 2 ** -8; // the other tie: up to 1 + 2^-6
  for (const [dtype, torch] of [["f16", "float16"], ["bf16", "bfloat16"]] as const) {
    const dir = join(DIR, `export-${dtype}`);
    await exportHfModel(checkpoint, dir, { dtype });
    assert.equal(JSON.parse(await Deno.readTextFile(join(dir, "config.json"))).torch_dtype, torch);
    const loaded = await loadHfWeights(dir);
    for (const t of paramLayout(CONFIG).tensors) {
      for (let i = t.offset; i < t.offset + t.length; i++) {
        const got = loaded.params[i];
        if (dtype === "f16") {
          assert.equal(got, Float16Array.of(values[i])[0], `${t.name}[${i - t.offset}] as f16`);
          continue;
        }
        // A bf16 value is an f32 whose low 16 bits are zero; the nearest one has no closer neighbour.
        const bits = new Uint32Array(Float32Array.of(got).buffer)[0];
        assert.equal(bits & 0xffff, 0, "representable in bf16");
        const neighbours = [bits - 0x10000, bits + 0x10000].map((b) =>
          new Float32Array(Uint32Array.of(b).buffer)[0]
        );
        for (const other of neighbours) {
          assert.ok(Math.abs(other - values[i]) >= Math.abs(got - values[i]), `${t.name}: nearest bf16`);
        }
      }
    }
    if (dtype === "bf16") {
      assert.deepEqual([loaded.params[0], loaded.params[1]], [1, 1 + 2 ** -6], "ties to even");
    }
  }
});

/** Writes the exported tensors again as f16 or bf16, split over two shards with an index. */
async function rewrite(
  from: string,
  to: string,
  dtype: "F16" | "BF16",
  shards: number,
): Promise<Map<string, Float32Array>> {
  const tensors = await readTensors(join(from, "model.safetensors"));
  await Deno.mkdir(to, { recursive: true });
  await Deno.copyFile(join(from, "config.json"), join(to, "config.json"));
  const expected = new Map<string, Float32Array>();
  const files: { name: string; dtype: "F16" | "BF16"; shape: number[]; data: Uint16Array }[][] = [];
  const weightMap: Record<string, string> = {};
  [...tensors].forEach(([name, t], i) => {
    const f32 = Float32Array.from(t.data);
    let bits: Uint16Array;
    if (dtype === "F16") {
      const halves = Float16Array.from(f32);
      bits = new Uint16Array(halves.buffer);
      expected.set(name, Float32Array.from(halves));
    } else {
      // bf16 keeps the top 16 bits of the f32 (truncation): the f32 with its low half zeroed.
      const words = new Uint32Array(f32.buffer);
      bits = Uint16Array.from(words, (w) => w >>> 16);
      expected.set(name, new Float32Array(Uint32Array.from(bits, (b) => b << 16).buffer));
    }
    const shard = i % shards;
    (files[shard] ??= []).push({ name, dtype, shape: t.shape, data: bits });
    weightMap[name] = `model-0000${shard + 1}-of-0000${shards}.safetensors`;
  });
  if (shards === 1) {
    await writeSafetensors(join(to, "model.safetensors"), files[0], { format: "pt" });
  } else {
    for (let s = 0; s < shards; s++) {
      await writeSafetensors(join(to, `model-0000${s + 1}-of-0000${shards}.safetensors`), files[s], {
        format: "pt",
      });
    }
    await Deno.writeTextFile(
      join(to, "model.safetensors.index.json"),
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );
  }
  return expected;
}

Deno.test("f16 and bf16 weights, single or sharded, load as their exact f32 values", async () => {
  const source = join(DIR, "source");
  await exportHfModel(randomCheckpoint(CONFIG, 31), source);
  for (const [dtype, shards] of [["F16", 2], ["BF16", 1], ["BF16", 3]] as const) {
    const dir = join(DIR, `${dtype}-${shards}`);
    const expected = await rewrite(source, dir, dtype, shards);
    const loaded = await loadHfWeights(dir);
    for (const t of paramLayout(CONFIG).tensors) {
      assert.deepEqual(
        loaded.params.subarray(t.offset, t.offset + t.length),
        expected.get(t.name),
        `${t.name} from ${dtype} in ${shards} shard(s)`,
      );
    }
  }
});

Deno.test("folders we cannot run are refused in one line naming the problem", async () => {
  const source = join(DIR, "source-bad");
  await exportHfModel(randomCheckpoint(CONFIG, 41), source);
  const variant = async (name: string, change: (dir: string) => Promise<void>) => {
    const dir = join(DIR, `bad-${name}`);
    await Deno.mkdir(dir, { recursive: true });
    for (const file of ["config.json", "model.safetensors"]) {
      await Deno.copyFile(join(source, file), join(dir, file));
    }
    await change(dir);
    return dir;
  };
  const editConfig = (edit: (config: Record<string, unknown>) => void) => async (dir: string) => {
    const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    edit(config);
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config));
  };
  const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
    ["rope-scaling", editConfig((c) => c.rope_scaling = { type: "linear", factor: 2 }), /rope_scaling/],
    [
      "gpt2",
      editConfig((c) => (c.model_type = "gpt2", c.architectures = ["GPT2LMHeadModel"])),
      /"gpt2" model/,
    ],
    ["layers", editConfig((c) => c.num_hidden_layers = 3), /no tensor "model\.layers\.2\./],
    // Checked before any layout is built or memory allocated: these would take minutes or gigabytes.
    [
      "billion-layers",
      editConfig((c) => c.num_hidden_layers = 1e9),
      /declares 1000000000 layers but the weights/,
    ],
    [
      "huge-width",
      editConfig((c) => {
        c.hidden_size = 2 ** 20;
        c.num_attention_heads = c.num_key_value_heads = c.head_dim = 2 ** 10;
      }),
      /shape \[\d+,\d+\], but config\.json implies \[\d+,1048576\]/,
    ],
    ["width", editConfig((c) => c.intermediate_size = 32), /shape \[24,16\].*\[32,16\]/],
    ["no-config", (dir) => Deno.remove(join(dir, "config.json")), /config\.json" not found/],
    ["no-weights", (dir) => Deno.remove(join(dir, "model.safetensors")), /neither model\.safetensors/],
    ["escape", async (dir) => {
      await Deno.remove(join(dir, "model.safetensors"));
      await Deno.writeTextFile(
        join(dir, "model.safetensors.index.json"),
        JSON.stringify({ weight_map: { "model.norm.weight": "../source-bad/model.safetensors" } }),
      );
    }, /not a file name/],
    ["bias", async (dir) => {
      const tensors = [...await readTensors(join(dir, "model.safetensors"))].map(([name, t]) => ({
        name,
        dtype: "F32" as const,
        shape: t.shape,
        data: Float32Array.from(t.data),
      }));
      tensors.push({
        name: "model.layers.0.self_attn.q_proj.bias",
        dtype: "F32",
        shape: [16],
        data: new Float32Array(16),
      });
      await writeSafetensors(join(dir, "model.safetensors"), tensors, {});
    }, /q_proj\.bias", which a LLaMA model without biases/],
  ];
  for (const [name, change, message] of cases) {
    const dir = await variant(name, change);
    await assert.rejects(loadHfWeights(dir), (error: Error) => {
      assert.match(error.message, message, name);
      assert.doesNotMatch(error.message, /\n/, `${name}: one line`);
      return true;
    });
  }
});

Deno.test("loadHfModel gives the weights with tokenizer.json, or with a named tokenizer instead", async () => {
  const dir = join(DIR, "with-tokenizer");
  const config = { ...CONFIG, vocab_size: 50304 >> 4 }; // too small for gpt2's 50257
  await exportHfModel(randomCheckpoint(config, 51), dir);
  await assert.rejects(loadHfModel(dir), /tokenizer\.json" not found; pass --tokenizer NAME/);
  await assert.rejects(loadHfModel(dir, { tokenizer: "gpt2" }), /50257 ids but the model .* only 3144/);
});
