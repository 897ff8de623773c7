// rnn-writer's client, as lib/rnn-writer.coffee (github.com/robinsloan/rnn-writer) talks to a server:
// GET / first (it needs a JSON body to start), then for each editor text the last `lookbackLength`
// (48) UTF-16 units before the cursor as /generate?start_text=<encodeURIComponent>&n=<n>; a reply
// with a truthy `message` is an error shown to the writer; otherwise the reply counts only if
// decodeURIComponent(start_text).replace(/\+/g, " ") equals its own start text.
// Usage: node rnn_writer_client.js BASE_URL N '["editor text", ...]'  -> one JSON line per text.
const http = require("http");

function getJson(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => { data += chunk; });
      res.on("end", () => {
        try { resolve({ status: res.statusCode, body: JSON.parse(data) }); } catch (e) { reject(e); }
      });
    }).on("error", reject);
  });
}

async function main() {
  const [base, n, textsJson] = process.argv.slice(2);
  const LOOKBACK_LENGTH = 48;
  const start = await getJson(base + "/");
  if (typeof start.body !== "object") throw new Error("GET / did not answer JSON");
  for (const editorText of JSON.parse(textsJson)) {
    const currentStartText = editorText.slice(-LOOKBACK_LENGTH);  // the buffer counts UTF-16 units
    const query = "/generate?start_text=" + encodeURIComponent(currentStartText) + "&n=" + n;
    const reply = await getJson(base + query);
    const body = reply.body;
    let outcome;
    if (body["message"]) {
      outcome = { shown: "error", message: body["message"] };
    } else {
      const startTextForThisRequest = decodeURIComponent(body["start_text"]).replace(/\+/g, " ");
      outcome = startTextForThisRequest === currentStartText
        ? { shown: "suggestions", completions: body["completions"].map((c) => c + " ") }
        : { shown: "nothing (outdated reply)", echoed: startTextForThisRequest };
    }
    console.log(JSON.stringify({ status: reply.status, startText: currentStartText, ...outcome }));
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
