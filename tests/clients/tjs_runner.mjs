// Loads an exported model directory with transformers.js (Node, onnxruntime-node) and runs it.
//
//     TJS_DIR=<folder holding node_modules/@huggingface/transformers> node tjs_runner.mjs REQUEST.json [RESULT.json]
//
// REQUEST.json:
//   {"model_dir": "/abs/path/to/repo",            // config.json + onnx/… (the merged Hub repo)
//    "class": "AutoModelForCausalLM",             // any class exported by transformers.js
//    "options": {"dtype": "fp32", "model_file_name": "model_sequence_classification"},  // optional
//    "runs": [
//      {"kind": "forward", "inputs": {"input_ids": {"dtype": "int64", "dims": [2, 5], "data": [...]}, ...}},
//      {"kind": "generate", "inputs": {"input_ids": {...}, "attention_mask": {...}}, "max_new_tokens": 8}
//    ]}
//
// Writes one JSON object to RESULT.json (default: stdout; the library's own logging goes to stdout/stderr too):
//   {"ok": true, "class": "<resolved model class>", "sessions": {name: {"inputs": [...], "outputs": [...]}},
//    "results": [{"outputs": {name: {"dtype", "dims", "data"}}} | {"sequences": [[ids...], ...]} | {"error": "..."}]}
// or {"ok": false, "error": "...", "stack": "..."} with exit code 1. Remote downloads are disabled: every file must
// be in model_dir.

import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const TYPED = {
    int64: (data) => BigInt64Array.from(data.map((x) => BigInt(x))),
    int32: (data) => Int32Array.from(data),
    float32: (data) => Float32Array.from(data),
    bool: (data) => Uint8Array.from(data.map((x) => (x ? 1 : 0))),
};

function packageEntry(root) {
    const pkgDir = path.join(root, 'node_modules', '@huggingface', 'transformers');
    const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
    const entry = pkg.exports?.node?.import?.default ?? pkg.exports?.node?.import ?? pkg.module ?? pkg.main;
    const file = path.join(pkgDir, entry);
    if (!existsSync(file)) throw new Error(`transformers.js entry point not found: ${file}`);
    return { file, version: pkg.version };
}

function toPlain(value) {
    // A transformers.js Tensor -> {dtype, dims, data} with JSON numbers (int64 via Number: ids and small ints only).
    const data = Array.from(value.data, (x) => (typeof x === 'bigint' ? Number(x) : x));
    return { dtype: value.type, dims: Array.from(value.dims), data };
}

async function runOne(model, run, tensors, Tensor) {
    if (run.kind === 'forward') {
        const output = await model(tensors(run.inputs));
        const outputs = {};
        for (const [name, value] of Object.entries(output)) {
            if (value instanceof Tensor) outputs[name] = toPlain(value);
        }
        return { outputs };
    }
    if (run.kind === 'generate') {
        const { input_ids, ...rest } = tensors(run.inputs);
        const generated = await model.generate({
            ...(model.config.is_encoder_decoder ? { inputs: input_ids } : { input_ids }),
            ...rest,
            max_new_tokens: run.max_new_tokens ?? 8,
            do_sample: false,
            num_beams: 1,
            ...(run.generation ?? {}),
        });
        return { sequences: generated.tolist().map((row) => row.map((x) => Number(x))) };
    }
    throw new Error(`unknown run kind ${run.kind}`);
}

async function main() {
    const requestPath = process.argv[2];
    if (!requestPath) throw new Error('usage: node tjs_runner.mjs REQUEST.json');
    const request = JSON.parse(readFileSync(requestPath, 'utf8'));
    const root = process.env.TJS_DIR;
    if (!root) throw new Error('TJS_DIR is not set (the folder holding node_modules/@huggingface/transformers)');
    const { file, version } = packageEntry(root);
    const tjs = await import(pathToFileURL(file).href);
    const { env, Tensor } = tjs;

    const modelDir = path.resolve(request.model_dir);
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    env.localModelPath = path.dirname(modelDir) + path.sep;
    env.useFSCache = false;
    env.useBrowserCache = false;

    const cls = tjs[request.class];
    if (typeof cls?.from_pretrained !== 'function') throw new Error(`transformers.js has no class ${request.class}`);
    const options = { dtype: 'fp32', device: 'cpu', ...(request.options ?? {}) };
    const model = await cls.from_pretrained(path.basename(modelDir), options);

    const sessions = {};
    for (const [name, session] of Object.entries(model.sessions ?? {})) {
        sessions[name] = { inputs: [...session.inputNames], outputs: [...session.outputNames] };
    }
    const tensors = (inputs) =>
        Object.fromEntries(
            Object.entries(inputs ?? {}).map(([name, t]) => {
                const make = TYPED[t.dtype];
                if (!make) throw new Error(`unsupported input dtype ${t.dtype} for ${name}`);
                return [name, new Tensor(t.dtype, make(t.data), t.dims)];
            }),
        );

    const results = [];
    for (const run of request.runs ?? []) {
        try {
            results.push(await runOne(model, run, tensors, Tensor));
        } catch (error) {
            // one failing run does not hide the others: each test reads its own run
            results.push({ error: String(error?.message ?? error), stack: error?.stack });
        }
    }
    await model.dispose();
    return { ok: true, version, class: model.constructor.name, sessions, results };
}

function answer(value) {
    const text = JSON.stringify(value) + '\n';
    if (process.argv[3]) writeFileSync(process.argv[3], text);
    else process.stdout.write(text);
}

main()
    .then(answer)
    .catch((error) => {
        answer({ ok: false, error: String(error?.message ?? error), stack: error?.stack });
        process.exitCode = 1;
    });
