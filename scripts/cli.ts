/**
 * What every CLI shares: strict flag parsing with `--key=value` or `--key value`,
 * `--help`, and one-line errors instead of stack traces.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { GpuError } from "../kernels/errors.ts";
import { tuningWanted } from "../kernels/tune.ts";

/** A flag's type, default and help line. */
export interface FlagSpec {
  /** `"string"` flags take a value; `"boolean"` flags do not. */
  type: "string" | "boolean";
  /** Help text. */
  help: string;
  /** Default value, shown in the help. */
  default?: string | boolean;
  /** Repeatable flag (values collected in an array). */
  multiple?: boolean;
}

/** The `--tune_kernels` flag of the CLIs that run a model without training it (sample, eval). */
export const TUNE_KERNELS_FLAG: FlagSpec = {
  type: "string",
  help: "Time the matmul blockings and attention plans first, keep the fastest: on, off, auto (GPUs)",
  default: "auto",
};

/**
 * Checks a `--tune_kernels` value, before any work starts.
 *
 * @param value The flag's value.
 * @returns It, for `tuningWanted`.
 * @throws {UsageError} On a value other than auto, on or off.
 */
export function tuneKernelsSetting(value: unknown): string {
  try {
    tuningWanted(String(value), false);
  } catch (error) {
    throw new UsageError(`--${(error as Error).message}`);
  }
  return String(value);
}

/** A mistake in how a CLI was called; printed as one line, exit code 2. */
export class UsageError extends Error {
  /** @param message What was wrong and what to do. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Parses `args` against `flags`; unknown flags and stray arguments are refused.
 *
 * @param args `Deno.args`.
 * @param command Name shown in help and errors, e.g. `deno task doctor`.
 * @param flags The accepted flags.
 * @returns Flag values by name (defaults filled in), or null when help was printed.
 */
export function parseFlags(
  args: string[],
  command: string,
  flags: Record<string, FlagSpec>,
): Record<string, string | boolean | string[] | undefined> | null {
  const options: Record<
    string,
    { type: "string" | "boolean"; multiple?: boolean; default?: string | boolean }
  > = { help: { type: "boolean" } };
  for (const [name, spec] of Object.entries(flags)) {
    options[name] = { type: spec.type, multiple: spec.multiple ?? false };
    if (spec.default !== undefined) options[name].default = spec.default;
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (error) {
    throw new UsageError(`${explainParseError((error as Error).message)}; see ${command} --help`);
  }
  if (parsed.values.help) {
    console.log(helpText(command, flags));
    return null;
  }
  return parsed.values as Record<string, string | boolean | string[] | undefined>;
}

function explainParseError(message: string): string {
  const unknown = message.match(/Unknown option '(.+?)'/);
  if (unknown) return `Unknown flag "${unknown[1]}"`;
  const positional = message.match(/Unexpected argument '(.+?)'/);
  if (positional) return `Unexpected argument "${positional[1]}" (flags look like --name=value)`;
  return message.split("\n")[0].replace(/\. To specify.*$/, "");
}

function helpText(command: string, flags: Record<string, FlagSpec>): string {
  const lines = [`Usage: ${command} [flags]`, "", "Flags:"];
  const usage = (name: string, spec: FlagSpec) => `  --${name}${spec.type === "string" ? "=VALUE" : ""}`;
  // The help column starts two spaces past the longest flag, and never before column 28.
  const width = Math.max(26, ...Object.entries(flags).map(([name, spec]) => usage(name, spec).length)) + 2;
  for (const [name, spec] of Object.entries(flags)) {
    const fallback = spec.default !== undefined && spec.default !== false
      ? ` (default: ${spec.default})`
      : "";
    lines.push(usage(name, spec).padEnd(width) + spec.help + fallback);
  }
  lines.push("  --help".padEnd(width) + "Show this help");
  return lines.join("\n");
}

/**
 * Runs a CLI's main function: a known failure prints `error: <one line>` (and
 * any detail lines, such as the WGSL around a compile error) and exits non-zero.
 *
 * @param main The script's body.
 */
export async function runCli(main: () => Promise<number | void>): Promise<void> {
  let code = 0;
  try {
    code = (await main()) ?? 0;
  } catch (error) {
    code = error instanceof UsageError ? 2 : 1;
    const known = error instanceof Error;
    console.error(`error: ${known ? error.message : String(error)}`);
    if (error instanceof GpuError && error.detail) console.error(error.detail);
  }
  Deno.exit(code);
}

/**
 * Reads nanoGPT-style settings, `--key=value`, `--key value` or a bare `--flag`
 * for a boolean, in order; `--help` is noted rather than returned.
 *
 * @param argv The arguments.
 * @param options `isBoolean(key)`: whether a bare `--key` means true; `check(key)`:
 *   throws a {@link UsageError} for a key the command refuses, before its value is read.
 * @returns The settings as [key, value] pairs, and whether --help was given.
 * @throws {UsageError} On an argument that is not a setting, or a setting without a value.
 */
export function readSettings(
  argv: readonly string[],
  options: { isBoolean: (key: string) => boolean; check?: (key: string) => void },
): { settings: [string, string][]; help: boolean } {
  const settings: [string, string][] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const match = argv[i].match(/^--([A-Za-z0-9_]+)(?:=(.*))?$/s);
    if (!match) throw new UsageError(`Unexpected argument "${argv[i]}"; settings look like --key=value`);
    const [, key, inline] = match;
    if (key === "help") {
      help = true;
      continue;
    }
    options.check?.(key);
    let value = inline;
    if (value === undefined) {
      const next = argv[i + 1];
      if (options.isBoolean(key) && (next === undefined || next.startsWith("--"))) value = "true";
      else if (next === undefined) throw new UsageError(`--${key} needs a value; write --${key}=VALUE`);
      else value = argv[++i];
    }
    settings.push([key, value]);
  }
  return { settings, help };
}
