// kerascharrnn's in-browser runtime: a char-RNN exported by `bin/export --web` runs here, in the writer's own
// page, with no server and no request leaving the page. Plain JavaScript, one classic script (a page opened
// from file:// may load scripts beside it, not modules, WebAssembly or fetched files), so the model comes as
// model.js, which calls KerasCharRNN.define({...}) with the weights in base64.
//
// The layers are those of models/stack.py's step form (`Stage.portable` writes each one's weights): an
// embedding, LSTM / GRU / SimpleRNN layers (Keras's gate order and biases), batch normalisation with its moving
// statistics, copy attention (copy_attention.py's `step`), the logits. Each step is computed in float64 from
// the float32 weights and stored as float32, so argmax sampling gives the text `bin/sample --sample 0` gives
// (tests/test_web.py). Sampling follows inference/logits.py: temperature (below ARGMAX_BELOW: the most likely
// character), top-k, top-p, then a Gumbel-max draw; a seed repeats a text here (its random stream is this
// file's, so it is not the server's text for that seed, as the server's TensorFlow and LiteRT engines differ).
"use strict";

(function (root) {
  const ARGMAX_BELOW = 1e-6; // sampling_settings.py
  const TINY = 1.1754943508222875e-38; // float32's smallest normal: the uniform draws start there, as logits.py's
  const SLICE_MS = 25; // generation yields to the page this often, so that typing never waits on the model

  // --- weights ---------------------------------------------------------------------------------------------

  function floats(encoded) { // {shape, data: base64 of little-endian float32} -> Float32Array
    const bytes = atob(encoded.data);
    const buffer = new ArrayBuffer(bytes.length);
    const view = new Uint8Array(buffer);
    for (let i = 0; i < bytes.length; i++) view[i] = bytes.charCodeAt(i);
    const values = new Float32Array(buffer);
    const size = encoded.shape.reduce((a, b) => a * b, 1);
    if (values.length !== size) throw new Error(`a weight of shape ${encoded.shape} holds ${values.length} values`);
    return values;
  }

  // out (n) += x (m) @ w (m x n, row-major); out accumulates in float64. Four rows of w at a time: twice the
  // speed of one in V8 (benchmarks/web_runtimes.py), the sum's order aside the same numbers.
  function addProduct(out, x, w, n) {
    const m = x.length;
    let i = 0;
    for (; i + 3 < m; i += 4) {
      const a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
      const r0 = i * n, r1 = r0 + n, r2 = r1 + n, r3 = r2 + n;
      for (let j = 0; j < n; j++) out[j] += a * w[r0 + j] + b * w[r1 + j] + c * w[r2 + j] + d * w[r3 + j];
    }
    for (; i < m; i++) {
      const xi = x[i], row = i * n;
      for (let j = 0; j < n; j++) out[j] += xi * w[row + j];
    }
    return out;
  }

  // --- the products: WebAssembly SIMD where the browser runs it (about 6x plain JavaScript), else JavaScript -----
  // kernel.matrix(encoded weight) -> a matrix; kernel.product(out, x, matrix) -> out += x @ matrix; ready() once
  // every matrix is made.

  // matvec.wat compiled (scripts/build_web_kernel.py writes this line)
  const MATVEC_WASM = "AGFzbQEAAAABCQFgBX9/f39/AAMCAQAFAwEAAQcTAgZtZW1vcnkCAAZtYXR2ZWMAAAqxBAGuBAQFfwR7BX8BfSAEQXxxIQcgBEECdCEJAkADQCAFQQRqIANKDQEgASAFQQJ0aioCAP0TIQogASAFQQJ0aioCBP0TIQsgASAFQQJ0aioCCP0TIQwgASAFQQJ0aioCDP0TIQ0gAiAFIAlsaiEOIA4gCWohDyAPIAlqIRAgECAJaiERQQAhBgJAA0AgBiAHTg0BIAAgBkECdGohEiASIBL9AAQAIAogDiAGQQJ0av0ABAD95gEgCyAPIAZBAnRq/QAEAP3mAf3kASAMIBAgBkECdGr9AAQA/eYBIA0gESAGQQJ0av0ABAD95gH95AH95AH95AH9CwQAIAZBBGohBgwACwsCQANAIAYgBE4NASAAIAZBAnRqIRIgEiASKgIAIAr9HwAgDiAGQQJ0aioCAJQgC/0fACAPIAZBAnRqKgIAlJIgDP0fACAQIAZBAnRqKgIAlCAN/R8AIBEgBkECdGoqAgCUkpKSOAIAIAZBAWohBgwACwsgBUEEaiEFDAALCwJAA0AgBSADTg0BIAEgBUECdGoqAgAhEyAT/RMhCiACIAUgCWxqIQ5BACEGAkADQCAGIAdODQEgACAGQQJ0aiESIBIgEv0ABAAgCiAOIAZBAnRq/QAEAP3mAf3kAf0LBAAgBkEEaiEGDAALCwJAA0AgBiAETg0BIAAgBkECdGohEiASIBIqAgAgEyAOIAZBAnRqKgIAlJI4AgAgBkEBaiEGDAALCyAFQQFqIQUMAAsLCw==";

  function jsKernel() {
    return { name: "js", ready() {}, matrix: (encoded) => ({ values: floats(encoded), n: encoded.shape[1] }),
             product: (out, x, matrix) => addProduct(out, x, matrix.values, matrix.n) };
  }

  // The weights live in the module's memory; x and out go through two scratch rows there. Float32 sums, as
  // TensorFlow's own; a page whose policy forbids WebAssembly, or a browser without SIMD, gets jsKernel.
  function wasmKernel() {
    const bytes = Uint8Array.from(atob(MATVEC_WASM), (c) => c.charCodeAt(0));
    if (!WebAssembly.validate(bytes)) throw new Error("this browser has no WebAssembly SIMD");
    const { memory, matvec } = new WebAssembly.Instance(new WebAssembly.Module(bytes)).exports;
    const waiting = [];
    let used = 0, widest = 0, heap = null, xAt = 0, outAt = 0;
    const reserve = (count) => { const at = used; used += Math.ceil(count / 4) * 16; return at; }; // 16-byte aligned
    return {
      name: "wasm",
      matrix(encoded) {
        const [m, n] = encoded.shape;
        const at = reserve(m * n);
        waiting.push([at, floats(encoded)]);
        widest = Math.max(widest, m, n);
        return { at, m, n };
      },
      ready() {
        xAt = reserve(widest);
        outAt = reserve(widest);
        const pages = Math.ceil(used / 65536) - memory.buffer.byteLength / 65536;
        if (pages > 0) memory.grow(pages);
        heap = new Float32Array(memory.buffer);
        for (const [at, values] of waiting) heap.set(values, at / 4);
        waiting.length = 0;
      },
      product(out, x, matrix) {
        heap.set(x, xAt / 4);
        heap.set(out, outAt / 4);
        matvec(outAt, xAt, matrix.at, matrix.m, matrix.n);
        out.set(heap.subarray(outAt / 4, outAt / 4 + matrix.n));
        return out;
      },
    };
  }

  function makeKernel(name) { // "wasm", "js", or undefined: the fastest this page may run
    if (name === "js") return jsKernel();
    try {
      return wasmKernel();
    } catch (error) {
      if (name === "wasm") throw error;
      return jsKernel();
    }
  }

  const ACTIVATIONS = {
    tanh: Math.tanh,
    sigmoid: (x) => 1 / (1 + Math.exp(-x)),
    linear: (x) => x,
  };

  function activation(name) {
    const f = ACTIVATIONS[name];
    if (!f) throw new Error(`activation ${name} is not implemented here`);
    return f;
  }

  // --- layers: init(spec) -> {states: () -> fresh state, step(x, id, state) -> x} --------------------------

  const LAYERS = {
    embedding(spec) {
      const table = floats(spec.weights.embeddings);
      const width = spec.weights.embeddings.shape[1];
      return { width: () => width, states: () => null, step: (x, id) => table.slice(id * width, id * width + width) };
    },

    lstm(spec, k) {
      const { units } = spec;
      const kernel = k.matrix(spec.weights.kernel), recurrent = k.matrix(spec.weights.recurrent_kernel);
      const bias = spec.weights.bias ? floats(spec.weights.bias) : new Float32Array(4 * units);
      const act = activation(spec.activation), gate = activation(spec.recurrent_activation);
      return {
        states: () => ({ h: new Float32Array(units), c: new Float32Array(units) }),
        step(x, id, state) {
          const z = Float64Array.from(bias);
          k.product(z, x, kernel);
          k.product(z, state.h, recurrent);
          const h = new Float32Array(units), c = new Float32Array(units);
          for (let j = 0; j < units; j++) { // Keras's order: input, forget, cell, output
            c[j] = gate(z[units + j]) * state.c[j] + gate(z[j]) * act(z[2 * units + j]);
            h[j] = gate(z[3 * units + j]) * act(c[j]);
          }
          state.h = h;
          state.c = c;
          return h;
        },
      };
    },

    gru(spec, k) {
      const { units } = spec;
      const kernel = k.matrix(spec.weights.kernel), recurrent = k.matrix(spec.weights.recurrent_kernel);
      const act = activation(spec.activation), gate = activation(spec.recurrent_activation);
      // Keras's default, cuDNN's form (reset_after): bias (2, 3H), one for the input and one for the recurrent
      // product, and the reset gate applied after the recurrent product (models/stack.py refuses the other form)
      const bias = spec.weights.bias ? floats(spec.weights.bias) : new Float32Array(6 * units);
      return {
        states: () => ({ h: new Float32Array(units) }),
        step(x, id, state) {
          const projected = k.product(Float64Array.from(bias.subarray(0, 3 * units)), x, kernel);
          const inner = k.product(Float64Array.from(bias.subarray(3 * units)), state.h, recurrent);
          const h = new Float32Array(units);
          for (let j = 0; j < units; j++) { // Keras's order: update, reset, candidate
            const update = gate(projected[j] + inner[j]), reset = gate(projected[units + j] + inner[units + j]);
            const candidate = act(projected[2 * units + j] + reset * inner[2 * units + j]);
            h[j] = update * state.h[j] + (1 - update) * candidate;
          }
          state.h = h;
          return h;
        },
      };
    },

    rnn(spec, k) {
      const { units } = spec;
      const kernel = k.matrix(spec.weights.kernel), recurrent = k.matrix(spec.weights.recurrent_kernel);
      const bias = spec.weights.bias ? floats(spec.weights.bias) : new Float32Array(units);
      const act = activation(spec.activation);
      return {
        states: () => ({ h: new Float32Array(units) }),
        step(x, id, state) {
          const z = k.product(k.product(Float64Array.from(bias), x, kernel), state.h, recurrent);
          state.h = Float32Array.from(z, act);
          return state.h;
        },
      };
    },

    batchnorm(spec) { // inference: the moving statistics
      const mean = floats(spec.weights.moving_mean), variance = floats(spec.weights.moving_variance);
      const gamma = spec.weights.gamma ? floats(spec.weights.gamma) : null;
      const beta = spec.weights.beta ? floats(spec.weights.beta) : null;
      return {
        states: () => null,
        step: (x) => Float32Array.from(x, (value, j) => (value - mean[j]) / Math.sqrt(variance[j] + spec.epsilon) *
                                                        (gamma ? gamma[j] : 1) + (beta ? beta[j] : 0)),
      };
    },

    copy(spec, k) { // copy_attention.py's step: a ring of (key of the output before, value of the character fed)
      const { memory_size: slots, num_heads: heads, head_size: size } = spec;
      const width = heads * size;
      const query = k.matrix(spec.weights.query_kernel), key = k.matrix(spec.weights.key_kernel);
      const values = floats(spec.weights.value_embeddings), output = k.matrix(spec.weights.output_kernel);
      const units = spec.weights.query_kernel.shape[0];
      const scale = 1 / Math.sqrt(size);
      return {
        states: () => ({ previous: new Float32Array(units), seen: 0, keys: new Float32Array(slots * width),
                         values: new Float32Array(slots * width) }),
        step(x, id, state) {
          const seen = state.seen; // characters before this one
          if (seen >= 1) { // the pair (output at t-1, character at t) goes to slot (seen - 1) mod M
            const slot = ((seen - 1) % slots) * width;
            state.keys.set(k.product(new Float64Array(width), state.previous, key), slot);
            state.values.set(values.subarray(id * width, id * width + width), slot);
          }
          const stored = Math.min(seen, slots);
          const q = k.product(new Float64Array(width), x, query);
          const context = new Float64Array(width);
          const scores = new Float64Array(stored);
          for (let head = 0; head < heads; head++) {
            const at = head * size;
            let top = 0; // the sentinel (score 0, value 0): the attention may attend to nothing
            for (let i = 0; i < stored; i++) {
              let score = 0;
              for (let d = 0; d < size; d++) score += q[at + d] * state.keys[i * width + at + d];
              scores[i] = score * scale;
              if (scores[i] > top) top = scores[i];
            }
            let total = Math.exp(-top);
            for (let i = 0; i < stored; i++) { scores[i] = Math.exp(scores[i] - top); total += scores[i]; }
            for (let i = 0; i < stored; i++) {
              const weight = scores[i] / total;
              for (let d = 0; d < size; d++) context[at + d] += weight * state.values[i * width + at + d];
            }
          }
          const result = Float32Array.from(k.product(Float64Array.from(x), context, output));
          state.previous = x;
          state.seen = seen + 1 >= 2 * slots ? seen + 1 - slots : seen + 1; // only seen mod M and seen >= M count
          return result;
        },
      };
    },

    dense(spec, k) {
      const kernel = k.matrix(spec.weights.kernel);
      const width = spec.weights.kernel.shape[1];
      const bias = spec.weights.bias ? floats(spec.weights.bias) : new Float32Array(width);
      const act = activation(spec.activation);
      return { states: () => null,
               step: (x) => Float32Array.from(k.product(Float64Array.from(bias), x, kernel), act) };
    },
  };

  // --- the vocabulary ----------------------------------------------------------------------------------------

  class Vocabulary { // tokens: characters, or byte values (a byte-level model reads and writes UTF-8 bytes)
    constructor(spec) {
      this.tokens = spec.tokens;
      this.bytes = spec.encoding === "bytes";
      this.index = new Map(this.tokens.map((token, id) => [token, id]));
    }

    get size() { return this.tokens.length; }

    units(text) { return this.bytes ? Array.from(new TextEncoder().encode(text)) : Array.from(text); }

    // the ids of the characters it knows; the others are left out of the priming, as the server does
    encodeKnown(text) { return this.units(text).filter((u) => this.index.has(u)).map((u) => this.index.get(u)); }

    decoder() { // ids -> text, a piece at a time (a byte model's UTF-8 may end a piece mid-character)
      if (!this.bytes) return (ids, last) => ids.map((id) => this.tokens[id]).join("");
      const utf8 = new TextDecoder("utf-8");
      return (ids, last) => utf8.decode(Uint8Array.from(ids, (id) => this.tokens[id]), { stream: !last });
    }
  }

  // --- the model ---------------------------------------------------------------------------------------------

  class Model {
    constructor(spec, kernelName) {
      if (spec.format !== 1) throw new Error(`model format ${spec.format}: this runtime reads format 1`);
      this.name = spec.name;
      this.vocab = new Vocabulary(spec.vocab);
      const kernel = makeKernel(kernelName);
      this.layers = spec.layers.map((layer) => {
        const make = LAYERS[layer.kind];
        if (!make) throw new Error(`a ${layer.kind} layer: this runtime does not know it`);
        return make(layer, kernel);
      });
      kernel.ready();
      this.kernel = kernel.name;
    }

    states() { return this.layers.map((layer) => layer.states()); }

    // one character: its id in, the next character's logits (Float32Array) out; `states` is updated
    step(id, states) {
      let x = null;
      this.layers.forEach((layer, i) => { x = layer.step(x, id, states[i]); });
      return x;
    }

    // a row after the prompt: its logits (zeros for an empty prompt: every first character alike) and states
    primed(ids) {
      const states = this.states();
      let logits = new Float32Array(this.vocab.size);
      for (const id of ids) logits = this.step(id, states);
      return { logits, states };
    }
  }

  function copyState(states) {
    return states.map((state) => state && Object.fromEntries(Object.entries(state).map(
      ([name, value]) => [name, typeof value === "number" ? value : value.slice()])));
  }

  // --- sampling (inference/logits.py) ------------------------------------------------------------------------

  // The scores a row draws from: logits / temperature cut to the top-k and top-p sets (-Infinity elsewhere).
  function filtered(logits, { temperature = 1, top_k = 0, top_p = 1 } = {}) {
    let scores = Array.from(logits, (value) => Math.fround(value / temperature));
    if (top_k > 0) {
      const ordered = scores.slice().sort((a, b) => b - a);
      const kth = ordered[Math.min(top_k, scores.length) - 1];
      scores = scores.map((value) => (value < kth ? -Infinity : value));
    }
    if (top_p < 1) { // the smallest set of the most likely ids whose probability reaches top_p (at least one)
      const ordered = scores.slice().sort((a, b) => b - a);
      const best = ordered[0];
      const weights = ordered.map((value) => Math.exp(value - best));
      const total = weights.reduce((a, b) => a + b, 0);
      let before = 0, threshold = best;
      for (let i = 0; i < ordered.length; i++) {
        if (before < top_p) threshold = Math.min(threshold, ordered[i]);
        before += weights[i] / total;
      }
      scores = scores.map((value) => (value < threshold ? -Infinity : value));
    }
    return scores;
  }

  function argmax(values) {
    let best = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
  }

  // A seeded stream of uniform numbers in [TINY, 1): xoshiro128** from the seed's two 32-bit halves.
  function uniforms(seed) {
    let s = [seed % 4294967296, Math.floor(seed / 4294967296) % 4294967296, 0x9e3779b9, 0x243f6a88].map((v) => v >>> 0);
    const rotl = (x, k) => (x << k) | (x >>> (32 - k));
    const next = () => {
      const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
      const t = s[1] << 9;
      s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
      return result;
    };
    for (let i = 0; i < 16; i++) next(); // the seed's bits mixed through the state before the first draw
    return () => Math.max(TINY, (next() * 2097152 + (next() >>> 11)) / 9007199254740992);
  }

  function nextId(logits, settings, uniform) {
    if (!(settings.temperature >= ARGMAX_BELOW)) return argmax(logits);
    const scores = filtered(logits, settings);
    return argmax(scores.map((score) => score - Math.log(-Math.log(uniform())))); // Gumbel-max: a categorical draw
  }

  const yieldToPage = () => new Promise((resolve) => { // a macrotask without setTimeout's 4 ms clamp
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });

  // Continues `prompt` n times by max_tokens characters; onText(index, text, finished) gets each row's text as
  // it is made. The prompt is read once, its state copied to every row. Stops early when `signal` aborts.
  async function complete(model, prompt, options, onText, signal) {
    const { max_tokens = 60, n = 1, seed = Math.floor(Math.random() * 2 ** 52) + 1 } = options;
    const settings = { temperature: options.temperature ?? 1, top_k: options.top_k ?? 0, top_p: options.top_p ?? 1 };
    const uniform = uniforms(seed);
    const primed = model.primed(model.vocab.encodeKnown(prompt));
    const rows = Array.from({ length: n }, () => ({ logits: primed.logits, states: copyState(primed.states),
                                                     decode: model.vocab.decoder(), ids: [] }));
    const texts = rows.map(() => "");
    for (let t = 0; t < max_tokens;) {
      const started = performance.now();
      do {
        for (const row of rows) {
          const id = nextId(row.logits, settings, uniform);
          row.ids.push(id);
          row.logits = model.step(id, row.states);
        }
        t++;
      } while (t < max_tokens && performance.now() - started < SLICE_MS);
      rows.forEach((row, index) => {
        const piece = row.decode(row.ids, t === max_tokens);
        row.ids = [];
        texts[index] += piece;
        onText(index, piece, t === max_tokens);
      });
      if (t < max_tokens) await yieldToPage();
      if (signal && signal.aborted) throw signal.reason || new DOMException("aborted", "AbortError");
    }
    return texts;
  }

  // --- the writing page's source of suggestions (serving/static/write.js) -------------------------------------

  const KerasCharRNN = {
    model: null,
    kernel: undefined, // "js" or "wasm" to choose (tests, benchmarks); by default the fastest that runs here
    define(spec) { this.spec = spec; },
    load() {
      if (!this.model || (this.kernel && this.model.kernel !== this.kernel)) {
        this.model = new Model(this.spec, this.kernel);
      }
      return this.model;
    },
    complete(prompt, options = {}, onText = () => {}, signal = null) {
      return complete(this.load(), prompt, options, onText, signal);
    },
    writingSource() {
      return { local: true, name: async () => this.load().name,
               complete: (prompt, options, onText, heard, signal) => this.complete(prompt, options, (...args) => {
                 heard();
                 onText(...args);
               }, signal) };
    },
    // for tests and benchmarks
    Model, filtered, uniforms,
  };
  root.KerasCharRNN = KerasCharRNN;
})(window);
