/**
 * Finds what the JSDoc of a package entry point lacks, from `deno doc --json`:
 * every exported symbol needs a description and an `@example`; every function,
 * method and public constructor an `@param` per named parameter and an
 * `@returns` unless it returns nothing; every property and member a description.
 * `deno doc --lint` checks only that docs exist, not that they say this much.
 *
 * @module
 */

// deno-lint-ignore no-explicit-any
type Json = any;

/**
 * Runs `deno doc --json` on an entry point and lists its documentation gaps.
 *
 * @param entry The entry point file, e.g. "mod.ts".
 * @returns One line per gap, e.g. "function matmul: no @example"; empty when complete.
 */
export function docGaps(entry: string): string[] {
  const output = new Deno.Command("deno", {
    args: ["doc", "--json", entry],
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  if (!output.success) {
    throw new Error(`deno doc --json ${entry} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  const doc = JSON.parse(new TextDecoder().decode(output.stdout));
  const gaps: string[] = [];
  for (const module of Object.values(doc.nodes) as Json[]) {
    for (const symbol of module.symbols) {
      for (const declaration of symbol.declarations) {
        const where = `${declaration.kind} ${symbol.name}`;
        const doc = declaration.jsDoc;
        if (!doc?.doc?.trim()) gaps.push(`${where}: no description`);
        if (!(doc?.tags ?? []).some((tag: Json) => tag.kind === "example")) {
          gaps.push(`${where}: no @example`);
        }
        gaps.push(...memberGaps(where, declaration));
      }
    }
  }
  return gaps;
}

function memberGaps(where: string, declaration: Json): string[] {
  const def = declaration.def ?? {};
  switch (declaration.kind) {
    case "function":
      return signatureGaps(where, declaration.jsDoc, def);
    case "class": {
      const gaps: string[] = [];
      for (const constructor of def.constructors ?? []) {
        if (constructor.accessibility === "private") continue;
        gaps.push(...signatureGaps(`${where} constructor`, constructor.jsDoc, constructor));
      }
      for (const method of def.methods ?? []) {
        if (method.accessibility === "private" || method.name.startsWith("#")) continue;
        const name = `${where}.${method.name}`;
        if (!method.jsDoc?.doc?.trim()) gaps.push(`${name}: no description`);
        if (method.kind === "method") gaps.push(...signatureGaps(name, method.jsDoc, method.functionDef));
      }
      for (const property of def.properties ?? []) {
        if (property.accessibility === "private" || property.name.startsWith("#")) continue;
        if (!property.jsDoc?.doc?.trim()) gaps.push(`${where}.${property.name}: no description`);
      }
      return gaps;
    }
    case "interface": {
      const gaps: string[] = [];
      for (const member of [...(def.properties ?? []), ...(def.methods ?? [])]) {
        if (!member.jsDoc?.doc?.trim()) gaps.push(`${where}.${member.name}: no description`);
      }
      return gaps;
    }
    default:
      return [];
  }
}

function signatureGaps(where: string, jsDoc: Json, signature: Json): string[] {
  const tags = jsDoc?.tags ?? [];
  const documented = new Set(tags.filter((tag: Json) => tag.kind === "param").map((tag: Json) => tag.name));
  const gaps: string[] = [];
  for (const param of signature.params ?? []) {
    const name = param.kind === "assign" ? param.left?.name : param.name;
    if (name && !documented.has(name)) gaps.push(`${where}: no @param ${name}`);
  }
  const returnsNothing = isNothing(signature.returnType);
  if (!returnsNothing && !tags.some((tag: Json) => tag.kind === "return")) gaps.push(`${where}: no @returns`);
  return gaps;
}

/** `void`, `Promise<void>` or no declared type (`deno doc` spells Promise<void> as a typeRef "Promise"). */
function isNothing(type: Json): boolean {
  if (!type || type.repr === "void" || type.repr === "") return true;
  const params = type.kind === "typeRef" && type.value?.typeName === "Promise" ? type.value.typeParams : null;
  return params?.length === 1 && params[0].repr === "void";
}
