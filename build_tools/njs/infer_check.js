// The front proxy's check of inference request bodies (nginx njs; build_tools/proxy.py loads it).
//
// Triton 2.51's HTTP frontend answers a body it cannot parse, or a KServe v2 request of the wrong
// shape ("inputs" missing, a shape of strings, "data" of the wrong type or count), with 500: its JSON
// layer reports every such error as INTERNAL (src/http_server.cc at v2.51.0). Those are the client's
// mistakes, so the proxy answers them with 400 in Triton's own error shape, {"error": "..."}, naming
// what was wrong and what was expected. It refuses only what Triton would refuse anyway; everything
// else (and anything this check cannot read: compressed bodies, raw binary requests, JSON nested
// deeper than njs parses) goes to Triton unchanged, which then decides as before.
//
// Binary-form requests (header Inference-Header-Content-Length: N) are checked on their first N bytes,
// the JSON header, only; the tensor bytes after it are never decoded.

var fs = require('fs');

var UNSIGNED = {UINT8: 1, UINT16: 1, UINT32: 1, UINT64: 1};
var SIGNED = {INT8: 1, INT16: 1, INT32: 1, INT64: 1};
var FLOATS = {FP32: 1, FP64: 1};
var HEADER = 'Inference-Header-Content-Length';

function kind(v) {
    if (v === null) { return 'null'; }
    if (Array.isArray(v)) { return 'an array'; }
    if (typeof v === 'object') { return 'an object'; }
    return 'a ' + typeof v;
}

function shown(v) {
    if (v === undefined) { return 'nothing (the member is missing)'; }
    var s = JSON.stringify(v);
    if (s === undefined) { s = String(v); }
    return s.length > 40 ? s.slice(0, 40) + '...' : s;
}

function isObject(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }
function isUint(v) { return typeof v === 'number' && Number.isInteger(v) && v >= 0; }
function has(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }

// C's atoi, as Triton reads the header: blanks, a sign, digits; anything else ends the number.
function atoi(s) {
    var m = /^[ \t\n\v\f\r]*([+-]?[0-9]+)/.exec(String(s));
    return m ? parseInt(m[1], 10) : 0;
}

// Typed members of a "parameters" object that Triton reads (and fails on with 500 when mistyped).
function paramProblem(params, where, types) {
    var keys = Object.keys(types);
    for (var i = 0; i < keys.length; i++) {
        var k = keys[i];
        if (!has(params, k)) { continue; }
        var v = params[k];
        var t = types[k];
        var ok = (t === 'uint' && isUint(v)) || (t === 'bool' && typeof v === 'boolean')
            || (t === 'string' && typeof v === 'string')
            || (t === 'uint or string' && (isUint(v) || typeof v === 'string'));
        if (!ok) {
            return where + '.parameters.' + k + ' must be ' + (t === 'bool' ? 'a boolean' : t === 'uint'
                ? 'a non-negative integer' : t === 'string' ? 'a string' : 'a non-negative integer or a string')
                + ', got ' + shown(v);
        }
    }
    return null;
}

// Walks "data" (nested arrays allowed, as Triton flattens them) and checks each element's type.
function dataProblem(data, dtype, expected, where) {
    var count = 0;
    var stack = [data];
    while (stack.length) {
        var v = stack.pop();
        if (Array.isArray(v)) {
            for (var j = v.length - 1; j >= 0; j--) { stack.push(v[j]); }
            continue;
        }
        count++;
        var ok;
        if (dtype === 'BYTES') { ok = typeof v === 'string'; }
        else if (dtype === 'BOOL') { ok = typeof v === 'boolean'; }
        else if (UNSIGNED[dtype]) { ok = isUint(v); }
        else if (SIGNED[dtype]) { ok = typeof v === 'number' && Number.isInteger(v); }
        else { ok = typeof v === 'number'; }
        if (!ok) {
            var want = dtype === 'BYTES' ? 'strings' : dtype === 'BOOL' ? 'booleans' : UNSIGNED[dtype]
                ? 'non-negative integers' : SIGNED[dtype] ? 'integers' : 'numbers';
            return where + '.data holds ' + dtype + ' values, so ' + want + '; element ' + (count - 1)
                + ' is ' + shown(v);
        }
    }
    // BYTES: Triton sizes the tensor from the strings themselves; the count is the model's check.
    if (dtype !== 'BYTES' && count !== expected) {
        return where + '.data has ' + count + ' element(s) but its shape needs ' + expected;
    }
    return null;
}

function inputProblem(inp, where) {
    if (!isObject(inp)) {
        return where + ' must be an object with "name", "datatype", "shape" and "data", got ' + kind(inp);
    }
    var params = isObject(inp.parameters) ? inp.parameters : {};
    var sources = (has(inp, 'data') ? 1 : 0) + (has(params, 'binary_data_size') ? 1 : 0)
        + (has(params, 'shared_memory_region') ? 1 : 0);
    if (sources !== 1) {
        return where + ' must set exactly one of "data", "parameters.binary_data_size" or '
            + '"parameters.shared_memory_region", got ' + sources;
    }
    if (typeof inp.name !== 'string') { return where + '.name must be a string, got ' + shown(inp.name); }
    if (typeof inp.datatype !== 'string') {
        return where + '.datatype must be a string (FP32, INT64, BYTES, ...), got ' + shown(inp.datatype);
    }
    if (!Array.isArray(inp.shape)) { return where + '.shape must be an array, got ' + kind(inp.shape); }
    var expected = 1;
    for (var d = 0; d < inp.shape.length; d++) {
        if (!isUint(inp.shape[d])) {
            return where + '.shape[' + d + '] must be a non-negative integer, got ' + shown(inp.shape[d]);
        }
        expected *= inp.shape[d];
    }
    if (has(params, 'binary_data_size')) {
        return paramProblem(params, where, {binary_data_size: 'uint'});
    }
    if (has(params, 'shared_memory_region')) {
        return paramProblem(params, where, {shared_memory_region: 'string', shared_memory_offset: 'uint',
            shared_memory_byte_size: 'uint'});
    }
    var dtype = inp.datatype;
    // Other datatypes (FP16, BF16 or unknown ones) Triton refuses in JSON with its own 400.
    if (expected === 0 || !(dtype === 'BYTES' || dtype === 'BOOL' || UNSIGNED[dtype] || SIGNED[dtype]
        || FLOATS[dtype])) {
        return null;
    }
    if (!Array.isArray(inp.data)) {
        return where + '.data must be an array of ' + expected + ' value(s), got ' + kind(inp.data);
    }
    return dataProblem(inp.data, dtype, expected, where);
}

function outputProblem(out, where) {
    if (!isObject(out)) { return where + ' must be an object with a "name", got ' + kind(out); }
    if (typeof out.name !== 'string') { return where + '.name must be a string, got ' + shown(out.name); }
    if (!isObject(out.parameters)) { return null; }
    var types = {classification: 'uint', shared_memory_region: 'string', shared_memory_offset: 'uint',
        shared_memory_byte_size: 'uint'};
    // Triton reads binary_data only for an output not written to shared memory.
    if (!has(out.parameters, 'shared_memory_region')) { types.binary_data = 'bool'; }
    return paramProblem(out.parameters, where, types);
}

// What is wrong with a parsed KServe v2 inference request, or null.
function requestProblem(req) {
    if (!isObject(req)) {
        return 'the request must be a JSON object with an "inputs" array, got ' + kind(req);
    }
    if (has(req, 'id') && typeof req.id !== 'string') { return '"id" must be a string, got ' + shown(req.id); }
    if (has(req, 'parameters')) {
        if (!isObject(req.parameters)) {
            return '"parameters" must be an object, got ' + kind(req.parameters);
        }
        var p = paramProblem(req.parameters, 'request', {sequence_id: 'uint or string', sequence_start: 'bool',
            sequence_end: 'bool', priority: 'uint', timeout: 'uint', binary_data_output: 'bool'});
        if (p) { return p; }
    }
    if (!has(req, 'inputs')) { return 'the request has no "inputs" array'; }
    if (!Array.isArray(req.inputs)) { return '"inputs" must be an array, got ' + kind(req.inputs); }
    var i;
    for (i = 0; i < req.inputs.length; i++) {
        var e = inputProblem(req.inputs[i], 'inputs[' + i + ']');
        if (e) { return e; }
    }
    if (has(req, 'outputs')) {
        if (!Array.isArray(req.outputs)) { return '"outputs" must be an array, got ' + kind(req.outputs); }
        for (i = 0; i < req.outputs.length; i++) {
            var o = outputProblem(req.outputs[i], 'outputs[' + i + ']');
            if (o) { return o; }
        }
    }
    return null;
}

// The JSON part of the body as text, with a description of where it came from; null: not checked.
function jsonPart(r) {
    if (r.headersIn['Content-Encoding']) { return null; }  // gzip/deflate: Triton inflates it itself
    var body = r.requestBuffer;
    var file = body === undefined ? r.variables.request_body_file : undefined;
    var total = body !== undefined ? body.length : (file ? fs.statSync(file).size : 0);
    var n = total;
    var where = 'the request body';
    if (r.headersIn[HEADER] !== undefined) {
        n = atoi(r.headersIn[HEADER]);
        where = 'the JSON header (the first ' + n + ' bytes, ' + HEADER + ')';
    }
    // 0: a raw binary request (no JSON at all); out of range: Triton's own 400. Neither is ours.
    if (n <= 0 || n > total) { return null; }
    var bytes;
    if (body !== undefined) {
        bytes = n === total ? body : body.slice(0, n);
    } else {
        bytes = Buffer.alloc(n);
        var fd = fs.openSync(file, 'r');
        try { fs.readSync(fd, bytes, 0, n, 0); } finally { fs.closeSync(fd); }
    }
    return {text: bytes.toString('utf8'), where: where};
}

function parsed(part, expected) {
    try {
        return {value: JSON.parse(part.text)};
    } catch (e) {
        var msg = String(e.message || e);
        // njs parses at most 32 levels deep; Triton has no such limit, so it decides.
        if (msg.indexOf('Nested too deep') >= 0) { return null; }
        return {error: 'failed to parse the request JSON: ' + msg + ' in ' + part.where
            + '; expected ' + expected};
    }
}

function refuse(r, message) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({error: message + ' (refused by the front proxy)'}));
}

function forward(r) {
    r.internalRedirect('@triton');
}

// POST /v2/models/<m>[/versions/<v>]/infer
function infer(r) {
    var problem = null;
    try {
        var part = r.method === 'POST' ? jsonPart(r) : null;
        var doc = part ? parsed(part, 'one JSON object (KServe v2 inference request: {"inputs": [...]})') : null;
        if (doc) {
            problem = doc.error || requestProblem(doc.value);
            if (problem && !doc.error) { problem = 'invalid inference request: ' + problem; }
        }
    } catch (e) {
        // The check never blocks a request because of its own fault: Triton still validates it.
        r.warn('inference request check failed, passing the request on: ' + e);
        problem = null;
    }
    if (problem) { refuse(r, problem); } else { forward(r); }
}

// POST .../generate and .../generate_stream: any JSON object, so only its syntax is checked.
function generate(r) {
    var problem = null;
    try {
        var part = r.method === 'POST' ? jsonPart(r) : null;
        var doc = part ? parsed(part, 'one JSON object') : null;
        if (doc) {
            problem = doc.error || (isObject(doc.value) ? null : 'the request must be a JSON object, got '
                + kind(doc.value));
        }
    } catch (e) {
        r.warn('generate request check failed, passing the request on: ' + e);
        problem = null;
    }
    if (problem) { refuse(r, problem); } else { forward(r); }
}

export default {infer: infer, generate: generate};
