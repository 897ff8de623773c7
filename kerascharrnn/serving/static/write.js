// The writing page: rnn-writer's controls in a browser. Tab shows a suggestion at the cursor (streamed in as it is
// made, from the text before the cursor), Down/Up move through the suggestions (more are asked for when the last is
// near), Tab again or Enter takes it, Left or Escape dismisses it, any other key goes on editing. The suggestions
// come from the server's own OpenAI-style completions API (GET /write of bin/serve), or, in a folder written by
// `bin/export --web`, from the model running in this page (export/runtime.js defines KerasCharRNN before this script):
// nothing else is fetched. The text and the settings stay in this browser (localStorage).
"use strict";

const LOOKBACK = 200; // characters before the cursor that prime the model
const MORE_WHEN_LEFT = 1; // fetch more suggestions when this few remain after the one shown
const STORE = { text: "kerascharrnn.write.text", settings: "kerascharrnn.write.settings",
                quiet: "kerascharrnn.write.quiet_ms" };
// A reply that sends nothing for this long (none at all, or a stream that stalls) is given up with a message,
// not left "(coming)" for ever; a test (or a writer on a slow machine) may set another in localStorage.
const QUIET_MS = Number(localStorage.getItem(STORE.quiet)) || 20000;
const editor = document.getElementById("editor");
const statusLine = document.getElementById("status");
const fields = ["temperature", "length", "count", "key"].map((id) => document.getElementById(id));
let modelName = null;
let offer = null; // the suggestions shown: {ghost, items: [{text, done}], index, requests: [AbortController]}
let tabLeaves = false; // Escape with nothing offered: the next Tab leaves the editor

function say(message) { statusLine.textContent = message; }

function settings() {
  const [temperature, length, count, key] = fields.map((field) => field.value);
  return { temperature: Math.min(2, Math.max(0, Number(temperature) || 0)),
           length: Math.max(1, Math.round(Number(length) || 60)), count: Math.max(1, Math.round(Number(count) || 3)),
           key: key.trim() };
}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = settings().key;
  if (key) result.Authorization = "Bearer " + key;
  return result;
}

// --- the text --------------------------------------------------------------------------------------

// The editor's text (or a fragment's), the suggestion left out: text nodes, and <br> as a newline.
function textOf(root) {
  let text = "";
  for (const node of root.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) text += node.data;
    else if (node.nodeName === "BR") text += "\n";
    else if (!(node.classList && node.classList.contains("ghost"))) text += textOf(node) + (node.nodeName === "DIV" ? "\n" : "");
  }
  return text;
}

function textBeforeCursor() {
  const selection = window.getSelection();
  if (!selection.rangeCount) return textOf(editor);
  const range = document.createRange();
  range.selectNodeContents(editor);
  range.setEnd(selection.getRangeAt(0).startContainer, selection.getRangeAt(0).startOffset);
  return textOf(range.cloneContents());
}

let saveTimer = null;
function save() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => localStorage.setItem(STORE.text, textOf(editor)), 200);
}

// --- suggestions -----------------------------------------------------------------------------------

function cursorInEditor() {
  const selection = window.getSelection();
  return selection.rangeCount > 0 && editor.contains(selection.getRangeAt(0).startContainer);
}

function suggest() {
  if (!cursorInEditor()) { editor.focus(); placeCursorAtEnd(); }
  const selection = window.getSelection();
  const range = selection.getRangeAt(0);
  range.collapse(false); // a selection stays the writer's text: the suggestion goes after it
  const ghost = document.createElement("span");
  ghost.className = "ghost empty";
  ghost.contentEditable = "false";
  ghost.setAttribute("aria-live", "polite");
  ghost.setAttribute("aria-label", "suggestion");
  range.insertNode(ghost);
  range.setStartBefore(ghost);
  range.collapse(true);
  selection.removeAllRanges();
  selection.addRange(range);
  // the last LOOKBACK characters (code points: an emoji is never cut in half)
  offer = { ghost, items: [], index: 0, requests: [], prompt: Array.from(textBeforeCursor()).slice(-LOOKBACK).join("") };
  fetchMore();
}

function show() {
  const item = offer.items[offer.index];
  const text = item ? item.text : "";
  offer.ghost.textContent = text;
  offer.ghost.classList.toggle("empty", !text);
  say(`Suggestion ${offer.index + 1} of ${offer.items.length}` + (item && !item.done ? " (coming)" : ""));
}

// Streams n completions of the prompt into offer.items, a piece of text at a time.
async function fetchMore() {
  const current = offer;
  const { temperature, length, count } = settings();
  // this request's own items: pieces fill these objects, wherever they stand in the list by then
  const mine = Array.from({ length: count }, () => ({ text: "", done: false }));
  current.items.push(...mine);
  const controller = new AbortController();
  current.requests.push(controller);
  let quietTimer = null;
  const heard = () => { // the source said something: the wait for the next word starts again
    clearTimeout(quietTimer);
    quietTimer = setTimeout(() => controller.abort(new Error(`the ${source.local ? "model" : "server"} sent nothing`
                                                             + ` for ${QUIET_MS / 1000} s`)), QUIET_MS);
  };
  show();
  try {
    if (!modelName) await loadModel();
    heard();
    await source.complete(current.prompt, { max_tokens: length, temperature, n: count }, (index, text, finished) => {
      mine[index].text += text;
      if (finished) mine[index].done = true;
      if (offer === current) show();
    }, heard, controller.signal);
    if (mine.some((item) => !item.done)) { // the stream ended before its suggestions did
      for (const item of mine) item.done = true;
      if (offer === current) show();
      say("The server ended the reply early: a suggestion may be cut short.");
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    const shown = current.items[current.index];
    current.items = current.items.filter((item) => !mine.includes(item)); // this request's items go
    if (offer === current && !current.items.length) dismiss(true);
    else if (offer === current) { current.index = Math.max(0, current.items.indexOf(shown)); show(); }
    say("No suggestion: " + error.message);
  } finally {
    clearTimeout(quietTimer);
  }
}

// --- where suggestions come from -------------------------------------------------------------------

// The server's /v1/completions: n completions streamed as server-sent events, one chunk per piece of text;
// onText(index, text, finished) for each piece, heard() whenever the server says anything.
function serverSource() {
  return {
    local: false,
    async name() {
      const reply = await fetch("/v1/models", { headers: headers(), signal: AbortSignal.timeout(QUIET_MS) })
        .catch((error) => { throw error.name === "TimeoutError" ? new Error("the server does not answer") : error; });
      if (!reply.ok) throw new Error(await problem(reply));
      return (await reply.json()).data[0].id;
    },
    async complete(prompt, { max_tokens, temperature, n }, onText, heard, signal) {
      const reply = await fetch("/v1/completions", {
        method: "POST", headers: headers(), signal,
        body: JSON.stringify({ model: modelName, prompt, max_tokens, temperature, n, stream: true }) });
      if (!reply.ok) throw new Error(await problem(reply));
      const reader = reply.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        heard();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!event.startsWith("data: ")) continue;
          const data = event.slice(6);
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices) onText(choice.index, choice.text, Boolean(choice.finish_reason));
        }
      }
    },
  };
}

const source = window.KerasCharRNN ? window.KerasCharRNN.writingSource() : serverSource();

async function problem(reply) {
  if (reply.status === 401) return "the server needs its API key (Settings)";
  try { return (await reply.json()).error.message; } catch { return `the server answered ${reply.status}`; }
}

function move(step) {
  const index = offer.index + step;
  if (index < 0 || index >= offer.items.length) return;
  offer.index = index;
  show();
  if (offer.items.length - offer.index - 1 < MORE_WHEN_LEFT) fetchMore();
}

function accept() {
  const text = offer.items[offer.index] ? offer.items[offer.index].text : "";
  const node = document.createTextNode(text);
  offer.ghost.replaceWith(node);
  finish();
  const range = document.createRange();
  range.setStart(node, node.length);
  range.collapse(true);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  editor.normalize();
  save();
  say("Taken.");
}

function dismiss(quietly) {
  offer.ghost.remove();
  finish();
  editor.normalize();
  if (!quietly) say("Dismissed.");
}

function finish() {
  for (const request of offer.requests) request.abort();
  offer = null;
}

function placeCursorAtEnd() {
  const range = document.createRange();
  range.selectNodeContents(editor);
  range.collapse(false);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

const MODIFIERS = new Set(["Shift", "Control", "Alt", "Meta", "CapsLock", "Fn"]);

editor.addEventListener("keydown", (event) => {
  if (event.isComposing || MODIFIERS.has(event.key)) return;
  if (offer) {
    const actions = { Tab: accept, Enter: accept, ArrowDown: () => move(1), ArrowUp: () => move(-1),
                      ArrowLeft: () => dismiss(false), Escape: () => dismiss(false) };
    const action = !event.shiftKey && !event.ctrlKey && !event.altKey && !event.metaKey && actions[event.key];
    if (action) { event.preventDefault(); action(); return; }
    dismiss(true); // any other key goes on editing
    return;
  }
  if (event.key === "Tab" && !event.shiftKey && !tabLeaves) { event.preventDefault(); suggest(); return; }
  tabLeaves = event.key === "Escape";
});

editor.addEventListener("input", () => { if (!offer) save(); });
editor.addEventListener("mousedown", () => { if (offer) dismiss(true); });
editor.addEventListener("blur", () => { if (offer) dismiss(true); });

document.getElementById("touch").addEventListener("click", (event) => {
  const action = event.target.dataset.action;
  if (!action) return;
  if (action === "suggest") { editor.focus(); if (offer) dismiss(true); suggest(); return; }
  if (!offer) return;
  ({ previous: () => move(-1), next: () => move(1), accept, dismiss: () => dismiss(false) })[action]();
});
// the touch buttons take no focus, so that the cursor stays in the text
document.getElementById("touch").addEventListener("mousedown", (event) => event.preventDefault());

document.getElementById("download").addEventListener("click", () => {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([textOf(editor)], { type: "text/plain;charset=utf-8" }));
  link.download = "writing.txt";
  link.click();
  URL.revokeObjectURL(link.href);
});

for (const field of fields) {
  field.addEventListener("change", () => {
    localStorage.setItem(STORE.settings, JSON.stringify(Object.fromEntries(fields.map((f) => [f.id, f.value]))));
  });
}

async function loadModel() {
  modelName = await source.name();
  document.getElementById("model").textContent = "with " + modelName;
}

(function start() {
  const stored = JSON.parse(localStorage.getItem(STORE.settings) || "{}");
  for (const field of fields) if (stored[field.id] !== undefined) field.value = stored[field.id];
  editor.textContent = localStorage.getItem(STORE.text) || "";
  if (source.local) document.getElementById("key").closest("label").hidden = true; // no server, no key
  editor.focus();
  placeCursorAtEnd();
  loadModel().catch((error) => say(error.message));
})();
