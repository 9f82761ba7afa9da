/**
 * Feeds the file readers thousands of truncated, bit-flipped, spliced and
 * rewritten inputs. Each must either load (when the damage missed everything
 * that is checked) or fail with one of our errors, in one line naming the file:
 * never a TypeError, a RangeError, a hang or a huge allocation.
 */
import assert from "node:assert/strict";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { ConfigError, resolveModelConfig } from "../model/config.ts";
import { DataError } from "../model/errors.ts";
import { checkMeta, type DatasetMeta, readMeta, readTokens } from "../model/meta.ts";
import { initialParameters, paramLayout } from "../model/params.ts";
import { Rng } from "../model/rng.ts";
import { SafetensorsError } from "../model/safetensors.ts";

const DIR = "tests/tmp/fuzz";
const CONFIG = resolveModelConfig({ n_layer: 2, n_head: 2, n_embd: 8, block_size: 8, vocab_size: 5 });
const META: DatasetMeta = {
  tokenizer: "char",
  vocab_size: 5,
  dtype: "uint16",
  train_tokens: 40,
  val_tokens: 10,
  val_fraction: 0.2,
  eot_id: null,
  chars: ["\n", " ", "a", "b", "c"],
};

/** mulberry32: the mutations reproduce from the seed. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Numbers that break naive readers. */
const NASTY = [0, -1, 1, 2 ** 31, 2 ** 32 + 1, 2 ** 53, 1e308, -1e308, 0.5, NaN, 1e9, 3];

/** One mutation of `bytes`: truncate, flip, overwrite, splice, duplicate or replace a number in the text. */
function mutate(bytes: Uint8Array, next: () => number): Uint8Array {
  const pick = (n: number) => Math.floor(next() * n);
  const out = bytes.slice();
  switch (pick(7)) {
    case 0:
      return out.subarray(0, pick(out.length));
    case 1:
      for (let i = 0, n = 1 + pick(8); i < n; i++) out[pick(out.length)] ^= 1 << pick(8);
      return out;
    case 2:
      out[pick(Math.min(out.length, 8))] = pick(256); // the header length
      return out;
    case 3: {
      const at = pick(out.length);
      return new Uint8Array([...out.subarray(0, at), ...out.subarray(at + 1 + pick(64))]);
    }
    case 4: {
      const at = pick(out.length);
      return new Uint8Array([
        ...out.subarray(0, at),
        ...out.subarray(at - pick(at + 1), at),
        ...out.subarray(at),
      ]);
    }
    case 5: {
      const text = new TextDecoder("latin1").decode(out);
      const numbers = [...text.matchAll(/-?\d+(\.\d+)?/g)];
      if (numbers.length === 0) return out;
      const hit = numbers[pick(numbers.length)];
      const replaced = text.slice(0, hit.index) + String(NASTY[pick(NASTY.length)]) +
        text.slice(hit.index! + hit[0].length);
      return Uint8Array.from(replaced, (c) => c.charCodeAt(0));
    }
    default:
      return Uint8Array.from({ length: pick(200) }, () => pick(256));
  }
}

/** Asserts `error` is one of ours, one line, naming `file`. */
function assertClearError(error: unknown, file: string, what: string): void {
  const ours = error instanceof SafetensorsError || error instanceof DataError ||
    error instanceof ConfigError;
  assert.ok(ours, `${what}: ${(error as Error)?.stack ?? error}`);
  const message = (error as Error).message;
  assert.ok(!message.includes("\n"), `${what}: message has more than one line: ${message}`);
  assert.ok(message.includes(file), `${what}: message does not name ${file}: ${message}`);
}

Deno.test("mutated checkpoints load or fail with one clear line naming the file", async () => {
  await Deno.mkdir(DIR, { recursive: true });
  const path = `${DIR}/ckpt.safetensors`;
  const layout = paramLayout(CONFIG);
  await saveCheckpoint(path, {
    config: CONFIG,
    tokenizer: META,
    params: initialParameters(layout, CONFIG, new Rng(1)),
    moments: { m: new Float32Array(layout.total), v: new Float32Array(layout.total) },
    training: { iteration: 3, bestValLoss: 2.5, rng: new Rng(2).state(), trainConfig: {} },
  });
  const valid = await Deno.readFile(path);
  const next = random(1234);
  let loaded = 0;
  for (let i = 0; i < 1500; i++) {
    const bytes = mutate(valid, next);
    await Deno.writeFile(path, bytes);
    try {
      const checkpoint = await loadCheckpoint(path);
      assert.equal(checkpoint.params.length, layout.total, `case ${i} loaded with a wrong layout`);
      loaded++;
    } catch (error) {
      assertClearError(error, path, `case ${i}`);
    }
  }
  assert.ok(loaded > 0 && loaded < 1500, `some mutations miss the checked parts, most do not (${loaded})`);
  await Deno.remove(DIR, { recursive: true });
});

Deno.test("a checkpoint whose config claims a billion layers is refused before anything is built", async () => {
  await Deno.mkdir(DIR, { recursive: true });
  const path = `${DIR}/huge.safetensors`;
  await saveCheckpoint(path, {
    config: CONFIG,
    tokenizer: META,
    params: initialParameters(paramLayout(CONFIG), CONFIG, new Rng(1)),
  });
  const bytes = await Deno.readFile(path);
  const length = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  header.__metadata__.config = JSON.stringify({ ...CONFIG, n_layer: 1_000_000_000 });
  const json = new TextEncoder().encode(JSON.stringify(header));
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  await Deno.writeFile(path, new Uint8Array([...prefix, ...json, ...bytes.subarray(8 + length)]));
  await assert.rejects(loadCheckpoint(path), /1000000000 layers but \d+ tensors/);
  await Deno.remove(DIR, { recursive: true });
});

Deno.test("mutated meta.json and token files read or fail with one clear line naming the file", async () => {
  const dir = `${DIR}/data`;
  await Deno.mkdir(dir, { recursive: true });
  const metaText = new TextEncoder().encode(JSON.stringify(META));
  const train = new Uint8Array(new Uint16Array(40).map((_, i) => i % 5).buffer);
  const val = new Uint8Array(new Uint16Array(10).map((_, i) => (i * 3) % 5).buffer);
  const next = random(99);
  for (let i = 0; i < 1500; i++) {
    const target = i % 3;
    await Deno.writeFile(`${dir}/meta.json`, target === 0 ? mutate(metaText, next) : metaText);
    await Deno.writeFile(`${dir}/train.bin`, target === 1 ? mutate(train, next) : train);
    await Deno.writeFile(`${dir}/val.bin`, target === 2 ? mutate(val, next) : val);
    try {
      const meta = await readMeta(dir);
      for (const split of ["train", "val"] as const) {
        const ids = await readTokens(dir, split, meta);
        assert.ok(
          ids.every((id) => id < meta.vocab_size),
          `case ${i}: an id outside the vocabulary got through`,
        );
      }
    } catch (error) {
      assertClearError(error, dir, `case ${i}`); // names the damaged file, or the one that no longer matches it
    }
  }
  await Deno.remove(DIR, { recursive: true });
});

Deno.test("checkMeta refuses any JSON value that is not a dataset description, by name", () => {
  const next = random(7);
  const values: unknown[] = [null, 1, "x", [], {}, true, ...NASTY];
  for (let i = 0; i < 2000; i++) {
    const meta: Record<string, unknown> = structuredClone(META) as unknown as Record<string, unknown>;
    const keys = Object.keys(meta);
    const key = keys[Math.floor(next() * keys.length)];
    if (next() < 0.2) delete meta[key];
    else meta[key] = values[Math.floor(next() * values.length)];
    try {
      const checked = checkMeta(meta, "data/x/meta.json");
      assert.equal(checked.vocab_size, (checked.chars?.length ?? 0) + (checked.eot_id === null ? 0 : 1));
    } catch (error) {
      assertClearError(error, "data/x/meta.json", `case ${i} (${key} = ${JSON.stringify(meta[key])})`);
    }
  }
});
