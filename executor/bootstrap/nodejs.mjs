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
import { types } from 'node:util';

// What counts as an error: a native one (of any realm) or an object shaped like one.
function isErrorLike(err) {
  return types.isNativeError(err) ||
    (err !== null && typeof err === 'object' && typeof err.name === 'string' &&
      typeof err.message === 'string' && typeof err.stack === 'string');
}

// The structured error of a thrown or rejected value. Errors keep their name, message and
// stack; any other value is typed by its `typeof` and described by its string form, as AWS does.
function errorOf(err) {
  if (isErrorLike(err)) {
    let type = err.name;
    if (!type) type = err.constructor?.name || 'Error';
    return { type: String(type), message: String(err.message), stack: err.stack ?? null };
  }
  let message;
  try { message = String(err); } catch { message = Object.prototype.toString.call(err); }
  return { type: typeof err, message, stack: null };
}

// An error loading the handler, typed as AWS Lambda's node runtime types it.
function initError(type, message, cause) {
  const err = new Error(message);
  err.name = type;
  if (cause?.stack) err.stack = cause.stack;
  return err;
}

const MODULE_NOT_FOUND = new Set(['MODULE_NOT_FOUND', 'ERR_MODULE_NOT_FOUND']);

// Requires or imports the handler's module; what fails to resolve or parse gets AWS's
// `Runtime.*` type, any other error thrown while the module runs keeps its own.
async function importModule(base, file) {
  try {
    if (fs.existsSync(base + '.mjs')) return await import(pathToFileURL(base + '.mjs').href);
    if (fs.existsSync(base + '.cjs')) return createRequire(base + '.cjs')(base + '.cjs');
    if (fs.existsSync(base + '.js')) {
      try {
        return createRequire(base + '.js')(base + '.js');
      } catch (err) {
        // A .js file in a "type": "module" package is ESM.
        if (err && err.code === 'ERR_REQUIRE_ESM') return await import(pathToFileURL(base + '.js').href);
        throw err;
      }
    }
  } catch (err) {
    if (err && MODULE_NOT_FOUND.has(err.code)) {
      throw initError('Runtime.ImportModuleError', `${err.name}: ${err.message}`, err);
    }
    if (err instanceof SyntaxError) {
      throw initError('Runtime.UserCodeSyntaxError', `SyntaxError: ${err.message}`, err);
    }
    throw err;
  }
  throw initError('Runtime.ImportModuleError',
    `Error: Cannot find module '${file}': no ${file}.js, ${file}.mjs or ${file}.cjs in the function code`);
}

async function loadHandler(codeDir, spec) {
  const dot = spec.lastIndexOf('.');
  if (dot <= 0 || dot === spec.length - 1) {
    throw initError('Runtime.MalformedHandlerName', `Bad handler ${JSON.stringify(spec)}: the handler must be file.export`);
  }
  const file = spec.slice(0, dot);
  const name = spec.slice(dot + 1);
  const base = path.resolve(codeDir, file);
  if (!base.startsWith(path.resolve(codeDir) + path.sep)) {
    throw initError('Runtime.MalformedHandlerName', `Bad handler ${JSON.stringify(spec)}: it points outside the code`);
  }
  const mod = await importModule(base, file);
  let fn = mod?.[name];
  if (fn === undefined && mod?.default && typeof mod.default === 'object') fn = mod.default[name];
  if (typeof fn !== 'function') {
    throw initError('Runtime.HandlerNotFound', `${spec} is undefined or not exported`);
  }
  return fn;
}

// Wall-clock milliseconds with their fraction, so that a read in the millisecond the deadline was
// set is already below the timeout.
const preciseNow = () => performance.timeOrigin + performance.now();

// The context handed to handlers, with the names and types of AWS Lambda's. It serialises with
// JSON.stringify to its data fields: the methods drop out, and nothing refers back to itself.
function makeContext(init, request, finish) {
  let waitsForEmptyEventLoop = true;
  return {
    get callbackWaitsForEmptyEventLoop() { return waitsForEmptyEventLoop; },
    set callbackWaitsForEmptyEventLoop(value) { waitsForEmptyEventLoop = value; },
    // Lambda's legacy completion methods: they answer at once, whatever the event loop holds.
    succeed: (value) => finish(null, value),
    fail: (err) => finish(err ?? 'handled'),
    done: (err, value) => finish(err, value),
    functionVersion: init.function_version,
    functionName: init.function_name,
    memoryLimitInMB: String(init.memory_limit_in_mb),
    logGroupName: init.log_group_name,
    logStreamName: init.log_stream_name,
    clientContext: undefined,
    identity: undefined,
    invokedFunctionArn: init.invoked_function_arn,
    awsRequestId: request.id,
    invocationId: request.id,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(request.deadline_ms - preciseNow())),
  };
}

// Runs a handler of any of Lambda's styles: async, promise-returning or callback. `idle` is
// told what to do once the event loop has nothing left but the control socket: deliver the
// value a callback gave (while callbackWaitsForEmptyEventLoop holds, a callback's value waits
// for that moment, as on AWS), or null when the handler never answered.
function callHandler(fn, event, init, request, idle) {
  return new Promise((resolve, reject) => {
    let settled = false;
    let waiting;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      idle.clear();
      if (err !== null && err !== undefined) reject(err); else resolve(value);
    };
    const context = makeContext(init, request, finish);
    let calledBack = false;
    const callback = (err, value) => {
      if (calledBack) return;
      calledBack = true;
      if ((err !== null && err !== undefined) || !context.callbackWaitsForEmptyEventLoop) finish(err, value);
      else waiting = value;
    };
    idle.set(() => finish(null, waiting));
    try {
      const ret = fn(event, context, callback);
      if (ret && typeof ret.then === 'function') ret.then((v) => finish(null, v), (e) => finish(e ?? new Error('rejected')));
      else if (fn.length < 3) finish(null, ret);
    } catch (err) {
      finish(err);
    }
  });
}

function main() {
  const socketPath = process.env.KUBEFAAS_CONTROL_SOCKET;
  delete process.env.KUBEFAAS_CONTROL_SOCKET;
  if (!process.env.AWS_EXECUTION_ENV) {
    process.env.AWS_EXECUTION_ENV = `AWS_Lambda_nodejs${process.versions.node.split('.')[0]}.x`;
  }
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

  // During an invocation the control socket does not keep the process alive, so 'beforeExit'
  // tells when the handler's own work is done; what to do then is the invocation's.
  let onIdle = null;
  const idle = { set: (f) => { onIdle = f; }, clear: () => { onIdle = null; } };
  process.on('beforeExit', () => {
    sock.ref();
    if (onIdle) { const f = onIdle; onIdle = null; f(); }
  });

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
      sock.unref();
      const value = await new Promise((resolve, reject) => {
        current = reject;
        callHandler(handler, msg.payload, init, msg, idle).then(resolve, reject);
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
    idle.clear();
    sock.ref();
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
