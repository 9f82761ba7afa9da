import assert from "node:assert/strict";
import { Tiktoken } from "js-tiktoken/lite";
import { DataError } from "../model/errors.ts";
import type { DatasetMeta } from "../model/meta.ts";
import { lastSafeCut } from "../model/text_stream.ts";
import {
  CharTokenizer,
  EOT,
  loadTokenizer,
  type Tokenizer,
  TOKENIZER_NAMES,
  tokenizerFromMeta,
} from "../model/tokenizer.ts";

// Token ids are exact: every comparison here is equality, there is no tolerance.

const BPE = ["gpt2", "cl100k_base", "o200k_base"] as const;
const ENGLISH = (await Deno.readTextFile(new URL("../data/shakespeare/input.txt", import.meta.url))).slice(
  0,
  20_000,
);
const CHINESE = (await Deno.readTextFile(new URL("../data/sanguo/input.txt", import.meta.url))).slice(
  0,
  3_000,
);
// Whitespace runs, CRLF, punctuation before line breaks, "/" after one, contractions, digits,
// combining marks, emoji (surrogate pairs), full-width and no-break spaces, special-token look-alikes.
const TRICKY = "Hello, world!\n\nIt's 12345 o'clock.\r\n  indented\tline \n/slash\n\n\n" +
  "caf\u00e9 cafe\u0301 😀👍🏽 中文。\u3000全角\u00a0nbsp... ---\n<|fim_prefix|> <|endoftext|>x\n \n";

const js = new Map<string, Tiktoken>();
async function jsTiktoken(name: (typeof BPE)[number]): Promise<Tiktoken> {
  if (!js.has(name)) {
    const ranks = name === "gpt2"
      ? await import("js-tiktoken/ranks/gpt2")
      : name === "cl100k_base"
      ? await import("js-tiktoken/ranks/cl100k_base")
      : await import("js-tiktoken/ranks/o200k_base");
    js.set(name, new Tiktoken(ranks.default));
  }
  return js.get(name)!;
}

/** js-tiktoken with our special-token policy: `<|endoftext|>` special, every other special plain text. */
async function reference(name: (typeof BPE)[number], text: string): Promise<number[]> {
  return (await jsTiktoken(name)).encode(text, [EOT], []);
}

/** A seeded generator (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  "a",
  "bc",
  "Word",
  "THE",
  " ",
  "  ",
  "\n",
  "\n\n",
  "\r\n",
  "\t",
  ".",
  "!?",
  "'s",
  "'",
  "/",
  "1",
  "234",
  "中",
  "文字",
  "。",
  "é",
  "e\u0301",
  "😀",
  "\u00a0",
  "\u3000",
  "<|endoftext|>",
  "<|fim_prefix|>",
  "-",
  ":",
];

function randomText(random: () => number, pieces: number): string {
  let text = "";
  for (let i = 0; i < pieces; i++) text += PIECES[Math.floor(random() * PIECES.length)];
  return text;
}

function charTokenizerFor(text: string): CharTokenizer {
  const chars = [...new Set(text.replaceAll(EOT, ""))].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
  return new CharTokenizer(chars, text.includes(EOT));
}

Deno.test("the byte-pair tokenizers give js-tiktoken's ids on English, Chinese and tricky text", async () => {
  for (const name of BPE) {
    const tokenizer = await loadTokenizer(name);
    for (const [what, text] of [["English", ENGLISH], ["Chinese", CHINESE], ["tricky", TRICKY]]) {
      assert.deepEqual(tokenizer.encode(text), await reference(name, text), `${name} on ${what} text`);
    }
  }
});

Deno.test("the byte-pair tokenizers give js-tiktoken's ids on random text", async () => {
  const random = rng(7);
  for (let round = 0; round < 40; round++) {
    const text = randomText(random, 120);
    for (const name of BPE) {
      assert.deepEqual(
        (await loadTokenizer(name)).encode(text),
        await reference(name, text),
        `${name}: ${JSON.stringify(text)}`,
      );
    }
  }
});

Deno.test("every tokenizer decodes what it encodes, Chinese with cl100k_base included", async () => {
  for (const name of TOKENIZER_NAMES) {
    for (const text of [ENGLISH, CHINESE, TRICKY, ""]) {
      const tokenizer = name === "char"
        ? charTokenizerFor(ENGLISH + CHINESE + TRICKY)
        : await loadTokenizer(name);
      assert.equal(tokenizer.decode(tokenizer.encode(text)), text, `${name} round trip`);
    }
  }
  const cl100k = await loadTokenizer("cl100k_base");
  const ids = cl100k.encode("三国演义，罗贯中。");
  assert.ok(ids.length < 9 * 3, "Chinese merges into fewer ids than UTF-8 bytes");
  assert.equal(cl100k.decode(ids), "三国演义，罗贯中。");
});

Deno.test("<|endoftext|> in the text is the end-of-text token, never its pieces", async () => {
  const expected = { gpt2: [50257, 50256], cl100k_base: [100277, 100257], o200k_base: [200019, 199999] };
  for (const name of BPE) {
    const tokenizer = await loadTokenizer(name);
    assert.deepEqual([tokenizer.vocabSize, tokenizer.eotId], expected[name], `${name} vocabulary and eot id`);
    const ids = tokenizer.encode(`a${EOT}b${EOT}`);
    assert.deepEqual(ids, [
      ...tokenizer.encode("a"),
      tokenizer.eotId,
      ...tokenizer.encode("b"),
      tokenizer.eotId,
    ]);
    assert.equal(tokenizer.decode(ids), `a${EOT}b${EOT}`);
    // Other special tokens stay plain text: a corpus cannot smuggle in control tokens.
    assert.ok(tokenizer.encode("<|fim_prefix|>").length > 1, `${name}: <|fim_prefix|> is text`);
  }
  const char = charTokenizerFor(`ab${EOT}`);
  assert.deepEqual([char.vocabSize, char.eotId], [3, 2]);
  assert.deepEqual(char.encode(`ba${EOT}a`), [1, 0, 2, 0]);
  assert.equal(char.decode([1, 0, 2, 0]), `ba${EOT}a`);
});

Deno.test("the char vocabulary is the distinct code points in code point order (nanoGPT's sorted(set(text)))", async () => {
  // UTF-16 order would put 😀 (U+1F600, stored as D83D DE00) before U+E000; code point order puts it after.
  const text = "b\uE000a😀\n中b";
  const chars = ["\n", "a", "b", "中", "\uE000", "😀"];
  const tokenizer = await loadTokenizer("char", { chars });
  assert.equal(tokenizer.vocabSize, 6);
  assert.equal(tokenizer.eotId, null);
  assert.deepEqual(tokenizer.encode(text), [2, 4, 1, 5, 0, 3, 2]);
  assert.equal(tokenizer.decode(tokenizer.encode(text)), text);
  assert.throws(() => tokenizer.encode("abc"), (error: Error) => {
    assert.ok(error instanceof DataError);
    assert.equal(
      error.message,
      'Character "c" (U+0063) is not in the character vocabulary of 6; use only characters of the training text',
    );
    return true;
  });
  assert.throws(() => tokenizer.decode([6]), /Token id 6 is not in the character vocabulary of 6/);
  await assert.rejects(() => loadTokenizer("char"), /needs its character vocabulary/);
});

Deno.test("a tokenizer built from meta.json is the one prepare used", async () => {
  const meta: DatasetMeta = {
    tokenizer: "char",
    vocab_size: 4,
    dtype: "uint16",
    eot_id: 3,
    train_tokens: 0,
    val_tokens: 0,
    val_fraction: 0.1,
    chars: ["a", "b", "c"],
  };
  const char = await tokenizerFromMeta(meta);
  assert.deepEqual(char.encode(`cab${EOT}`), [2, 0, 1, 3]);
  const gpt2 = await tokenizerFromMeta({
    ...meta,
    tokenizer: "gpt2",
    vocab_size: 50257,
    eot_id: 50256,
    chars: undefined,
  });
  assert.equal(gpt2.name, "gpt2");
  assert.deepEqual(gpt2.encode("Hello world"), [15496, 995]);
  assert.throws(() => gpt2.decode([50257]), /Token id 50257 is not in the gpt2 vocabulary of 50257/);
});

Deno.test("cutting text where lastSafeCut says gives the same ids as encoding it whole, every tokenizer", async () => {
  const random = rng(11);
  const tokenizers: Tokenizer[] = await Promise.all(BPE.map((name) => loadTokenizer(name)));
  let cuts = 0;
  for (let round = 0; round < 60; round++) {
    const text = randomText(random, 150);
    const all = [...tokenizers, charTokenizerFor(text)];
    for (let k = 0; k < 6; k++) {
      const cut = lastSafeCut(text.slice(0, 1 + Math.floor(random() * text.length)));
      if (cut <= 0) continue;
      cuts++;
      for (const tokenizer of all) {
        const halves = [...tokenizer.encode(text.slice(0, cut)), ...tokenizer.encode(text.slice(cut))];
        assert.deepEqual(
          halves,
          tokenizer.encode(text),
          `${tokenizer.name} cut at ${cut} of ${JSON.stringify(text)}`,
        );
      }
    }
  }
  assert.ok(cuts > 100, `only ${cuts} cuts were tried`);
});

Deno.test("lastSafeCut prefers a lone line break between non-space characters, then a space after a word", () => {
  assert.equal(lastSafeCut("ab\ncd\n\nef"), 3, "a double line break is no cut, a lone one is");
  assert.equal(
    lastSafeCut("ab\r\ncd"),
    -1,
    "CRLF is no line cut (gpt2 splits \\r\\n differently at the end)",
  );
  assert.equal(lastSafeCut("a.\n/x"), -1, "o200k glues / to line breaks");
  assert.equal(lastSafeCut("one two\r\nthree"), 3, "fallback: before the space that follows a word");
  assert.equal(lastSafeCut("中文中文"), -1);
  assert.equal(lastSafeCut("x\n"), -1, "the last character decides nothing: what follows is unknown");
});
