/**
 * Runs a project CLI in a subprocess, as a user would through `deno task`, and
 * captures its exit code and output.
 *
 * @module
 */

/** What a CLI run returned. */
export interface CliResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/**
 * Runs `deno task <task> ...args` from the project root.
 *
 * @param task A task name from deno.json.
 * @param args Its arguments.
 * @param env Extra environment variables.
 */
export function runTask(
  task: string,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<CliResult> {
  return runDeno(["task", "-q", task, ...args], env);
}

/**
 * Runs `deno ...args` from the project root.
 *
 * @param args The deno subcommand and its arguments, e.g. ["doc", "--lint", "mod.ts"].
 * @param env Extra environment variables.
 */
export async function runDeno(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const root = new URL("..", import.meta.url).pathname;
  const output = await new Deno.Command("deno", {
    args,
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

/**
 * Starts `scripts/train.ts` with the train task's permissions as a child process
 * that a test can watch, signal or kill while it runs.
 *
 * @param args Training flags.
 * @param stdout Whether the test reads standard output.
 * @returns The child; standard error is piped.
 */
export function spawnTrain(args: string[], stdout: "piped" | "null"): Deno.ChildProcess {
  return new Deno.Command("deno", {
    args: [
      "run",
      "--allow-read=.",
      "--allow-write=.",
      "--allow-env=XDG_RUNTIME_DIR,DENO_WEBGPU_BACKEND",
      "scripts/train.ts",
      ...args,
    ],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout,
    stderr: "piped",
  }).spawn();
}

/** Environment that hides every Vulkan driver: no adapter, since only Vulkan is tried by default. */
export const NO_ADAPTER: Record<string, string> = { VK_DRIVER_FILES: "/nonexistent/icd.json" };

/** Environment that leaves only wgpu's OpenGL backend: an adapter without f16. */
export const GL_ONLY: Record<string, string> = { ...NO_ADAPTER, DENO_WEBGPU_BACKEND: "gl" };
