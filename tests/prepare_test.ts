import assert from "node:assert/strict";
import { join } from "node:path";
import { Tiktoken } from "js-tiktoken/lite";
import { DataError } from "../model/errors.ts";
import { checkMeta, readMeta, readTokens } from "../model/meta.ts";
import { prepareDataset, type PrepareOptions } from "../model/prepare.ts";
import { listSources, readTextChunks } from "../model/text_stream.ts";
import {
  EOT,
  loadTokenizer,
  type Tokenizer,
  TOKENIZER_NAMES,
  tokenizerFromMeta,
} from "../model/tokenizer.ts";

// Token ids and counts are exact: every comparison here is equality, there is no tolerance.

const ROOT = new URL("..", import.meta.url).pathname;
const TMP = join(ROOT, "tests/tmp");
const SHAKESPEARE = join(ROOT, "data/shakespeare_char/input.txt");
const encoder = new TextEncoder();

/** Runs `body` with a fresh folder under tests/tmp, removed afterwards. */
async function withTmp(body: (dir: string) => Promise<void>): Promise<void> {
  await Deno.mkdir(TMP, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: TMP, prefix: "prepare-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Prepares quietly (warnings collected, not printed). */
function prepare(options: PrepareOptions) {
  return prepareDataset({ onWarning: () => {}, ...options });
}

/** nanoGPT's split: the first int(n * (1 - f)) code points are train; an <|endoftext|> is not cut. */
function nanoSplit(text: string, valFraction: number): [string, string] {
  const points = [...text];
  let index = points.slice(0, Math.floor(points.length * (1 - valFraction))).join("").length;
  const start = text.lastIndexOf(EOT, index - 1);
  if (start >= 0 && start < index && index < start + EOT.length) index = start + EOT.length;
  return [text.slice(0, index), text.slice(index)];
}

/** nanoGPT's character vocabulary: sorted(set(text)), in code point order, and <|endoftext|> last if used. */
async function charTokenizer(text: string): Promise<Tokenizer> {
  const chars = [...new Set(text.replaceAll(EOT, ""))].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
  return await loadTokenizer("char", { chars, eot: text.includes(EOT) });
}

async function expectTokens(
  dir: string,
  tokenizer: Tokenizer,
  text: string,
  valFraction: number,
  what: string,
) {
  const [train, val] = nanoSplit(text, valFraction);
  assert.deepEqual([...await readTokens(dir, "train")], tokenizer.encode(train), `${what}: train.bin`);
  assert.deepEqual([...await readTokens(dir, "val")], tokenizer.encode(val), `${what}: val.bin`);
}

async function files(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) names.push(entry.name);
  return names.sort();
}

// Multi-byte characters (3-byte Han, 4-byte emoji, combining marks), CRLF, blank-line runs,
// "/" after a line break, an <|endoftext|> in the text, and lines of every length.
const MIXED = [
  "First Citizen:",
  "Before we proceed any further, hear me speak.",
  "",
  "第一回　宴桃园豪杰三结义　斩黄巾英雄首立功",
  "话说天下大势，分久必合，合久必分。",
  "emoji 😀👍🏽 and café / cafe\u0301",
  "  indented line\twith a tab",
  "a.",
  "/path/like/this",
  "It's 12345 o'clock!",
  EOT,
  "crlf line\r",
  "x",
  "",
  "",
  "\u3000全角 and no\u00a0break",
].join("\n").repeat(5);

Deno.test("Tiny Shakespeare at character level equals nanoGPT's shakespeare_char (1,003,854 + 111,540, vocabulary 65)", async () => {
  await withTmp(async (dir) => {
    const { meta, warnings } = await prepare({ input: SHAKESPEARE, out: dir });
    assert.deepEqual(warnings, []);
    assert.equal(meta.tokenizer, "char");
    assert.equal(meta.vocab_size, 65);
    assert.equal(meta.dtype, "uint16");
    assert.equal(meta.eot_id, null);
    assert.equal(meta.train_tokens, 1_003_854);
    assert.equal(meta.val_tokens, 111_540);
    assert.deepEqual(await readMeta(dir), meta);
    assert.equal((await Deno.stat(join(dir, "train.bin"))).size, 2 * 1_003_854, "uint16: two bytes per id");
    const text = await Deno.readTextFile(SHAKESPEARE);
    assert.equal(meta.chars!.join(""), [...new Set(text)].sort().join(""));
    await expectTokens(dir, await charTokenizer(text), text, 0.1, "shakespeare_char");
    assert.deepEqual(await files(dir), ["meta.json", "train.bin", "val.bin"], "no temporary files are left");
  });
});

Deno.test("Tiny Shakespeare with gpt2 equals nanoGPT's shakespeare (301,966 + 36,059 tokens)", async () => {
  await withTmp(async (dir) => {
    const { meta } = await prepare({ input: SHAKESPEARE, out: dir, tokenizer: "gpt2" });
    assert.deepEqual(
      [meta.train_tokens, meta.val_tokens, meta.vocab_size, meta.dtype, meta.eot_id],
      [301_966, 36_059, 50257, "uint16", 50256],
    );
    // nanoGPT encodes the last 10% of the text on its own with tiktoken: so does js-tiktoken here.
    const [, valText] = nanoSplit(await Deno.readTextFile(SHAKESPEARE), 0.1);
    const gpt2 = new Tiktoken((await import("js-tiktoken/ranks/gpt2")).default);
    assert.deepEqual([...await readTokens(dir, "val")], gpt2.encode(valText, [], []));
  });
});

Deno.test("ids are uint16 when the vocabulary fits in 16 bits, uint32 otherwise", async () => {
  await withTmp(async (dir) => {
    const { meta } = await prepare({
      input: SHAKESPEARE,
      out: join(dir, "cl100k"),
      tokenizer: "cl100k_base",
    });
    assert.equal(meta.dtype, "uint32");
    assert.equal((await Deno.stat(join(dir, "cl100k/val.bin"))).size, 4 * meta.val_tokens);
    assert.ok(
      [...await readTokens(join(dir, "cl100k"), "val")].some((id) => id > 65535),
      "ids above 16 bits",
    );

    // 70,000 distinct characters: a character vocabulary that no longer fits in uint16.
    const points = Array.from({ length: 70_000 }, (_, i) => i < 20_000 ? 0x4e00 + i : 0x20000 + i);
    const text = String.fromCodePoint(...points);
    await Deno.writeTextFile(join(dir, "wide.txt"), text);
    const wide = await prepare({ input: join(dir, "wide.txt"), out: join(dir, "wide") });
    assert.deepEqual([wide.meta.vocab_size, wide.meta.dtype], [70_000, "uint32"]);
    await expectTokens(join(dir, "wide"), await charTokenizer(text), text, 0.1, "70,000 characters");
  });
});

Deno.test("val_fraction splits at int(n·(1−f)) characters, as nanoGPT does; 0 leaves val.bin empty", async () => {
  await withTmp(async (dir) => {
    const input = join(dir, "mixed.txt");
    await Deno.writeTextFile(input, MIXED);
    const n = [...MIXED].length;
    for (const valFraction of [0.25, 0.5, 0]) {
      for (const tokenizer of ["char", "gpt2"] as const) {
        const out = join(dir, `${tokenizer}-${valFraction}`);
        const { meta, warnings } = await prepare({ input, out, tokenizer, valFraction });
        await expectTokens(
          out,
          await tokenizerFromMeta(meta),
          MIXED,
          valFraction,
          `${tokenizer} f=${valFraction}`,
        );
        assert.equal(meta.source?.characters, n);
        if (tokenizer === "char" && valFraction === 0.25) {
          assert.equal(
            meta.train_tokens + meta.val_tokens,
            n - 5 * (EOT.length - 1),
            "one id per <|endoftext|>",
          );
        }
        if (valFraction === 0) {
          assert.equal(meta.val_tokens, 0);
          assert.match(warnings.join("\n"), /val\.bin has only 0 tokens/);
        }
      }
    }
  });
});

Deno.test("streaming with reads of 1 to 7 bytes (characters split across reads) gives the one-shot ids, every tokenizer", async () => {
  await withTmp(async (dir) => {
    const input = join(dir, "mixed.txt");
    await Deno.writeTextFile(input, MIXED);
    const chunks: string[] = [];
    for await (const chunk of readTextChunks(await listSources(input), { chunkBytes: 16 })) {
      chunks.push(chunk.text);
    }
    assert.ok(chunks.length > 20, `a small chunk size gives many chunks (${chunks.length})`);
    assert.equal(chunks.join(""), MIXED);
    for (const tokenizer of TOKENIZER_NAMES) {
      const reference = tokenizer === "char" ? await charTokenizer(MIXED) : await loadTokenizer(tokenizer);
      for (const chunkBytes of [1, 2, 3, 5, 7, 64]) {
        const out = join(dir, `${tokenizer}-${chunkBytes}`);
        await prepare({ input, out, tokenizer, chunkBytes });
        await expectTokens(out, reference, MIXED, 0.1, `${tokenizer}, ${chunkBytes}-byte reads`);
      }
    }
  });
});

Deno.test("a text with no place to cut is cut anyway, with a warning, so memory stays bounded", async () => {
  await withTmp(async (dir) => {
    const text = "中".repeat(3000);
    await Deno.writeTextFile(join(dir, "line.txt"), text);
    const { warnings } = await prepare({
      input: join(dir, "line.txt"),
      out: dir,
      chunkBytes: 64,
      maxUncutChars: 1000,
    });
    assert.match(
      warnings[0],
      /^No line break in \d+ characters before byte \d+ of the input; cut the text mid-line/,
    );
    await expectTokens(dir, await charTokenizer(text), text, 0.1, "force-cut text");
  });
});

Deno.test("a folder: files in name order, concatenated, or joined with <|endoftext|> under eot", async () => {
  await withTmp(async (dir) => {
    await Deno.mkdir(join(dir, "sub"));
    await Deno.writeTextFile(join(dir, "b.txt"), "world\n");
    await Deno.writeTextFile(join(dir, "a.txt"), "hello\n");
    await Deno.writeTextFile(join(dir, "sub/c.txt"), "!\n");
    await Deno.writeTextFile(join(dir, ".hidden"), "not text \xff");
    const plain = await prepare({ input: dir, out: dir, valFraction: 0 });
    const text = "hello\nworld\n!\n";
    assert.equal((await tokenizerFromMeta(plain.meta)).decode(await readTokens(dir, "train")), text);
    assert.equal(plain.meta.eot_id, null);

    // Into the same folder again: its outputs (train.bin, val.bin, meta.json) are not read as input.
    const joined = await prepare({ input: dir, out: dir, valFraction: 0, eot: true, force: true });
    const tokenizer = await tokenizerFromMeta(joined.meta);
    assert.equal(tokenizer.decode(await readTokens(dir, "train")), `hello\n${EOT}world\n${EOT}!\n`);
    assert.equal(joined.meta.eot_id, joined.meta.chars!.length);
    assert.equal([...await readTokens(dir, "train")].filter((id) => id === joined.meta.eot_id).length, 2);
  });
});

Deno.test("<|endoftext|> written in the text is one special token for every tokenizer", async () => {
  await withTmp(async (dir) => {
    const input = join(dir, "doc.txt");
    await Deno.writeTextFile(input, `one${EOT}two`);
    for (const tokenizer of TOKENIZER_NAMES) {
      const { meta } = await prepare({ input, out: join(dir, tokenizer), tokenizer, valFraction: 0 });
      const ids = [...await readTokens(join(dir, tokenizer), "train")];
      assert.equal(ids.filter((id) => id === meta.eot_id).length, 1, `${tokenizer}: one end-of-text id`);
      assert.equal((await tokenizerFromMeta(meta)).decode(ids), `one${EOT}two`);
    }
  });
});

Deno.test("missing, empty and not-UTF-8 inputs fail with one line naming the file (and the byte)", async () => {
  await withTmp(async (dir) => {
    const out = join(dir, "out");
    const fails = (input: string, message: string | RegExp, options: Partial<PrepareOptions> = {}) =>
      assert.rejects(() => prepare({ input, out, ...options }), (error: Error) => {
        assert.ok(error instanceof DataError, String(error));
        if (typeof message === "string") assert.equal(error.message, message);
        else assert.match(error.message, message);
        return true;
      });
    await fails(join(dir, "nope.txt"), `Input "${join(dir, "nope.txt")}" not found; check --input`);
    await Deno.writeFile(join(dir, "empty.txt"), new Uint8Array());
    await fails(
      join(dir, "empty.txt"),
      `Input "${join(dir, "empty.txt")}" is empty; give a text with something in it`,
    );
    await Deno.mkdir(join(dir, "hollow"));
    await fails(join(dir, "hollow"), `Input folder "${join(dir, "hollow")}" has no files; check --input`);

    const bad = join(dir, "bad.txt");
    const badAt = (bytes: number[], offset: number, byte: string, chunkBytes?: number) => {
      return Deno.writeFile(bad, Uint8Array.from(bytes)).then(() =>
        fails(
          bad,
          `Input "${bad}" is not UTF-8 at byte ${offset} (0x${byte}); convert it to UTF-8, ` +
            "or pass --replace_invalid to replace such bytes with U+FFFD",
          { chunkBytes },
        )
      );
    };
    await badAt([0x61, 0x62, 0x63, 0xff, 0x64], 3, "ff");
    await badAt([...encoder.encode("ab中"), 0x61, 0xe4, 0x41], 6, "e4", 2); // bad continuation, 2-byte reads
    await badAt([...encoder.encode("ab\n中"), 0xe4, 0xb8], 6, "e4", 3); // truncated at the end of the file
    await badAt([0x61, 0xed, 0xa0, 0x80], 1, "ed"); // an encoded surrogate
    assert.deepEqual(await files(out), [], "failed runs leave no files");

    const { meta } = await prepare({ input: bad, out, replaceInvalid: true, valFraction: 0 });
    assert.deepEqual(meta.chars, ["a", "\uFFFD"]);
  });
});

Deno.test("existing outputs need force, an unwritable output folder and bad options fail with one line", async () => {
  await withTmp(async (dir) => {
    const input = join(dir, "in.txt");
    await Deno.writeTextFile(input, "abc\n");
    await prepare({ input, out: dir });
    const before = await Deno.readFile(join(dir, "train.bin"));
    await Deno.writeTextFile(input, "xyz\n");
    await assert.rejects(
      () => prepare({ input, out: dir }),
      new DataError(`"${join(dir, "train.bin")}" already exists; pass --force to overwrite it`),
    );
    assert.deepEqual(await Deno.readFile(join(dir, "train.bin")), before, "left as it was");
    const { meta } = await prepare({ input, out: dir, force: true });
    assert.deepEqual(meta.chars, ["\n", "x", "y", "z"]);

    await assert.rejects(
      () => prepare({ input, out: join(input, "sub") }),
      /^DataError: Cannot create the output folder ".+in\.txt\/sub": Not a directory; choose another --out$/,
    );
    await assert.rejects(
      () => prepare({ input, out: dir, valFraction: 1 }),
      /val_fraction 1 is outside \[0, 1\)/,
    );
    await assert.rejects(() => prepare({ input, out: dir, valFraction: NaN }), /val_fraction NaN is outside/);
    await assert.rejects(
      // @ts-expect-error: a name that is no tokenizer, as a JS caller might pass
      () => prepare({ input, out: dir, tokenizer: "bert" }),
      /Unknown tokenizer "bert"; choose char, gpt2, cl100k_base or o200k_base/,
    );
  });
});

Deno.test("a split too small for training is a warning with the numbers", async () => {
  await withTmp(async (dir) => {
    await Deno.writeTextFile(join(dir, "small.txt"), "abcdefghij".repeat(100));
    const { warnings } = await prepare({ input: join(dir, "small.txt"), out: dir });
    assert.deepEqual(warnings, [
      "val.bin has only 100 tokens (of 1000, val_fraction 0.1); training needs block_size + 1 tokens per split " +
      "(257 for block_size 256): give more text or change --val_fraction",
    ]);
  });
});

Deno.test("a failed or interrupted run leaves no files, and an older dataset stays whole", async () => {
  await withTmp(async (dir) => {
    const corpus = join(dir, "corpus");
    await Deno.mkdir(corpus);
    await Deno.writeTextFile(join(corpus, "a.txt"), "good text\n".repeat(500));
    const out = join(dir, "out");
    await prepare({ input: corpus, out });
    const old = await Deno.readFile(join(out, "train.bin"));

    await Deno.writeFile(join(corpus, "b.txt"), Uint8Array.from([0x61, 0xc3, 0x28])); // bad second file
    await assert.rejects(() => prepare({ input: corpus, out, force: true }), /is not UTF-8 at byte 1/);
    assert.deepEqual(await files(out), ["meta.json", "train.bin", "val.bin"], "no temporary files");
    assert.deepEqual(await Deno.readFile(join(out, "train.bin")), old);

    await Deno.remove(join(corpus, "b.txt"));
    const controller = new AbortController();
    const fresh = join(dir, "fresh");
    await assert.rejects(
      () =>
        prepare({
          input: corpus,
          out: fresh,
          chunkBytes: 100,
          signal: controller.signal,
          onProgress: (progress) => progress.phase === "encode" && controller.abort(),
        }),
      (error: Error) => error.name === "AbortError",
    );
    assert.deepEqual(await files(fresh), [], "an interrupted run leaves an empty folder");
  });
});

Deno.test("token files are checked against meta.json when read back", async () => {
  await withTmp(async (dir) => {
    await Deno.writeTextFile(join(dir, "in.txt"), "hello world\n".repeat(30));
    const { meta } = await prepare({ input: join(dir, "in.txt"), out: dir, tokenizer: "gpt2" });
    const val = await readTokens(dir, "val", meta);
    assert.ok(val instanceof Uint16Array && val.length === meta.val_tokens);
    await Deno.writeFile(join(dir, "val.bin"), new Uint8Array(3));
    await assert.rejects(
      () => readTokens(dir, "val"),
      new DataError(
        `"${join(dir, "val.bin")}" has 3 bytes but meta.json says ${meta.val_tokens} uint16 tokens ` +
          `(${2 * meta.val_tokens} bytes); run deno task prepare --force again`,
      ),
    );
    assert.throws(
      () => checkMeta({ ...meta, dtype: "uint32" }, "m.json"),
      /dtype "uint32" for a vocabulary of 50257/,
    );
    assert.throws(() => checkMeta({ ...meta, tokenizer: "bpe" }, "m.json"), /an unknown tokenizer "bpe"/);
    await assert.rejects(() => readMeta(join(dir, "none")), /meta\.json" not found; run deno task prepare/);
  });
});

/** Runs a command from the project root with no terminal on stdin. */
async function run(
  command: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(command, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

Deno.test("the task gives the exact deno run command when the input is outside data/, and that command works", async () => {
  await withTmp(async (dir) => {
    const input = join(dir, "in.txt");
    await Deno.writeTextFile(input, "To be, or not to be\n".repeat(100));
    const refused = await run("deno", ["task", "-q", "prepare", "--input", input, "--tokenizer=gpt2"]);
    assert.equal(refused.code, 2, refused.stderr);
    const command =
      `deno run --allow-read=data,${input},${dir} --allow-write=data,${dir} scripts/prepare.ts ` +
      `--input=${input} --tokenizer=gpt2`;
    assert.equal(
      refused.stderr.trim(),
      `error: The prepare task may only touch data/, and this run needs to read "${input}", read "${dir}", ` +
        `write "${dir}"; run instead: ${command}`,
    );
    assert.deepEqual(await files(dir), ["in.txt"]);

    const [deno, ...args] = command.split(" ");
    const done = await run(deno, args);
    assert.equal(done.code, 0, done.stderr);
    assert.equal(
      done.stdout.trim(),
      `${dir}: train.bin 720 tokens, val.bin 80 tokens (uint16); gpt2 vocabulary of 50,257, <|endoftext|> = 50256`,
    );
    assert.match(done.stderr, /^encode +100% .* 800 tokens .*$/m, "a progress line per phase");

    const again = await run(deno, args);
    assert.equal(again.code, 1);
    assert.equal(
      again.stderr.trim(),
      `error: "${join(dir, "train.bin")}" already exists; pass --force to overwrite it`,
    );
    const missing = await run(deno, [...args.slice(0, -2), `--input=${join(dir, "none.txt")}`]);
    assert.equal(missing.stderr.trim(), `error: Input "${join(dir, "none.txt")}" not found; check --input`);
    const bad = await run("deno", ["task", "-q", "prepare", "--tokenizer", "bert"]);
    assert.equal(bad.code, 2);
    assert.equal(
      bad.stderr.trim(),
      'error: Unknown tokenizer "bert"; choose from char, gpt2, cl100k_base, o200k_base',
    );
  });
});

Deno.test("a URL input is downloaded to <out>/input.txt, with network permission only for its host", async () => {
  await withTmp(async (dir) => {
    const text = "Served over HTTP: 三国演义 😀\n".repeat(50);
    await Deno.writeTextFile(join(dir, "corpus.txt"), text);
    await Deno.writeTextFile(
      join(dir, "serve.ts"),
      `const body = await Deno.readFile(${JSON.stringify(join(dir, "corpus.txt"))});
const pages: Record<string, Uint8Array> = { "/corpus.txt": body, "/latin1.txt": Uint8Array.from([0x61, 0xe9, 0x0a]) };
Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: ({ port }) => console.log(port) }, (request) => {
  const page = pages[new URL(request.url).pathname];
  return page ? new Response(page) : new Response("none", { status: 404 });
});`,
    );
    const server = new Deno.Command("deno", {
      args: ["run", "--allow-net=127.0.0.1", `--allow-read=${dir}`, join(dir, "serve.ts")],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const lines = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      let first = "";
      while (!first.includes("\n")) first += (await lines.read()).value ?? "";
      const host = `127.0.0.1:${Number(first.trim())}`;
      const out = join(dir, "web");
      const args = ["run", `--allow-read=${out}`, `--allow-write=${out}`, "scripts/prepare.ts", "--out", out];

      const refused = await run("deno", [...args, "--input", `http://${host}/corpus.txt`]);
      assert.equal(refused.code, 2);
      assert.match(
        refused.stderr,
        new RegExp(`needs to fetch from ${host}; run instead: deno run .*--allow-net=${host} `),
      );

      const done = await run("deno", [
        "run",
        `--allow-net=${host}`,
        ...args.slice(1),
        "--input",
        `http://${host}/corpus.txt`,
      ]);
      assert.equal(done.code, 0, done.stderr);
      assert.equal(await Deno.readTextFile(join(out, "input.txt")), text);
      const meta = await readMeta(out);
      assert.equal(meta.source?.input, `http://${host}/corpus.txt`);
      await expectTokens(out, await tokenizerFromMeta(meta), text, 0.1, "downloaded text");

      const gone = join(dir, "gone");
      const missing = await run("deno", [
        "run",
        `--allow-net=${host}`,
        `--allow-read=${gone}`,
        `--allow-write=${gone}`,
        "scripts/prepare.ts",
        "--out",
        gone,
        "--input",
        `http://${host}/missing.txt`,
      ]);
      assert.equal(missing.code, 1);
      assert.equal(
        missing.stderr.trim(),
        `error: Download of "http://${host}/missing.txt" failed: HTTP 404 Not Found; check the URL`,
      );
      assert.deepEqual(await files(gone), [], "a failed download leaves nothing");

      const latin1 = await run("deno", [
        ...[
          "run",
          `--allow-net=${host}`,
          `--allow-read=${gone}`,
          `--allow-write=${gone}`,
          "scripts/prepare.ts",
        ],
        ...["--out", gone, "--input", `http://${host}/latin1.txt`],
      ]);
      assert.match(
        latin1.stderr,
        new RegExp(`^error: Input "http://${host}/latin1.txt" is not UTF-8 at byte 1 \\(0xe9\\)`, "m"),
      );
      assert.match(latin1.stderr, /^download +100% /m, "the download has its progress line");
      assert.deepEqual(await files(gone), [], "nor does a download that is not UTF-8");
    } finally {
      await lines.cancel();
      server.kill();
      await server.status;
    }
  });
});
