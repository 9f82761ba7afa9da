import assert from "node:assert/strict";
import { join } from "node:path";
import { resolveModelConfig } from "../model/config.ts";
import { hfTrainingStart, loadHfModel } from "../model/hf.ts";
import { exportHfModel } from "../model/hf_export.ts";
import { HfTokenizer } from "../model/hf_tokenizer.ts";
import { tokenDType } from "../model/meta.ts";
import { paramLayout } from "../model/params.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { runTask } from "./cli.ts";

const DIR = "tests/tmp/hf_tokenizer";

/** GPT-2's bytes_to_unicode, written out here from the Python original. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = "!".charCodeAt(0); b <= "~".charCodeAt(0); b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const chars: string[] = [];
  bs.forEach((b, i) => chars[b] = String.fromCharCode(cs[i]));
  return chars;
}

const MERGES = ["h e", "l l", "ll o", "he llo", "Ġ w", "Ġw o"];
const HELLO = 259;
const SPACE_WO = 261;
const EOT = 262;

/** A tiny byte-level BPE tokenizer.json: byte b has id b, merge i makes id 256 + i, then <|endoftext|>. */
function tinyTokenizer(options: { prefixSpace?: boolean; arrayMerges?: boolean; split?: string } = {}) {
  const alphabet = bytesToUnicode();
  const vocab: Record<string, number> = {};
  alphabet.forEach((char, byte) => vocab[char] = byte);
  MERGES.forEach((merge, i) => vocab[merge.replace(" ", "")] = 256 + i);
  const byteLevel = { type: "ByteLevel", add_prefix_space: options.prefixSpace ?? false, trim_offsets: true };
  return {
    version: "1.0",
    added_tokens: [{ id: EOT, content: "<|endoftext|>", special: true, normalized: false }],
    normalizer: null,
    pre_tokenizer: options.split
      ? {
        type: "Sequence",
        pretokenizers: [
          { type: "Split", pattern: { Regex: options.split }, behavior: "Isolated", invert: false },
          { ...byteLevel, use_regex: false },
        ],
      }
      : { ...byteLevel, use_regex: true },
    decoder: { type: "ByteLevel" },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      byte_fallback: false,
      vocab,
      merges: options.arrayMerges ? MERGES.map((m) => m.split(" ")) : [...MERGES],
    },
  };
}

const bytes = (text: string) => [...new TextEncoder().encode(text)];

Deno.test("a byte-level BPE tokenizer.json merges by merge priority, GPT-2 split, added tokens first", () => {
  const tokenizer = HfTokenizer.fromJson(tinyTokenizer(), "tokenizer.json", null);
  assert.equal(tokenizer.vocabSize, 263);
  assert.equal(tokenizer.eotId, EOT, "<|endoftext|> is the end of text when the model names no eos");
  // "hello" | " world": he, ll -> llo -> hello; Ġw -> Ġwo, then r l d as bytes.
  assert.deepEqual(tokenizer.encode("hello world"), [HELLO, SPACE_WO, ...bytes("rld")]);
  // ll (priority 1) before llo (2); "hell" has no token: he + ll.
  assert.deepEqual(tokenizer.encode("ello"), [101, 258]);
  assert.deepEqual(tokenizer.encode("hell"), [256, 257]);
  assert.deepEqual(tokenizer.encode("hello<|endoftext|>hello"), [HELLO, EOT, HELLO]);
  assert.deepEqual(tokenizer.encode("héllo ✓"), [...bytes("h"), ...bytes("é"), 258, ...bytes(" ✓")]);
  for (const text of ["hello world<|endoftext|>", "héllo ✓\n\n  tabs\tand 123 numbers!", "日本語 ok"]) {
    assert.equal(tokenizer.decode(tokenizer.encode(text)), text);
  }
  assert.equal(tokenizer.decode([0xe2, 0x9c]), "\uFFFD", "a cut character decodes as U+FFFD");
});

Deno.test("added tokens with regex characters split out, the longest first", () => {
  const json = tinyTokenizer();
  json.added_tokens.push(
    { id: 263, content: "[a-z]+", special: true, normalized: false },
    { id: 264, content: "<|endoftext|>+", special: true, normalized: false },
  );
  const tokenizer = HfTokenizer.fromJson(json, "tokenizer.json", null);
  assert.deepEqual(tokenizer.encode("he[a-z]+<|endoftext|>+<|endoftext|>"), [256, 263, 264, EOT]);
  assert.equal(tokenizer.decode([256, 263, 264, EOT]), "he[a-z]+<|endoftext|>+<|endoftext|>");
});

Deno.test("tokenizer.json variants: merges as pairs, add_prefix_space, a regex Split before ByteLevel", () => {
  const arrays = HfTokenizer.fromJson(tinyTokenizer({ arrayMerges: true }), "t.json", null);
  assert.deepEqual(arrays.encode("hello world"), [HELLO, SPACE_WO, ...bytes("rld")]);
  const prefixed = HfTokenizer.fromJson(tinyTokenizer({ prefixSpace: true }), "t.json", null);
  assert.deepEqual(prefixed.encode("world"), [SPACE_WO, ...bytes("rld")]);
  const split = HfTokenizer.fromJson(tinyTokenizer({ split: String.raw`\p{L}+` }), "t.json", null);
  // Letters are pieces, the text between them too: " " alone, so no Ġw merge.
  assert.deepEqual(split.encode("hello world!"), [HELLO, ...bytes(" world!")]);
  assert.equal(split.decode(split.encode("hello world!")), "hello world!");
});

Deno.test("tokenizer.json pipelines: Digits before ByteLevel (SmolLM), a string Split, an NFC normalizer", () => {
  const withDigitMerge = () => {
    const json = tinyTokenizer();
    json.model.vocab["12"] = 300;
    (json.model.merges as string[]).push("1 2");
    return json;
  };
  const plain = HfTokenizer.fromJson(withDigitMerge(), "t.json", null);
  assert.deepEqual(plain.encode("x123"), [...bytes("x"), 300, ...bytes("3")], "GPT-2 split keeps 123 whole");
  const digits = withDigitMerge() as Record<string, unknown>;
  digits.pre_tokenizer = {
    type: "Sequence",
    pretokenizers: [
      { type: "Digits", individual_digits: true },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    ],
  };
  const isolatedDigits = HfTokenizer.fromJson(digits, "t.json", null);
  assert.deepEqual(isolatedDigits.encode("x123 hello"), [...bytes("x123"), ...bytes(" "), HELLO]);
  const stringSplit = tinyTokenizer() as Record<string, unknown>;
  stringSplit.pre_tokenizer = {
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { String: "l" }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
  // Every "l" is its own piece, so no ll, llo or hello: he, l, l, o.
  assert.deepEqual(HfTokenizer.fromJson(stringSplit, "t.json", null).encode("hello"), [256, ...bytes("llo")]);
  const nfc = { ...tinyTokenizer(), normalizer: { type: "NFC" } };
  assert.deepEqual(HfTokenizer.fromJson(nfc, "t.json", null).encode("e\u0301"), bytes("é"));
  assert.deepEqual(HfTokenizer.fromJson(tinyTokenizer(), "t.json", null).encode("e\u0301"), bytes("e\u0301"));
});

Deno.test("tokenizers other than byte-level BPE are refused, naming the type and --tokenizer", () => {
  const base = tinyTokenizer();
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["Unigram", { ...base, model: { type: "Unigram", vocab: [["a", 0]] } }, /is a "Unigram" tokenizer/],
    ["WordPiece", { ...base, model: { type: "WordPiece", vocab: {} } }, /is a "WordPiece" tokenizer/],
    ["byte_fallback", { ...base, model: { ...base.model, byte_fallback: true } }, /SentencePiece-style/],
    ["normalizer", { ...base, normalizer: { type: "Lowercase" } }, /"Lowercase" normalizer/],
    [
      "Whitespace",
      {
        ...base,
        pre_tokenizer: { type: "Sequence", pretokenizers: [{ type: "Whitespace" }, { type: "ByteLevel" }] },
      },
      /pre-tokenizer sequence we do not implement \("Whitespace", "ByteLevel"\)/,
    ],
    ["Metaspace", { ...base, pre_tokenizer: { type: "Metaspace" } }, /"Metaspace" pre-tokenizer/],
  ];
  for (const [name, json, message] of cases) {
    assert.throws(() => HfTokenizer.fromJson(json, "m/tokenizer.json", null), (error: Error) => {
      assert.match(error.message, message, name);
      assert.match(error.message, /only byte-level BPE .*pass --tokenizer NAME instead .*gpt2/, name);
      assert.doesNotMatch(error.message, /\n/);
      return true;
    });
  }
});

Deno.test("loadHfModel reads the folder's tokenizer.json with the model's eos as end of text", async () => {
  const dir = join(DIR, "model");
  const config = resolveModelConfig({ n_layer: 1, n_head: 2, n_embd: 8, block_size: 4, vocab_size: 263 });
  const params = new Float32Array(paramLayout(config).total).fill(0.5);
  const tokenizer = {
    tokenizer: "char" as const, // no tokenizer.json of its own: the test writes one
    chars: ["a", "b", "c", "d", "e"],
    vocab_size: 263,
    dtype: "uint16" as const,
    eot_id: 5,
    train_tokens: 0,
    val_tokens: 0,
    val_fraction: 0.1,
  };
  await exportHfModel({ config, tokenizer, params }, dir);
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tinyTokenizer()));
  const model = await loadHfModel(dir);
  assert.equal(model.tokenizer.name, "tokenizer.json");
  assert.equal(model.tokenizer.eotId, 5, "generation_config.json's eos_token_id");
  assert.deepEqual(model.tokenizer.encode("hello"), [HELLO]);
  const named = await loadHfModel(dir, { tokenizer: "gpt2" }).catch((error) => error);
  assert.match(String(named), /50257 ids but the model .* only 263/);
});

Deno.test("deno task sample --init_from hf:DIR samples with the folder's tokenizer.json", async () => {
  const dir = join(DIR, "model"); // written by the test above
  const sampled = await runTask("sample", [
    `--init_from=hf:${dir}`,
    "--start=hello world",
    "--max_new_tokens=3",
    "--num_samples=1",
  ]);
  assert.equal(sampled.code, 0, sampled.stderr);
  assert.match(sampled.stdout, /^hello world/);
  const window = await runTask("sample", [`--init_from=hf:${dir}`, "--block_size=2", "--max_new_tokens=5"]);
  assert.equal(window.code, 0, window.stderr);
  const tooLong = await runTask("sample", [`--init_from=hf:${dir}`, "--block_size=5"]);
  assert.equal(tooLong.code, 2);
  assert.match(tooLong.stderr, /^error: --block_size must be between 1 and the model's 4, got 5\n$/);
  const wrong = await runTask("sample", [`--init_from=${dir}`]);
  assert.equal(wrong.code, 2);
  assert.match(
    wrong.stderr,
    /^error: --init_from must be hf:DIR, got "tests\/tmp\/hf_tokenizer\/model"; .*\n$/,
  );
});

Deno.test("an export of a gpt2 or cl100k_base model carries a tokenizer.json that encodes as tiktoken does", async () => {
  const texts = [
    "Hello world! It's 2024; naïve café, 12345 tokens.\n\n  indented\tTabs   and  spaces ",
    "三国演义：滚滚长江东逝水，浪花淘尽英雄。<|endoftext|>Next document 😀 ✓",
    "  ''s don't I'LL  \r\n\r\n x",
  ];
  for (const [name, vocabSize] of [["gpt2", 50304], ["cl100k_base", 100352]] as const) {
    const dir = join(DIR, `export-${name}`);
    const config = resolveModelConfig({
      n_layer: 1,
      n_head: 1,
      n_embd: 2,
      block_size: 8,
      vocab_size: vocabSize,
    });
    const ours = await loadTokenizer(name);
    const meta = {
      tokenizer: name,
      vocab_size: ours.vocabSize,
      dtype: tokenDType(ours.vocabSize),
      eot_id: ours.eotId,
      train_tokens: 0,
      val_tokens: 0,
      val_fraction: 0.1,
    };
    const files = await exportHfModel({
      config,
      tokenizer: meta,
      params: new Float32Array(paramLayout(config).total),
    }, dir);
    assert.ok(files.includes(join(dir, "tokenizer.json")), `${name}: tokenizer.json written`);
    const tokenizerConfig = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json")));
    assert.equal(tokenizerConfig.eos_token, "<|endoftext|>");
    const theirs = (await loadHfModel(dir)).tokenizer;
    assert.equal(theirs.vocabSize, ours.vocabSize);
    assert.equal(theirs.eotId, ours.eotId);
    for (const text of texts) {
      const ids = ours.encode(text);
      assert.deepEqual(theirs.encode(text), ids, `${name}: ${JSON.stringify(text)}`);
      assert.equal(theirs.decode(ids), text);
    }
  }
});

Deno.test("training from a folder checks that the dataset's ids mean the same text to its tokenizer.json", async () => {
  const dir = join(DIR, "export-gpt2"); // written by the test above, with gpt2's tokenizer.json
  const gpt2 = await loadTokenizer("gpt2");
  const val = Uint16Array.from(gpt2.encode("First Citizen:\nBefore we proceed any further, hear me speak."));
  const meta = {
    tokenizer: "gpt2" as const,
    vocab_size: 50257,
    dtype: "uint16" as const,
    eot_id: 50256,
    train_tokens: 0,
    val_tokens: val.length,
    val_fraction: 0.1,
  };
  const { checkpoint, note } = await hfTrainingStart(dir, { meta, val }, { block_size: 4, dropout: 0.1 });
  assert.equal(note, null);
  assert.equal(checkpoint.config.block_size, 4);
  assert.equal(checkpoint.config.dropout, 0.1);
  assert.equal(checkpoint.config.vocab_size, 50304);

  const chars = Array.from({ length: 65 }, (_, i) => String.fromCharCode(40 + i));
  const charMeta = { ...meta, tokenizer: "char" as const, chars, vocab_size: 65, eot_id: null };
  const charVal = Uint16Array.from({ length: 50 }, (_, i) => i);
  await assert.rejects(
    hfTrainingStart(dir, { meta: charMeta, val: charVal }, { block_size: 4, dropout: 0 }),
    /The dataset.s char token ids mean other text to .*tokenizer\.json; prepare the data with the model.s vocabulary/,
  );
  await assert.rejects(
    hfTrainingStart(dir, { meta, val }, { block_size: 16, dropout: 0 }),
    /block_size 16 exceeds the max_position_embeddings 8 of .*; lower --block_size/,
  );
});
