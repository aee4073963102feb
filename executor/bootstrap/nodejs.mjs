// kubefaas node.js bootstrap: loads one handler once and serves invocations one at a time.
//
// Private protocol with the kubefaas driver: one JSON object per line over the unix socket named
// by KUBEFAAS_CONTROL_SOCKET. The user's stdout/stderr are left alone (they are the invocation's
// logs); after each invocation the bootstrap writes the driver's log marker to fd 1 so the driver
// knows where one invocation's logs end. Standard library only.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

function errorOf(err) {
  if (err instanceof Error) {
    return { type: err.name || err.constructor?.name || 'Error', message: String(err.message), stack: err.stack ?? null };
  }
  let message;
  try { message = typeof err === 'string' ? err : JSON.stringify(err); } catch { message = String(err); }
  return { type: 'Error', message: String(message), stack: null };
}

async function loadHandler(codeDir, spec) {
  const dot = spec.lastIndexOf('.');
  if (dot <= 0 || dot === spec.length - 1) throw new Error(`handler must be file.export, got ${JSON.stringify(spec)}`);
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const base = path.resolve(codeDir, file);
  if (!base.startsWith(path.resolve(codeDir) + path.sep)) throw new Error(`handler ${spec} points outside the code`);
  let mod;
  if (fs.existsSync(base + '.mjs')) {
    mod = await import(pathToFileURL(base + '.mjs').href);
  } else if (fs.existsSync(base + '.cjs')) {
    mod = createRequire(base + '.cjs')(base + '.cjs');
  } else if (fs.existsSync(base + '.js')) {
    try {
      mod = createRequire(base + '.js')(base + '.js');
    } catch (err) {
      // A .js file in a "type": "module" package is ESM.
      if (err && err.code === 'ERR_REQUIRE_ESM') mod = await import(pathToFileURL(base + '.js').href);
      else throw err;
    }
  } else {
    const err = new Error(`cannot find ${file}.js, ${file}.mjs or ${file}.cjs in the function code`);
    err.name = 'ImportModuleError';
    throw err;
  }
  let fn = mod?.[name];
  if (fn === undefined && mod?.default && typeof mod.default === 'object') fn = mod.default[name];
  if (typeof fn !== 'function') {
    const err = new Error(`${file} does not export a function named ${name}`);
    err.name = 'HandlerNotFound';
    throw err;
  }
  return fn;
}

function makeContext(init, request, settle) {
  return {
    functionName: init.function_name,
    functionVersion: init.function_version,
    memoryLimitInMB: String(init.memory_limit_in_mb),
    invokedFunctionArn: init.function_name,
    logGroupName: `/kubefaas/${init.function_name}`,
    logStreamName: init.instance_id,
    awsRequestId: request.id,
    invocationId: request.id,
    callbackWaitsForEmptyEventLoop: false,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(request.deadline_ms - Date.now())),
    // Lambda's legacy completion methods.
    succeed: (value) => settle(null, value),
    fail: (err) => settle(err ?? new Error('failed')),
    done: (err, value) => settle(err, value),
  };
}

// Runs a handler of any of Lambda's styles: async, promise-returning or callback.
function callHandler(fn, event, init, request) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (err, value) => {
      if (settled) return;
      settled = true;
      if (err !== null && err !== undefined) reject(err); else resolve(value);
    };
    const context = makeContext(init, request, settle);
    try {
      const ret = fn(event, context, settle);
      if (ret && typeof ret.then === 'function') ret.then((v) => settle(null, v), (e) => settle(e ?? new Error('rejected')));
      else if (fn.length < 3) settle(null, ret);
    } catch (err) {
      settle(err);
    }
  });
}

function main() {
  const socketPath = process.env.KUBEFAAS_CONTROL_SOCKET;
  delete process.env.KUBEFAAS_CONTROL_SOCKET;
  const sock = net.createConnection(socketPath);
  const send = (msg) => sock.write(JSON.stringify(msg) + '\n');
  let init = null;
  let handler = null;
  let marker = null;
  let current = null;
  let buffered = '';
  const queue = [];
  let busy = false;

  // Pipes are written synchronously on Linux, so the user's output is in the pipe before this.
  const endLogs = () => fs.writeSync(1, marker);

  process.on('uncaughtException', (err) => {
    if (current) { const c = current; current = null; c(err); return; }
    fs.writeSync(2, `uncaught exception outside an invocation: ${err?.stack ?? err}\n`);
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    if (current) { const c = current; current = null; c(err); }
  });

  async function handle(msg) {
    if (msg.type === 'init') {
      init = msg;
      marker = msg.marker;
      try {
        handler = await loadHandler(msg.code_dir, msg.handler);
      } catch (err) {
        endLogs();
        send({ type: 'init_error', error: errorOf(err) });
        return;
      }
      endLogs();
      send({ type: 'ready' });
      return;
    }
    const reply = { type: 'result', id: msg.id };
    let encoded;
    try {
      const value = await new Promise((resolve, reject) => {
        current = reject;
        callHandler(handler, msg.payload, init, msg).then(resolve, reject);
      });
      try {
        encoded = JSON.stringify(value === undefined ? null : value);
        if (encoded === undefined) encoded = 'null';
      } catch (err) {
        reply.error = { type: 'ResultNotSerializable', message: `handler returned a value that is not JSON: ${err.message}`, stack: null };
      }
    } catch (err) {
      reply.error = errorOf(err);
    }
    current = null;
    endLogs();
    if (reply.error) send(reply);
    else sock.write(JSON.stringify(reply).slice(0, -1) + ',"ok":' + encoded + '}\n');
  }

  async function pump() {
    if (busy) return;
    busy = true;
    while (queue.length > 0) await handle(queue.shift());
    busy = false;
  }

  sock.setEncoding('utf8');
  sock.on('data', (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      queue.push(JSON.parse(buffered.slice(0, nl)));
      buffered = buffered.slice(nl + 1);
    }
    pump();
  });
  sock.on('end', () => process.exit(0));
  sock.on('error', (err) => { fs.writeSync(2, `control socket: ${err}\n`); process.exit(70); });
}

main();
