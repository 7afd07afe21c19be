// The error analyses view: the analyzer's history (GET /api/analyses), one box per error group
// with its root cause, the proposed patch as a readable diff, and whether auto-dev applied it.
// Everything the server sends is set as text, never as HTML: a patch (the model's words about
// the project's code) may hold any markup, and it must show as written, not run.

const SEARCH = "<<<<<<< SEARCH", DIVIDER = "=======", REPLACE = ">>>>>>> REPLACE";

const el = (tag, text, css) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (css) node.className = css;
  return node;
};

/** The patch as [kind, text] lines: kind is file, hunk, add, del or context. Both forms the
 * analyzer accepts are read: search/replace blocks (the path line, then the lines searched for
 * as deletions and their replacement as additions) and unified diffs. */
export function patchLines(patch) {
  const lines = String(patch).replace(/\r\n/g, "\n").replace(/\n$/, "").split("\n");
  const out = [];
  let block = null;  // null outside a search/replace block, else "search" or "replace"
  for (const line of lines) {
    if (block === null && line.trim() === SEARCH) { block = "search"; continue; }
    if (block === "search" && line.trim() === DIVIDER) { block = "replace"; continue; }
    if (block === "replace" && line.trim() === REPLACE) { block = null; continue; }
    if (block === "search") out.push(["del", "- " + line]);
    else if (block === "replace") out.push(["add", "+ " + line]);
    else if (line.startsWith("diff --git ") || line.startsWith("--- ") || line.startsWith("+++ ")) out.push(["file", line]);
    else if (line.startsWith("@@")) out.push(["hunk", line]);
    else if (line.startsWith("+")) out.push(["add", line]);
    else if (line.startsWith("-")) out.push(["del", line]);
    else if (line.startsWith(" ") || line === "") out.push(["context", line]);
    else out.push(["file", line]);  // a search/replace block's path line
  }
  return out;
}

export function diffView(patch) {
  const pre = el("pre", undefined, "diff");
  for (const [kind, text] of patchLines(patch)) pre.append(el("span", text, "diff-" + kind));
  return pre;
}

/** [label, css] of what became of a suggestion's patch. */
export function appliedState(analysis) {
  const attempt = analysis.autodev;
  const patch = analysis.suggestion?.patch;
  if (attempt) {
    if (attempt.applied) return ["applied", "good"];
    const how = attempt.rolled_back ? "rolled back" : "not applied";
    return [`${how} (${attempt.stage}: ${attempt.reason})`, "bad"];
  }
  if (analysis.status !== "ok") return ["no suggestion", ""];
  return patch ? ["not applied (auto-dev off)", "warn"] : ["no patch proposed", ""];
}

const STATUS_CSS = { ok: "good", failed: "bad", capped: "warn", not_configured: "warn" };

const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");

function field(list, name, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", name), el("dd", String(value)));
}

function analysisBox(a) {
  const box = el("article", undefined, "watch analysis");
  const [applied, appliedCss] = appliedState(a);
  box.dataset.analysisId = a.id;
  box.dataset.status = a.status;
  box.dataset.applied = a.autodev ? String(Boolean(a.autodev.applied)) : "";
  const head = el("header");
  head.append(
    el("strong", a.exc_type || "error"),
    el("span", a.status, "badge " + (STATUS_CSS[a.status] || "")),
    el("span", applied, "badge applied " + appliedCss),
    el("span", `${a.count}× · last ${when(a.last_seen)}`, "muted"),
  );
  box.append(head);
  box.append(el("p", `${a.origin}${a.message ? ": " + a.message : ""}`, "muted message"));
  const s = a.suggestion;
  if (s) {
    box.append(el("p", s.root_cause, "root-cause"));
    const facts = el("dl", undefined, "facts");
    field(facts, "explanation", s.explanation);
    field(facts, "suspect", s.suspect_file ? `${s.suspect_file}${s.suspect_line ? ":" + s.suspect_line : ""}` : null);
    field(facts, "fix", s.fix_description);
    field(facts, "confidence · risk", `${Math.round((s.confidence ?? 0) * 100)}% · ${s.risk}`);
    field(facts, "model", a.model ? `${a.provider}/${a.model} · ${a.input_tokens + a.output_tokens} tokens · $${Number(a.cost_usd || 0).toFixed(4)}` : null);
    box.append(facts);
    if (s.patch) box.append(diffView(s.patch));
  }
  if (a.error) box.append(el("p", a.error, "bad error"));
  if (a.autodev && !a.autodev.applied && a.autodev.test_output_tail) {
    const details = el("details");
    details.append(el("summary", "test output"), el("pre", a.autodev.test_output_tail));
    box.append(details);
  }
  return box;
}

/** Draw GET /api/analyses's answer into `body`. */
export function renderAnalyses(body, data) {
  const items = Array.isArray(data?.analyses) ? data.analyses : [];
  const c = data?.counts;
  const summary = c ? el("p", `${c.analyses} analyses of ${c.occurrences} errors · ${c.model_calls} model calls`
    + ` · ${c.input_tokens + c.output_tokens} tokens · $${Number(c.cost_usd).toFixed(4)}`, "muted summary") : null;
  body.replaceChildren(...(summary ? [summary] : []),
    ...(items.length ? items.map(analysisBox) : [el("p", "no analyses yet", "muted")]));
}
