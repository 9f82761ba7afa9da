/**
 * `deno task prepare`: a corpus (file, folder or URL) to nanoGPT-compatible
 * train.bin / val.bin / meta.json. With no flags: Tiny Shakespeare at character
 * level, in data/shakespeare_char/.
 *
 * The task may read and write data/ only. An input or output elsewhere, or a URL,
 * needs more: on a terminal Deno asks; otherwise the error gives the exact
 * `deno run` command with the permissions this run needs.
 *
 * @module
 */

import { dirname, resolve } from "node:path";
import { DATASET_FILES } from "../model/meta.ts";
import { isUrl } from "../model/download.ts";
import { prepareDataset, type PrepareProgress } from "../model/prepare.ts";
import { isTokenizerName, TOKENIZER_NAMES } from "../model/tokenizer.ts";
import { parseFlags, runCli, UsageError } from "./cli.ts";

const COMMAND = "deno task prepare";
const ROOT = resolve(new URL("..", import.meta.url).pathname);

async function main(): Promise<number | void> {
  const flags = parseFlags(Deno.args, COMMAND, {
    input: {
      type: "string",
      help: "Text file, folder of text files, or http(s) URL " +
        "(default: data/shakespeare_char/input.txt; data/shakespeare/input.txt for BPE tokenizers)",
    },
    out: {
      type: "string",
      help: "Dataset folder to write (default: the input's folder; required for a URL)",
    },
    tokenizer: { type: "string", help: `One of ${TOKENIZER_NAMES.join(", ")}`, default: "char" },
    val_fraction: { type: "string", help: "Share of the text, from the end, for val.bin", default: "0.1" },
    eot: { type: "boolean", help: "Join the files of a folder with <|endoftext|>" },
    force: { type: "boolean", help: "Overwrite existing train.bin, val.bin, meta.json" },
    replace_invalid: {
      type: "boolean",
      help: "Replace bytes that are not UTF-8 with U+FFFD instead of failing",
    },
  });
  if (!flags) return;
  const tokenizer = String(flags.tokenizer);
  if (!isTokenizerName(tokenizer)) {
    throw new UsageError(`Unknown tokenizer "${tokenizer}"; choose from ${TOKENIZER_NAMES.join(", ")}`);
  }
  const valFraction = Number(flags.val_fraction);
  if (String(flags.val_fraction).trim() === "" || !(valFraction >= 0 && valFraction < 1)) {
    throw new UsageError(`--val_fraction ${flags.val_fraction} is not a number in [0, 1); use e.g. 0.1`);
  }
  const given = flags.input === undefined
    ? (tokenizer === "char" ? "data/shakespeare_char/input.txt" : "data/shakespeare/input.txt")
    : String(flags.input);
  const url = isUrl(given);
  if (url && flags.out === undefined) throw new UsageError("--out is required with a URL --input");
  const input = url ? given : userPath(given);
  const out = flags.out !== undefined ? userPath(String(flags.out)) : await defaultOut(input);

  await ensurePermissions({
    read: url ? [out] : [input, out],
    write: [out],
    net: url ? [new URL(given).host] : [],
  }, { input, out });

  const controller = new AbortController();
  const interrupt = () => controller.abort();
  Deno.addSignalListener("SIGINT", interrupt);
  const bar = new ProgressLine(Deno.stderr.isTerminal());
  try {
    const { meta } = await prepareDataset({
      input,
      out,
      tokenizer,
      valFraction,
      eot: Boolean(flags.eot),
      force: Boolean(flags.force),
      replaceInvalid: Boolean(flags.replace_invalid),
      onProgress: (progress) => bar.update(progress),
      onWarning: (message) => bar.print(`warning: ${message}`),
      signal: controller.signal,
    });
    bar.end();
    const count = (n: number) => n.toLocaleString("en-US");
    console.log(
      `${out}: ${DATASET_FILES.train} ${count(meta.train_tokens)} tokens, ${DATASET_FILES.val} ` +
        `${count(meta.val_tokens)} tokens (${meta.dtype}); ${meta.tokenizer} vocabulary of ${
          count(meta.vocab_size)
        }` +
        (meta.eot_id === null ? "" : `, <|endoftext|> = ${meta.eot_id}`),
    );
  } catch (error) {
    bar.end();
    if (controller.signal.aborted) {
      console.error("interrupted: no files were written");
      return 130;
    }
    throw error;
  } finally {
    Deno.removeSignalListener("SIGINT", interrupt);
  }
}

/** Where the user ran `deno task` from (INIT_CWD), when that is not the project root it runs in. */
function userCwd(): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: "INIT_CWD" }).state !== "granted") return undefined;
  const cwd = Deno.env.get("INIT_CWD");
  return cwd && resolve(cwd) !== ROOT ? cwd : undefined;
}

/** A path the user typed: relative to where they were, made absolute when that is not the root. */
function userPath(path: string): string {
  const cwd = userCwd();
  return cwd ? resolve(cwd, path) : path;
}

/** The folder of an input file, or the input folder itself. */
async function defaultOut(input: string): Promise<string> {
  try {
    if ((await Deno.stat(input)).isDirectory) return input;
  } catch {
    // A missing input is reported by prepare, naming it.
  }
  return dirname(input);
}

/**
 * Makes sure this process may touch what the run needs: already granted, granted at
 * Deno's prompt on a terminal, or else a usage error with the full command to run.
 */
async function ensurePermissions(
  need: { read: string[]; write: string[]; net: string[] },
  paths: { input: string; out: string },
): Promise<void> {
  const interactive = Deno.stdin.isTerminal() && Deno.stderr.isTerminal();
  const missing: string[] = [];
  const check = async (descriptor: Deno.PermissionDescriptor, what: string) => {
    let state = (await Deno.permissions.query(descriptor)).state;
    if (state === "prompt" && interactive) state = (await Deno.permissions.request(descriptor)).state;
    if (state !== "granted") missing.push(what);
  };
  for (const path of need.read) await check({ name: "read", path }, `read "${path}"`);
  for (const path of need.write) await check({ name: "write", path }, `write "${path}"`);
  for (const host of need.net) await check({ name: "net", host }, `fetch from ${host}`);
  if (missing.length === 0) return;
  // From elsewhere than the root, every path in the command is absolute (userPath made them so).
  const here = (path: string) => (userCwd() ? resolve(ROOT, path) : path);
  const list = (paths: string[]) => [...new Set([here("data"), ...paths])].join(",");
  const command = [
    "deno",
    "run",
    `--allow-read=${list(need.read)}`,
    `--allow-write=${list(need.write)}`,
    ...(need.net.length ? [`--allow-net=${need.net.join(",")}`] : []),
    here("scripts/prepare.ts"),
    ...rewriteArgs(Deno.args, paths),
  ].map(shellQuote).join(" ");
  throw new UsageError(
    `The prepare task may only touch data/, and this run needs to ${
      missing.join(", ")
    }; run instead: ${command}`,
  );
}

/** The user's arguments with --input/--out replaced by the paths as resolved. */
function rewriteArgs(args: string[], paths: { input: string; out: string }): string[] {
  const rewritten: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const match = args[i].match(/^--(input|out)(=.*)?$/);
    if (!match) {
      rewritten.push(args[i]);
      continue;
    }
    if (match[2] === undefined) i++; // the value was the next argument
    rewritten.push(`--${match[1]}=${paths[match[1] as "input" | "out"]}`);
  }
  return rewritten;
}

function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Progress on stderr: a bar redrawn in place on a terminal, a plain line every few seconds otherwise. */
class ProgressLine {
  #tty: boolean;
  #phase = "";
  #last = 0; // when a line was last shown
  #line = ""; // the bar now on screen (terminal)
  #latest: PrepareProgress | null = null;
  #shown = false; // whether #latest is on screen already

  constructor(tty: boolean) {
    this.#tty = tty;
  }

  update(progress: PrepareProgress): void {
    if (progress.phase !== this.#phase) {
      this.end();
      this.#phase = progress.phase;
      this.#last = this.#tty ? -Infinity : performance.now();
    }
    this.#latest = progress;
    this.#shown = false;
    const now = performance.now();
    if (now - this.#last < (this.#tty ? 100 : 5000)) return;
    this.#last = now;
    this.#show(describe(progress, this.#tty));
  }

  /** A line of its own (a warning), without garbling the bar. */
  print(line: string): void {
    if (this.#line) this.#write("\r\x1b[K");
    console.error(line);
    if (this.#line) this.#write(this.#line);
  }

  /** Finishes the current phase with its final figures. */
  end(): void {
    if (this.#latest && !this.#shown) this.#show(describe(this.#latest, this.#tty));
    if (this.#line) this.#write("\n");
    this.#latest = null;
    this.#line = "";
  }

  #show(line: string): void {
    this.#shown = true;
    if (this.#tty) {
      this.#line = line;
      this.#write(`\r\x1b[K${line}`);
    } else {
      console.error(line);
    }
  }

  #write(text: string): void {
    const bytes = new TextEncoder().encode(text);
    for (let at = 0; at < bytes.length;) at += Deno.stderr.writeSync(bytes.subarray(at));
  }
}

function describe(progress: PrepareProgress, bar: boolean): string {
  const { phase, bytesDone, bytesTotal, tokens, elapsedMs } = progress;
  const seconds = elapsedMs / 1000;
  const share = bytesTotal > 0 ? Math.min(1, bytesDone / bytesTotal) : 0;
  const parts = [phase.padEnd(8)];
  if (bar && bytesTotal > 0) {
    const filled = Math.round(share * 24);
    parts.push(`[${"#".repeat(filled)}${"-".repeat(24 - filled)}]`);
  }
  if (bytesTotal > 0) parts.push(`${(share * 100).toFixed(0).padStart(3)}%`);
  parts.push(`${mib(bytesDone)}${bytesTotal > 0 ? ` / ${mib(bytesTotal)}` : ""}`);
  if (seconds > 0) parts.push(`${mib(bytesDone / seconds)}/s`);
  if (phase === "encode") {
    parts.push(`${tokens.toLocaleString("en-US")} tokens`);
    if (seconds > 0) parts.push(`${Math.round(tokens / seconds).toLocaleString("en-US")} tokens/s`);
  }
  if (bytesTotal > 0 && bytesDone > 0 && share < 1) {
    parts.push(`ETA ${clock((seconds * (bytesTotal - bytesDone)) / bytesDone)}`);
  } else {
    parts.push(`${seconds.toFixed(1)} s`);
  }
  return parts.join("  ");
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

await runCli(main);
